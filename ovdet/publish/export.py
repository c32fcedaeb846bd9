"""Gather what a run published needs (spec, metrics, vocabulary, training config, data summary) and write
the export folder: weights, portable spec, tokenizer files, metadata files and the model card.

A ``transformers`` detector (spec kind ``hf``) is exported as the ``save_pretrained`` folder it was
trained in (``config.json``, ``model.safetensors``, the processor files), so
``AutoModelForZeroShotObjectDetection`` and ``AutoProcessor`` load it without ovdet; ovdet's spec,
metadata files and card sit beside them."""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ovdet.data.shards import MANIFEST
from ovdet.errors import OvdetError
from ovdet.fileio import is_number, read_json, read_yaml, write_json_atomic, write_text_atomic
from ovdet.publish.card import CARD_METRICS, SYNTHETIC_EVAL, build_model_card, is_transformers_spec
from ovdet.runs import MODEL_SPEC, MODEL_WEIGHTS, RunLocation, TrainPaths

log = logging.getLogger(__name__)

TEXT_NAME_KEYS = ("hf_model_name", "hf_tokenizer_name")
TEXT_CONFIG_FILES = ("config.json",)
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
)  # fmt: skip
TOKENIZER_DIR = "tokenizer"
# The export folder's own files; a model folder holding them is re-published from them.
METRICS_FILE, VOCAB_FILE = "metrics.json", "vocab.yaml"
TRAINING_CONFIG_FILE, DATA_SUMMARY_FILE = "training_config.yaml", "data_summary.json"
CARD_FILE = "README.md"
OVDET_FILES = (MODEL_SPEC, METRICS_FILE, VOCAB_FILE, TRAINING_CONFIG_FILE, DATA_SUMMARY_FILE, CARD_FILE)
TRANSFORMERS_FILES = ("config.json", MODEL_WEIGHTS)  # the processor's files vary by model: all others are copied
# "/abs/path", "~/path", or with a scheme ("hf:/abs/path"): a path on the training machine; not a URL
LOCAL_PATH = re.compile(r"^(?P<scheme>[a-z]+:)?(?P<path>(?:/(?!/)|~).*)$")
METRIC_SPLITS = ("base", "novel", "all", "hm")


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


def gather_export(run: RunLocation, metrics_path, no_metrics: bool, vocab_path) -> Export:
    """Read the model spec, metrics, vocabulary, training config and data summary of a run."""
    saved = read_json(run.model_dir / MODEL_SPEC, expected=dict)
    if not isinstance(saved.get("spec"), dict):
        raise OvdetError(f"{run.model_dir / MODEL_SPEC}: no 'spec' object")
    training_config = find_training_config(run, saved)
    metrics = None if no_metrics else find_metrics(run, metrics_path)
    return Export(
        spec=saved["spec"],
        step=saved.get("step"),
        metrics=metrics,
        vocab=find_vocabulary(run, vocab_path, training_config, metrics),
        training_config=training_config,
        data_summary=find_data_summary(run, training_config),
        eval_dataset=eval_dataset_name(run, training_config),
    )


def find_metrics(run: RunLocation, metrics_path) -> dict[str, Any]:
    """The evaluation's ``metrics.json``; publishing an unevaluated model needs ``no_metrics``."""
    candidates = [Path(metrics_path)] if metrics_path else [
        *([run.run.metrics] if run.run else []),
        run.model_dir / METRICS_FILE,  # re-publishing an exported folder
    ]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        where = metrics_path or " or ".join(str(p) for p in candidates)
        raise OvdetError(f"no evaluation found ({where}); run `ovdet eval` first, pass --metrics FILE, "
                         "or publish without metrics with --no-metrics")
    metrics = read_json(found)
    for key in CARD_METRICS:
        row = metrics.get(key) if isinstance(metrics, dict) else None
        if not isinstance(row, dict) or not all(is_number(row.get(s)) for s in METRIC_SPLITS):
            raise OvdetError(f"{found}: not an ovdet metrics.json ('{key}' lacks base/novel/all/hm numbers)")
    log.info("metrics from %s", found)
    return metrics


def find_training_config(run: RunLocation, saved: dict[str, Any]) -> dict[str, Any] | None:
    if saved.get("config"):
        return saved["config"]
    if run.train_dir is not None and TrainPaths(run.train_dir).config.is_file():
        return read_json(TrainPaths(run.train_dir).config)
    if (run.model_dir / TRAINING_CONFIG_FILE).is_file():
        return read_yaml(run.model_dir / TRAINING_CONFIG_FILE)
    return None


def find_vocabulary(run: RunLocation, vocab_path, training_config: dict | None, metrics: dict | None):
    """The evaluation vocabulary: given, the run's ``synth/vocab.yaml``, ``eval.vocab``, or the metrics' categories."""
    from ovdet.data.vocab import Category, Vocabulary, load_vocabulary

    eval_vocab = ((training_config or {}).get("eval") or {}).get("vocab")
    candidates = [
        vocab_path,
        run.run.synth_vocab if run.run and run.run.synth_vocab.is_file() else None,  # a demo run's world
        eval_vocab if eval_vocab and (Path(eval_vocab).is_file() or eval_vocab == "ov-coco") else None,  # lvis needs GT
        run.model_dir / VOCAB_FILE if (run.model_dir / VOCAB_FILE).is_file() else None,
    ]
    spec = next((c for c in candidates if c), None)
    if spec is not None:
        return load_vocabulary(str(spec))
    if metrics and isinstance(metrics.get("per_category"), dict):
        categories = [Category(int(row["id"]), name, row.get("split", "base"))
                      for name, row in metrics["per_category"].items()]
        return Vocabulary(sorted(categories, key=lambda c: c.id))
    return None


def find_data_summary(run: RunLocation, training_config: dict | None) -> dict[str, Any] | None:
    """Sources, kinds and sample counts from the shard manifests the run trained on."""
    loader = (training_config or {}).get("loader") or {}
    shard_dirs = [Path(d) for d in loader.get("shard_dirs") or []]
    if run.run is not None:
        shard_dirs.insert(0, run.run.shards)
    manifests = [d / MANIFEST for d in shard_dirs if (d / MANIFEST).is_file()]
    if manifests:
        return summarize_manifests([read_json(m) for m in manifests])
    if (run.model_dir / DATA_SUMMARY_FILE).is_file():
        return read_json(run.model_dir / DATA_SUMMARY_FILE)
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


def eval_dataset_name(run: RunLocation, training_config: dict | None) -> str:
    gt = ((training_config or {}).get("eval") or {}).get("gt")
    if gt:
        return Path(gt).stem
    if run.run is not None and run.run.synth_vocab.is_file():
        return SYNTHETIC_EVAL
    return "evaluation set"


def write_export_folder(run: RunLocation, export: Export, folder: Path, repo_id: str, license: str) -> None:
    """Write the folder in a staging sibling, then swap it in (a failed export leaves no half folder)."""
    if folder.exists() and any(folder.iterdir()) and not (folder / MODEL_SPEC).is_file():
        raise OvdetError(f"{folder}: exists and is not an ovdet export; choose another --out")
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write_folder_contents(run, export, staging, repo_id, license)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    log.info("exported %s", folder)


def write_folder_contents(run: RunLocation, export: Export, folder: Path, repo_id: str, license: str) -> None:
    if is_transformers_spec(export.spec):
        spec = write_transformers_files(run.model_dir, folder, export.spec, repo_id)
    else:
        spec = write_native_files(run.model_dir, folder, export.spec)
    write_json(folder / MODEL_SPEC, {"spec": spec, "step": export.step})
    write_metadata_files(export, folder, repo_id)
    build_model_card(export, spec, repo_id, license).save(folder / CARD_FILE)


def write_native_files(model_dir: Path, folder: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The weights, the portable spec as ``config.json`` and the text tower's files; returns the spec."""
    shutil.copyfile(model_dir / MODEL_WEIGHTS, folder / MODEL_WEIGHTS)
    spec = portable_spec(spec, model_dir, folder)
    write_json(folder / "config.json", spec)
    return spec


def write_transformers_files(model_dir: Path, folder: Path, spec: dict[str, Any], repo_id: str) -> dict[str, Any]:
    """Copy the ``save_pretrained`` files of ``model_dir`` (every file but ovdet's own, which the export
    rewrites); returns the spec, whose ``source`` is the folder itself (``Detector.from_pretrained``
    loads from the folder it reads) and whose name is the repo's ``hf:`` name."""
    missing = [name for name in TRANSFORMERS_FILES if not (model_dir / name).is_file()]
    if missing:
        raise OvdetError(f"{model_dir}: a transformers detector's model folder without {', '.join(missing)} "
                         "(training writes it as a save_pretrained folder)")
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.name not in OVDET_FILES and not path.name.startswith("."):
            shutil.copyfile(path, folder / path.name)
    return without_local_paths({**spec, "name": f"hf:{repo_id}", "source": "."})


def write_metadata_files(export: Export, folder: Path, repo_id: str) -> None:
    if export.vocab is not None:
        export.vocab.to_yaml(folder / VOCAB_FILE)
    if export.metrics is not None:
        write_json(folder / METRICS_FILE, without_local_paths({**export.metrics, "model": repo_id}))
    if export.training_config is not None:
        text = yaml.safe_dump(without_local_paths(export.training_config), sort_keys=False)
        write_text_atomic(folder / TRAINING_CONFIG_FILE, text)
    if export.data_summary is not None:
        write_json(folder / DATA_SUMMARY_FILE, export.data_summary)


def without_local_paths(value: Any) -> Any:
    """``value`` (JSON-like) with each absolute path of the training machine cut to its last component
    (``hf:/home/me/owlv2`` -> ``hf:owlv2``): elsewhere it names nothing, and it can name the machine's users."""
    if isinstance(value, dict):
        return {key: without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_local_paths(item) for item in value]
    match = LOCAL_PATH.match(value) if isinstance(value, str) else None
    if match is None:
        return value
    return f"{match['scheme'] or ''}{Path(match['path'].rstrip('/')).name}"


def write_json(path: Path, value: Any) -> None:
    write_json_atomic(path, value, sort_keys=False)  # keys in the order the run wrote them


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
    from ovdet.models import resolve_package_path

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
