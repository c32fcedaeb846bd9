"""The model card ``README.md``: front matter from ``ModelCardData`` (with the model-index), body from
``model_card_template.md`` (Jinja, rendered by ``ModelCard.from_template``)."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any

from ovdet.eval.report import TABLE_COLUMNS, format_split_table

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCard

    from ovdet.publish.export import Export

TEMPLATE = "model_card_template.md"
CARD_TAGS = ["object-detection", "open-vocabulary", "zero-shot-object-detection", "ovdet"]
CARD_METRICS = ("AP", "AP50")
SPLIT_TITLES = {"base": "base", "novel": "novel", "all": "all", "hm": "HM"}
SYNTHETIC_EVAL = "ovdet synthetic world (eval split)"
PROTOCOL_TEXT = {  # metrics.json "protocol" -> how the card names it (docs/evaluation.md)
    "coco": "COCO protocol (pycocotools COCOeval)",
    "lvis": "LVIS federated protocol (lvis-api LVISEval, 300 detections per image)",
    "lvis-fixed": "LVIS Fixed AP protocol (Dave et al. 2021, top detections per category over the dataset)",
}


def build_model_card(export: Export, spec: dict[str, Any], repo_id: str, license: str) -> ModelCard:
    """A ``ModelCard`` whose metadata carries the model-index (AP and AP50, base/novel/all/HM, in %).

    A ``transformers`` detector (spec kind ``hf``) is a ``transformers`` model on the Hub: its card
    names that library (the Hub's "use this model" snippet and pipeline widget follow it)."""
    from huggingface_hub import ModelCard, ModelCardData

    is_transformers = is_transformers_spec(spec)
    card_data = ModelCardData(
        license=license,
        library_name="transformers" if is_transformers else "ovdet",
        pipeline_tag="zero-shot-object-detection",
        tags=[*CARD_TAGS, spec["model_type"]] if is_transformers else list(CARD_TAGS),
        datasets=list((export.data_summary or {}).get("sources") or []) or None,
        model_name=repo_name(repo_id),
        eval_results=eval_results(export) or None,
    )
    template = files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    return ModelCard.from_template(card_data, template_str=template, **card_fields(export, spec, repo_id))


def is_transformers_spec(spec: dict[str, Any]) -> bool:
    return spec.get("kind") == "hf"


def repo_name(repo_id: str) -> str:
    return repo_id.split("/")[1]


def eval_results(export: Export) -> list[EvalResult]:
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
        for metric in CARD_METRICS for split in TABLE_COLUMNS
        if export.metrics[metric][split] >= 0
    ]


def as_percent(value: float) -> float:
    return round(100.0 * float(value), 2)


def card_fields(export: Export, spec: dict[str, Any], repo_id: str) -> dict[str, Any]:
    """The template's variables."""
    vision_cfg = (spec.get("arch") or {}).get("vision_cfg") or {}
    is_transformers = is_transformers_spec(spec)
    vocab = export.vocab
    metrics_table = None
    if export.metrics is not None:  # two decimals: the same numbers as the model-index
        metrics_table = format_split_table(export.metrics, CARD_METRICS, markdown=True, digits=2)
    return {
        "title": repo_name(repo_id),
        "repo_id": repo_id,
        "step": export.step,
        "is_transformers": is_transformers,
        "architecture": spec["architecture"] if is_transformers else spec.get("name", "custom"),
        "tower_kind": spec.get("kind", "custom"),
        "image_size": vision_cfg.get("image_size", "the model's"),
        "optional_files": optional_files(export),
        "eval_dataset": export.eval_dataset,
        "protocol": PROTOCOL_TEXT.get((export.metrics or {}).get("protocol", "coco"), "COCO protocol"),
        "metrics_table": metrics_table,
        "num_categories": None if vocab is None else len(vocab.categories),
        "novel": [] if vocab is None else [c.name for c in vocab.categories if c.split == "novel"],
        "sources": export.data_summary["sources"] if export.data_summary else None,
        "total_samples": (export.data_summary or {}).get("total_samples"),
        "synthetic": export.eval_dataset == SYNTHETIC_EVAL,
    }


def optional_files(export: Export) -> list[str]:
    present = [
        ("`vocab.yaml` (evaluation vocabulary)", export.vocab), ("`metrics.json`", export.metrics),
        ("`training_config.yaml`", export.training_config), ("`data_summary.json`", export.data_summary),
    ]
    return [text for text, value in present if value is not None]


def commit_message(export: Export) -> str:
    step = f" (step {export.step})" if export.step is not None else ""
    if export.metrics is None:
        return f"ovdet publish{step}"
    ap = export.metrics["AP"]
    return f"ovdet publish{step}: AP base {as_percent(ap['base'])} novel {as_percent(ap['novel'])}"
