"""Export a trained detector as a self-contained Hub folder and upload it with ``huggingface_hub``.

    from ovdet.publish import publish
    folder = publish("runs/demo", "my-org/ovdet-demo", dry_run=True)   # writes runs/demo/publish/ovdet-demo

The exported folder (``docs/publishing.md``) holds ``model.safetensors``, ``config.json`` (the model spec
with the text tower's config and tokenizer copied into ``tokenizer/``), ``model_spec.json`` (the same
spec, read by ``Detector.from_pretrained``), ``vocab.yaml``, ``metrics.json``, ``training_config.yaml``,
``data_summary.json`` and a model card ``README.md``. A ``transformers`` detector (trained from
``hf:FOLDER``) is exported as its ``save_pretrained`` folder instead (``config.json``, ``model.safetensors``,
the processor files: ``AutoModelForZeroShotObjectDetection`` and ``AutoProcessor`` load it without ovdet),
with the same ``model_spec.json``, metadata files and card. Only safetensors, JSON and YAML are read: nothing
is unpickled. The token (``HF_TOKEN`` or the stored login) is only handed to ``HfApi``; it is scrubbed
from every error message and never written to the folder.

The steps, one module each: ``ovdet.runs.locate_run`` (which run the checkpoint belongs to),
``export`` (gather and write the folder), ``card`` (the model card), ``upload`` (the Hub commit).
"""

from __future__ import annotations

from pathlib import Path

from ovdet.errors import OvdetError
from ovdet.publish.card import commit_message, repo_name
from ovdet.publish.export import gather_export, list_upload_files, write_export_folder
from ovdet.publish.upload import upload
from ovdet.runs import locate_run

__all__ = ["publish"]


def publish(
    checkpoint: str | Path, repo_id: str, out_dir: str | Path | None = None, private: bool = False,
    revision: str | None = None, dry_run: bool = False, metrics_path: str | Path | None = None,
    no_metrics: bool = False, vocab_path: str | Path | None = None, license: str = "apache-2.0",
) -> Path:
    """Export ``checkpoint`` (model, training or run folder) to ``out_dir`` and upload it to ``repo_id``.

    Refuses to publish without an evaluation unless ``no_metrics``. ``dry_run`` writes the folder and
    prints the files it would upload. Returns the exported folder, which is kept when the upload fails.
    """
    check_repo_id(repo_id)
    run = locate_run(checkpoint)
    folder = Path(out_dir) if out_dir else run.publish(repo_name(repo_id))
    if folder.resolve() == run.model_dir.resolve():
        raise OvdetError(f"{folder}: the export folder must differ from the model folder")
    export = gather_export(run, metrics_path, no_metrics, vocab_path)
    write_export_folder(run, export, folder, repo_id, license)
    if dry_run:
        print_upload_plan(folder, repo_id, revision)
        return folder
    upload(folder, repo_id, private, revision, commit_message(export))
    return folder


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise OvdetError(f"--repo-id {repo_id!r}: {exc}") from None
    if repo_id.count("/") != 1:
        raise OvdetError(f"--repo-id {repo_id!r}: expected ORG/NAME")


def print_upload_plan(folder: Path, repo_id: str, revision: str | None) -> None:
    files = list_upload_files(folder)
    print(f"dry run: {len(files)} files in {folder} would be uploaded to {repo_id}"
          f"{f' (branch {revision})' if revision else ''}:")
    for name in files:
        print(f"  {name}  ({(folder / name).stat().st_size} bytes)")
