"""Upload an export folder with ``huggingface_hub.HfApi``; the token never reaches an error, log or file."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from ovdet.errors import OvdetError
from ovdet.publish.export import list_upload_files

log = logging.getLogger(__name__)

SCRUBBED = "[token]"


def read_token() -> str | None:
    """``HF_TOKEN`` or the user's stored login (``hf auth login``)."""
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def upload(folder: Path, repo_id: str, private: bool, revision: str | None, message: str) -> None:
    """Create the repo (kept if it exists) and commit the folder; remote files are never deleted."""
    from huggingface_hub import HfApi

    token = read_token()
    if not token:
        raise OvdetError(f"no Hugging Face token: set HF_TOKEN or run `hf auth login`; "
                         f"the exported folder is kept at {folder}")
    api = HfApi(token=token)
    log.info("uploading %d files from %s to %s", len(list_upload_files(folder)), folder, repo_id)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                   commit_message=message)
    except Exception as exc:  # any error text may echo request headers: only a scrubbed line leaves
        failure = describe_failure(exc, repo_id, folder, token)
    else:
        print(f"published {repo_id}: {getattr(commit, 'commit_url', None) or commit}")
        return
    raise OvdetError(failure)  # outside the except block: no chained exception carries the token


def describe_failure(exc: Exception, repo_id: str, folder: Path, token: str) -> str:
    """One line naming what failed, with the token scrubbed out."""
    from huggingface_hub.errors import HfHubHTTPError

    reason = one_line(scrub(f"{type(exc).__name__}: {exc}", token))
    kept = f"the exported folder is kept at {folder}"
    if isinstance(exc, HfHubHTTPError):  # before the network check: it is an OSError too
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        return f"the Hugging Face Hub refused the upload to {repo_id} (HTTP {status}: {reason}); {kept}"
    if isinstance(exc, network_error_types()):
        return f"cannot reach the Hugging Face Hub ({reason}); {kept}"
    return f"upload to {repo_id} failed ({reason}); {kept}"


def network_error_types() -> tuple[type, ...]:
    """Connection failures: OSError (requests, sockets) and the HTTP client's transport errors."""
    types: list[type] = [OSError]
    for module_name in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
        try:
            types.append(importlib.import_module(module_name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(types)


def scrub(text: str, token: str) -> str:
    return text.replace(token, SCRUBBED) if token else text


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
