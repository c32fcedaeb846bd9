"""The one place files are read and written whole: JSON, YAML and atomic writes.

Every reader raises ``OvdetError`` naming the file (and the line, where the parser knows it) and the
reason; nothing here returns a half-read file. Every writer goes through a temporary file in the
same folder and ``os.replace``, so an interrupted process never leaves a truncated file.

    data = read_json(path, expected=dict)      # OvdetError("path:3: invalid JSON: ...")
    cfg = read_yaml(path, expected=dict)       # an empty file is {} when expected is dict
    write_json_atomic(path, data)              # indent=1, sorted keys: reproducible bytes
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from ovdet.errors import OvdetError

# PyYAML's C loader when it was built with libyaml (several times faster on LVIS-sized vocabularies).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_json(path: str | Path, expected: type | None = None) -> Any:
    """Parse a whole JSON file; ``expected`` (e.g. ``dict``) checks the top-level type."""
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise OvdetError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise OvdetError(f"{path}:1: invalid UTF-8: {exc.reason}") from None
    except OSError as exc:
        raise OvdetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return checked_type(path, data, expected, "JSON")


def read_yaml(path: str | Path, expected: type | None = None) -> Any:
    """Parse a whole YAML file safely; an empty file is ``{}`` when ``expected`` is ``dict``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OvdetError(f"{path}:1: invalid UTF-8: {exc.reason}") from None
    except OSError as exc:
        raise OvdetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise OvdetError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if data is None and expected is dict:
        return {}
    return checked_type(path, data, expected, "YAML")


def checked_type(path: str | Path, data: Any, expected: type | None, kind: str) -> Any:
    if expected is not None and not isinstance(data, expected):
        article = "an" if expected.__name__[0] in "aeiou" else "a"
        raise OvdetError(f"{path}: expected {article} {kind} {expected.__name__} at the top level, "
                         f"got {type(data).__name__}")
    return data


def write_text_atomic(path: str | Path, text: str, durable: bool = False) -> Path:
    """Write ``text`` (UTF-8) through ``.NAME.tmp-PID`` and ``os.replace``; creates the parent folder.

    ``durable``: the bytes and the rename reach the disk before returning (fsync of the file and its
    folder), so a machine that dies right after still finds the new file, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
        if durable:
            fsync_folder(path.parent)
    finally:
        temp.unlink(missing_ok=True)
    return path


def sha256_file(path: str | Path, sync: bool = False) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks; ``sync`` also fsyncs the file (its bytes are on
    the disk, not only in the page cache, once the digest describes them)."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
        if sync:
            os.fsync(handle.fileno())
    return digest


def fsync_folder(folder: str | Path) -> None:
    """Make the folder's entries (a rename, a new file) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json_atomic(
    path: str | Path, data: Any, indent: int | None = 1, sort_keys: bool = True, ensure_ascii: bool = False,
    durable: bool = False,
) -> Path:
    """JSON with sorted keys by default, so the same data always gives the same bytes.

    ``ensure_ascii=True`` escapes non-ASCII text: needed where strings may hold file names that are
    not valid UTF-8 (Python keeps their bytes as lone surrogates, which UTF-8 cannot encode)."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    return write_text_atomic(path, text + "\n", durable)


def write_jsonl_atomic(
    path: str | Path, rows: list[Any], sort_keys: bool = False, ensure_ascii: bool = False
) -> Path:
    """One JSON value per line, written atomically (``ensure_ascii``: as in ``write_json_atomic``)."""
    return write_text_atomic(path, "".join(json.dumps(row, sort_keys=sort_keys, ensure_ascii=ensure_ascii) + "\n"
                                           for row in rows))


def is_number(value: Any) -> bool:
    """A real JSON number: int or float, not bool (``True`` is an int in Python)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
