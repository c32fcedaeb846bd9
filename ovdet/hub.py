"""Export a trained detector as a self-contained Hub folder and upload it with ``huggingface_hub``.

    from ovdet.hub import publish
    folder = publish("runs/demo", "my-org/ovdet-demo", dry_run=True)   # writes runs/demo/publish/ovdet-demo

The exported folder (``docs/publishing.md``) holds ``model.safetensors``, ``config.json`` (the model spec
with the text tower's config and tokenizer copied into ``tokenizer/``), ``model_spec.json`` (the same
spec, read by ``Detector.from_pretrained``), ``vocab.yaml``, ``metrics.json``, ``training_config.yaml``,
``data_summary.json`` and a model card ``README.md``. Only safetensors, JSON and YAML are read: nothing
is unpickled. The token (``HF_TOKEN`` or the stored login) is only handed to ``HfApi``; it is scrubbed
from every error message and never written to the folder.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ovdet.errors import OvdetError

log = logging.getLogger(__name__)

TEXT_NAME_KEYS = ("hf_model_name", "hf_tokenizer_name")
TEXT_CONFIG_FILES = ("config.json",)
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
)  # fmt: skip
TOKENIZER_DIR = "tokenizer"
CARD_TAGS = ["object-detection", "open-vocabulary", "zero-shot-object-detection", "ovdet"]
CARD_METRICS = ("AP", "AP50")
CARD_SPLITS = ("base", "novel", "all", "hm")
SPLIT_TITLES = {"base": "base", "novel": "novel", "all": "all", "hm": "HM"}
SCRUBBED = "[token]"


@dataclass
class RunLayout:
    """Where the pieces of one training run live; any folder but ``model_dir`` may be missing."""

    model_dir: Path
    train_dir: Path | None = None
    run_dir: Path | None = None

    @property
    def home(self) -> Path:
        return self.run_dir or self.train_dir or self.model_dir


@dataclass
class Export:
    """What goes into the folder besides the weights (``None``: not found, not written)."""

    spec: dict[str, Any]
    step: int | None
    metrics: dict[str, Any] | None
    vocab: Any | None  # ovdet.data.vocab.Vocabulary
    training_config: dict[str, Any] | None
    data_summary: dict[str, Any] | None
    eval_dataset: str = "evaluation set"


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
    layout = locate_run(checkpoint)
    folder = Path(out_dir) if out_dir else layout.home / "publish" / repo_id.split("/")[1]
    if folder.resolve() == layout.model_dir.resolve():
        raise OvdetError(f"{folder}: the export folder must differ from the model folder")
    export = gather_export(layout, metrics_path, no_metrics, vocab_path)
    write_export_folder(layout, export, folder, repo_id, license)
    files = list_upload_files(folder)
    if dry_run:
        print(f"dry run: {len(files)} files in {folder} would be uploaded to {repo_id}"
              f"{f' (branch {revision})' if revision else ''}:")
        for name in files:
            print(f"  {name}  ({(folder / name).stat().st_size} bytes)")
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


def locate_run(checkpoint: str | Path) -> RunLayout:
    """A model folder (``final/``), a training folder (its ``final/``) or a run folder (``train/final``)."""
    path = Path(checkpoint)
    if (path / "train_state.json").is_file():
        raise OvdetError(f"{path}: a DeepSpeed training checkpoint; publish the model folder final/ "
                         "that training writes at the end (or the training folder)")
    for model_dir in (path, path / "final", path / "train" / "final"):
        if (model_dir / "model.safetensors").is_file():
            break
    else:
        raise OvdetError(f"{path}: not a model, training or run folder (no model.safetensors in it, "
                         "in final/ or in train/final/)")
    if not (model_dir / "model_spec.json").is_file():
        raise OvdetError(f"{model_dir}: model.safetensors without model_spec.json")
    train_dir = model_dir.parent if model_dir.name == "final" else None
    run_dir = train_dir.parent if train_dir is not None and is_run_dir(train_dir.parent) else None
    return RunLayout(model_dir, train_dir, run_dir)


def is_run_dir(path: Path) -> bool:
    markers = ("eval/metrics.json", "shards/manifest.json", "synth/vocab.yaml")
    return any((path / marker).is_file() for marker in markers)


def gather_export(layout: RunLayout, metrics_path, no_metrics: bool, vocab_path) -> Export:
    """Read the model spec, metrics, vocabulary, training config and data summary of a run."""
    saved = read_json_file(layout.model_dir / "model_spec.json")
    if not isinstance(saved.get("spec"), dict):
        raise OvdetError(f"{layout.model_dir / 'model_spec.json'}: no 'spec' object")
    training_config = find_training_config(layout, saved)
    metrics = None if no_metrics else find_metrics(layout, metrics_path)
    return Export(
        spec=saved["spec"],
        step=saved.get("step"),
        metrics=metrics,
        vocab=find_vocabulary(layout, vocab_path, training_config, metrics),
        training_config=training_config,
        data_summary=find_data_summary(layout, training_config),
        eval_dataset=eval_dataset_name(layout, training_config),
    )


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise OvdetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise OvdetError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


def find_metrics(layout: RunLayout, metrics_path) -> dict[str, Any]:
    """The evaluation's ``metrics.json``; publishing an unevaluated model needs ``no_metrics``."""
    candidates = [Path(metrics_path)] if metrics_path else [
        *([layout.run_dir / "eval" / "metrics.json"] if layout.run_dir else []),
        layout.model_dir / "metrics.json",  # re-publishing an exported folder
    ]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        where = metrics_path or " or ".join(str(p) for p in candidates)
        raise OvdetError(f"no evaluation found ({where}); run `ovdet eval` first, pass --metrics FILE, "
                         "or publish without metrics with --no-metrics")
    metrics = read_json_file(found)
    for key in CARD_METRICS:
        row = metrics.get(key) if isinstance(metrics, dict) else None
        if not isinstance(row, dict) or not all(isinstance(row.get(s), (int, float)) for s in CARD_SPLITS):
            raise OvdetError(f"{found}: not an ovdet metrics.json ('{key}' lacks base/novel/all/hm numbers)")
    log.info("metrics from %s", found)
    return metrics


def find_training_config(layout: RunLayout, saved: dict[str, Any]) -> dict[str, Any] | None:
    if saved.get("config"):
        return saved["config"]
    if layout.train_dir is not None and (layout.train_dir / "config.json").is_file():
        return read_json_file(layout.train_dir / "config.json")
    if (layout.model_dir / "training_config.yaml").is_file():
        return read_yaml_file(layout.model_dir / "training_config.yaml")
    return None


def read_yaml_file(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise OvdetError(f"{path}: cannot read YAML: {exc}") from None


def find_vocabulary(layout: RunLayout, vocab_path, training_config: dict | None, metrics: dict | None):
    """The evaluation vocabulary: given, the run's ``synth/vocab.yaml``, ``eval.vocab``, or the metrics' categories."""
    from ovdet.data.vocab import Category, Vocabulary, load_vocabulary

    eval_vocab = ((training_config or {}).get("eval") or {}).get("vocab")
    candidates = [
        vocab_path,
        layout.run_dir / "synth" / "vocab.yaml" if layout.run_dir else None,
        eval_vocab if eval_vocab and (Path(eval_vocab).is_file() or eval_vocab == "ov-coco") else None,  # lvis needs GT
        layout.model_dir / "vocab.yaml" if (layout.model_dir / "vocab.yaml").is_file() else None,
    ]
    spec = next((c for c in candidates if c), None)
    if spec is not None:
        return load_vocabulary(str(spec))
    if metrics and isinstance(metrics.get("per_category"), dict):
        categories = [Category(int(row["id"]), name, row.get("split", "base"))
                      for name, row in metrics["per_category"].items()]
        return Vocabulary(sorted(categories, key=lambda c: c.id))
    return None


def find_data_summary(layout: RunLayout, training_config: dict | None) -> dict[str, Any] | None:
    """Sources, kinds and sample counts from the shard manifests the run trained on."""
    loader = (training_config or {}).get("loader") or {}
    shard_dirs = [Path(d) for d in loader.get("shard_dirs") or []]
    if layout.run_dir is not None:
        shard_dirs.insert(0, layout.run_dir / "shards")
    manifests = [d / "manifest.json" for d in shard_dirs if (d / "manifest.json").is_file()]
    if manifests:
        return summarize_manifests([read_json_file(m) for m in manifests])
    if (layout.model_dir / "data_summary.json").is_file():
        return read_json_file(layout.model_dir / "data_summary.json")
    sources = ((training_config or {}).get("data") or {}).get("sources") or []
    if sources:  # no manifest: names and kinds from the config, counts unknown
        return {"sources": {s["name"]: {"kind": s.get("kind"), "format": s.get("format")} for s in sources},
                "total_samples": None}
    return None


def summarize_manifests(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("kind", "format", "weight", "read", "written", "rejected")
    sources = {}
    for manifest in manifests:
        for name, source in (manifest.get("sources") or {}).items():
            sources[name] = {k: source.get(k) for k in keys} | {"shards": len(source.get("shards") or [])}
    total = sum(s["written"] or 0 for s in sources.values())
    return {"sources": sources, "total_samples": total}


def eval_dataset_name(layout: RunLayout, training_config: dict | None) -> str:
    gt = ((training_config or {}).get("eval") or {}).get("gt")
    if gt:
        return Path(gt).stem
    if layout.run_dir is not None and (layout.run_dir / "synth" / "vocab.yaml").is_file():
        return "ovdet synthetic world (eval split)"
    return "evaluation set"


def write_export_folder(layout: RunLayout, export: Export, folder: Path, repo_id: str, license: str) -> None:
    """Write the folder in a staging sibling, then swap it in (a failed export leaves no half folder)."""
    if folder.exists() and any(folder.iterdir()) and not (folder / "model_spec.json").is_file():
        raise OvdetError(f"{folder}: exists and is not an ovdet export; choose another --out")
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write_folder_contents(layout, export, staging, repo_id, license)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    log.info("exported %s", folder)


def write_folder_contents(layout: RunLayout, export: Export, folder: Path, repo_id: str, license: str) -> None:
    shutil.copyfile(layout.model_dir / "model.safetensors", folder / "model.safetensors")
    spec = portable_spec(export.spec, layout.model_dir, folder)
    write_json(folder / "config.json", spec)
    write_json(folder / "model_spec.json", {"spec": spec, "step": export.step})
    if export.vocab is not None:
        export.vocab.to_yaml(folder / "vocab.yaml")
    if export.metrics is not None:
        write_json(folder / "metrics.json", {**export.metrics, "model": repo_id})  # not a local path
    if export.training_config is not None:
        (folder / "training_config.yaml").write_text(yaml.safe_dump(export.training_config, sort_keys=False))
    if export.data_summary is not None:
        write_json(folder / "data_summary.json", export.data_summary)
    build_model_card(export, spec, repo_id, license).save(folder / "README.md")


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")


def portable_spec(spec: dict[str, Any], model_dir: Path, folder: Path) -> dict[str, Any]:
    """The spec with its text config + tokenizer copied to ``folder/tokenizer`` (``local:tokenizer``).

    The weights all live in ``model.safetensors``, so nothing pretrained is loaded at build time:
    ``vision_weights`` and ``pretrained`` are dropped and ``hf_model_pretrained`` is false.
    """
    from ovdet.infer import localize_spec

    spec = {**localize_spec(spec, model_dir), "pretrained": ""}
    if spec.get("kind") != "custom":
        return spec
    arch = dict(spec["arch"])
    text_cfg = dict(arch["text_cfg"])
    copied = [key for key in TEXT_NAME_KEYS if copy_text_files(key, text_cfg.get(key), folder / TOKENIZER_DIR)]
    for key in copied:
        text_cfg[key] = f"local:{TOKENIZER_DIR}"
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
    arch["text_cfg"] = text_cfg
    if "timm_model_pretrained" in arch.get("vision_cfg", {}):
        arch["vision_cfg"] = {**arch["vision_cfg"], "timm_model_pretrained": False}
    return {**spec, "arch": arch}


def copy_text_files(key: str, value: Any, target: Path) -> bool:
    """Copy the text config (model key) or tokenizer files (tokenizer key) of a local folder.

    Returns False for a Hub model name, which is portable as it is.
    """
    from ovdet.models.factory import resolve_package_path

    source = Path(resolve_package_path(value)) if isinstance(value, str) else None
    if source is None or not source.is_dir():
        return False
    names = TEXT_CONFIG_FILES if key == "hf_model_name" else TOKENIZER_FILES
    present = [name for name in names if (source / name).is_file()]
    if key == "hf_model_name" and not present:
        raise OvdetError(f"{source}: text tower folder without config.json")
    target.mkdir(exist_ok=True)
    for name in present:
        shutil.copyfile(source / name, target / name)
    return True


def list_upload_files(folder: Path) -> list[str]:
    """The files ``upload_folder`` sends, relative to ``folder``, sorted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def build_model_card(export: Export, spec: dict[str, Any], repo_id: str, license: str):
    """A ``ModelCard`` whose metadata carries the model-index (AP and AP50, base/novel/all/HM, in %)."""
    from huggingface_hub import ModelCard, ModelCardData

    card_data = ModelCardData(
        license=license,
        library_name="ovdet",
        pipeline_tag="zero-shot-object-detection",
        tags=list(CARD_TAGS),
        datasets=list((export.data_summary or {}).get("sources") or []) or None,
        model_name=repo_id.split("/")[1],
        eval_results=eval_results(export) or None,
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{card_body(export, spec, repo_id)}")


def eval_results(export: Export) -> list:
    """One ``EvalResult`` per defined metric (-1 means undefined, e.g. no novel categories)."""
    from huggingface_hub import EvalResult

    if export.metrics is None:
        return []
    dataset_type = "-".join(export.eval_dataset.lower().replace("(", "").replace(")", "").split())
    return [
        EvalResult(
            task_type="zero-shot-object-detection", task_name="Zero-shot object detection",
            dataset_type=dataset_type, dataset_name=export.eval_dataset,
            metric_type=f"{metric}_{split}", metric_name=f"{metric} ({SPLIT_TITLES[split]})",
            metric_value=as_percent(export.metrics[metric][split]),
        )
        for metric in CARD_METRICS for split in CARD_SPLITS
        if export.metrics[metric][split] >= 0
    ]


def as_percent(value: float) -> float:
    return round(100.0 * float(value), 2)


def card_body(export: Export, spec: dict[str, Any], repo_id: str) -> str:
    sections = [card_intro(export, spec, repo_id), card_metrics(export), card_usage(repo_id),
                card_data_summary(export), card_limitations(export)]
    return "\n\n".join(sections) + "\n"


def card_intro(export: Export, spec: dict[str, Any], repo_id: str) -> str:
    arch = spec.get("arch") or {}
    image_size = (arch.get("vision_cfg") or {}).get("image_size", "the model's")
    step = f" after {export.step} training steps" if export.step is not None else ""
    return (
        f"# {repo_id.split('/')[1]}\n\n"
        f"An open-vocabulary object detector trained with ovdet{step}: it finds "
        "objects named by free-form text (category names or short phrases) without retraining. "
        f"Model: `{spec.get('name', 'custom')}` ({spec.get('kind', 'custom')} towers) with OWL-ViT-style box "
        f"and class heads; images are letterboxed to {image_size} px.\n\n"
        "Files: `model.safetensors` (all weights, text tower included), `config.json` / `model_spec.json` "
        f"(the model spec), `tokenizer/`{card_optional_files(export)}."
    )


def card_optional_files(export: Export) -> str:
    present = [
        ("`vocab.yaml` (evaluation vocabulary)", export.vocab), ("`metrics.json`", export.metrics),
        ("`training_config.yaml`", export.training_config), ("`data_summary.json`", export.data_summary),
    ]
    return "".join(f", {text}" for text, value in present if value is not None)


def card_metrics(export: Export) -> str:
    if export.metrics is None:
        return "## Evaluation\n\nThis model was published without an evaluation (`--no-metrics`)."
    header = "| metric | " + " | ".join(SPLIT_TITLES[s] for s in CARD_SPLITS) + " |"
    rows = [header, "|---" * (len(CARD_SPLITS) + 1) + "|"]
    for metric in CARD_METRICS:
        values = [export.metrics[metric][s] for s in CARD_SPLITS]
        rows.append(f"| {metric} | " + " | ".join(f"{as_percent(v):.2f}" if v >= 0 else "n/a" for v in values) + " |")
    vocab = export.vocab
    split_line = ""
    if vocab is not None:
        novel = [c.name for c in vocab.categories if c.split == "novel"]
        split_line = (f" The vocabulary has {len(vocab.categories)} categories, {len(novel)} of them novel "
                      f"(held out of the detection training annotations): {', '.join(novel[:20])}{' ...' if len(novel) > 20 else ''}.")
    return (
        f"## Evaluation\n\nBox AP (%) on {export.eval_dataset}, COCO protocol, every detection scored against "
        "the whole vocabulary (generalized open-vocabulary setting). HM is the harmonic mean of base and "
        f"novel AP.{split_line}\n\n" + "\n".join(rows)
    )


def card_usage(repo_id: str) -> str:
    return (
        "## Zero-shot detection with your own vocabulary\n\n"
        "```bash\n"
        f'ovdet detect --model {repo_id} --vocab "cat,dog,red car" img.jpg --out out/\n'
        "```\n\n"
        "writes one JSON per image (boxes in pixels, xyxy) and a drawn copy. From Python:\n\n"
        "```python\n"
        "from ovdet import Detector\n\n"
        f'detector = Detector.from_pretrained("{repo_id}")\n'
        'results = detector.detect(["img.jpg"], ["red car"])  # one list of Detection per image\n'
        "for det in results[0]:\n"
        "    print(det.label, det.score, det.box_xyxy)\n"
        "```\n\n"
        'Prompt templates (`templates=["a photo of a {}."]`) are averaged per name; `score_threshold`, '
        "`top_k` and `nms_iou` control the output."
    )


def card_data_summary(export: Export) -> str:
    summary = export.data_summary
    if not summary:
        return "## Training data\n\nNo shard manifest was found for this model."
    rows = ["| source | kind | format | samples | rejected |", "|---|---|---|---|---|"]
    for name, source in summary["sources"].items():
        cells = [source.get(k) for k in ("kind", "format", "written", "rejected")]
        rows.append(f"| {name} | " + " | ".join("?" if c is None else str(c) for c in cells) + " |")
    total = summary.get("total_samples")
    return ("## Training data\n\n" + "\n".join(rows)
            + (f"\n\n{total} training samples in all (`data_summary.json`)." if total else ""))


def card_limitations(export: Export) -> str:
    lines = [
        "## Limitations",
        "",
        "- Novel-category AP measures generalization to the names of this evaluation only; accuracy on other "
        "names depends on how close they are to the training vocabulary.",
        "- The text tower reads English prompts; long or compositional phrases are less reliable than "
        "short noun phrases.",
        "- Scores are not calibrated across vocabularies: choose the threshold for your own names.",
        "- Not evaluated for safety-critical use.",
    ]
    if export.eval_dataset.startswith("ovdet synthetic"):
        lines.insert(2, "- Trained and evaluated on ovdet's synthetic world (coloured shapes): a pipeline "
                        "demonstration, not a detector for natural images.")
    return "\n".join(lines)


def commit_message(export: Export) -> str:
    step = f" (step {export.step})" if export.step is not None else ""
    if export.metrics is None:
        return f"ovdet publish{step}"
    ap = export.metrics["AP"]
    return f"ovdet publish{step}: AP base {as_percent(ap['base'])} novel {as_percent(ap['novel'])}"


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
