"""Box AP and AR for open-vocabulary detection under the field's protocols, from ONE evaluation.

``evaluate(gt, detections, vocab, protocol=...)`` checks the inputs (``inputs``), applies the
protocol's rules (``protocols``: ``coco`` = pycocotools COCOeval, ``lvis`` = lvis-api's federated
LVISEval, ``lvis-fixed`` = Fixed AP), runs COCOeval once on a compact layout (``engine``) and
derives every subset's numbers from the per-category arrays (``summary``). The numbers equal the
reference tools (``tests/eval/test_parity.py``, ``tests/eval/test_lvis_parity.py``). The metrics
dict schema is in ``docs/evaluation.md``. No torch import anywhere on this path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ovdet.data.vocab import Vocabulary, load_vocabulary
from ovdet.eval.engine import AREA_LABELS, AREA_RANGES, IOU_THRESHOLDS, accumulate
from ovdet.eval.inputs import check_vocabulary_in_gt, checked_detections, checked_ground_truth
from ovdet.eval.protocols import FIXED_DETS_PER_CATEGORY, prepare, resolve_protocol
from ovdet.eval.summary import METRIC_SPECS, harmonic_mean, summarize
from ovdet.fileio import read_json, write_json_atomic

__all__ = ["METRIC_SPECS", "evaluate", "evaluate_files", "harmonic_mean", "write_metrics"]

logger = logging.getLogger(__name__)


def evaluate(
    gt: dict,
    detections: list[dict],
    vocab: Vocabulary,
    *,
    protocol: str = "auto",
    engine: str = "faster",
    dets_per_category: int = FIXED_DETS_PER_CATEGORY,
    detections_name: str = "detections",
) -> dict[str, Any]:
    """Score COCO-format ``detections`` against COCO/LVIS ``gt`` for every vocabulary category.

    ``protocol``: ``auto`` (``lvis`` when the GT images carry ``neg_category_ids``, else ``coco``),
    ``coco``, ``lvis`` or ``lvis-fixed`` (``dets_per_category`` = its K). Returns the metrics dict:
    ``AP, AP50, AP75, APs, APm, APl`` and the protocol's AR keys, each ``{"base", "novel", "all",
    "hm"}`` as fractions (-1 where undefined, as the references), ``APr/APc/APf`` when categories
    carry LVIS frequencies, ``per_category``, ``pr_curve_iou50``, ``num_images``,
    ``num_detections``, ``detections`` (what happened to each), ``protocol`` and ``settings``.
    """
    gt = checked_ground_truth(gt)
    resolved = resolve_protocol(protocol, gt, dets_per_category)
    check_vocabulary_in_gt(vocab, gt)
    image_ids = [image["id"] for image in gt["images"]]
    columns = checked_detections(detections, image_ids, detections_name)
    if not len(columns):
        logger.warning("%s: no detections; every AP is 0 (-1 where the GT has no boxes)", detections_name)
    prepared = prepare(resolved, gt, columns, vocab.ids, detections_name)
    accumulated = accumulate(prepared.gt_annotations, image_ids, gt["categories"], prepared.detections,
                             sorted(vocab.ids), prepared.max_dets, engine)  # fmt: skip
    metrics = summarize(accumulated, vocab, resolved, category_frequencies(gt, vocab))
    metrics["num_images"] = len(image_ids)
    metrics["num_detections"] = len(columns)
    metrics["detections"] = prepared.counts
    metrics["protocol"] = resolved.name
    metrics["settings"] = {
        **resolved.settings(),
        "iouThrs": [round(float(t), 2) for t in IOU_THRESHOLDS],
        "areaRng": dict(zip(AREA_LABELS, AREA_RANGES, strict=True)),
        "engine": engine,
    }
    return metrics


def category_frequencies(gt: dict, vocab: Vocabulary) -> dict[int, str]:
    """LVIS frequency group per category id: the GT categories' ``frequency``, else the vocabulary's."""
    frequencies = {c.id: c.frequency for c in vocab.categories if c.frequency}
    frequencies.update({c["id"]: c["frequency"] for c in gt["categories"] if c.get("frequency") in ("r", "c", "f")})
    return frequencies


def evaluate_files(
    gt_path: str | Path,
    detections_path: str | Path,
    vocab_spec: str,
    out_dir: str | Path,
    novel: list[str] | None = None,
    report: bool = True,
    image_root: str | Path | None = None,
    engine: str = "faster",
    protocol: str = "auto",
    dets_per_category: int = FIXED_DETS_PER_CATEGORY,
) -> dict[str, Any]:
    """Read the files, evaluate, write ``out_dir/metrics.json`` (+ report), print the table."""
    from ovdet.eval.report import format_table, write_report

    gt = read_json(gt_path, dict)
    detections = read_json(detections_path, list)
    vocab = load_vocabulary(vocab_spec, novel=novel, gt=gt)
    metrics = evaluate(gt, detections, vocab, protocol=protocol, engine=engine, dets_per_category=dets_per_category,
                       detections_name=str(detections_path))  # fmt: skip
    out_dir = Path(out_dir)
    write_metrics(out_dir, metrics)
    print(format_table(metrics))
    if report:
        write_report(out_dir, metrics, gt, detections, vocab, image_root=image_root)
    return metrics


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> Path:
    """``out_dir/metrics.json`` (the folder is created), keys in ``evaluate``'s order. Non-ASCII is
    escaped: ``metrics["model"]`` is a path, which may hold bytes that are not UTF-8."""
    return write_json_atomic(Path(out_dir) / "metrics.json", metrics, sort_keys=False, ensure_ascii=True)
