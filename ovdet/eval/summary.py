"""Summaries of the accumulated arrays: AP and AR for base / novel / all / hm, frequency groups, curves.

Every value is a mean over the entries > -1 of the per-category arrays, exactly as
``COCOeval.summarize`` and ``LVISEval.summarize`` take them; the split subsets are category subsets
of the same arrays, so base / novel follow the protocol the arrays were computed under.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ovdet.data.vocab import Vocabulary
from ovdet.eval.engine import AREA_LABELS, IOU_THRESHOLDS, Accumulated
from ovdet.eval.protocols import Protocol

SPLIT_KEYS = ("base", "novel", "all")
# metric name -> (IoU threshold or None for 0.50:0.95, area range label), as the references' summarize
METRIC_SPECS = {
    "AP": (None, "all"),
    "AP50": (0.5, "all"),
    "AP75": (0.75, "all"),
    "APs": (None, "small"),
    "APm": (None, "medium"),
    "APl": (None, "large"),
}
FREQUENCY_METRICS = {"APr": "r", "APc": "c", "APf": "f"}


def recall_specs(protocol: Protocol, max_dets: list[int]) -> dict[str, tuple[str, int]]:
    """AR name -> (area range label, maxDets index). COCO: AR@1, AR@10, AR@100, ARs/m/l@100
    (``COCOeval.stats[6:12]``); LVIS: AR@300 and ARs/m/l@300 (``LVISEval.results``)."""
    label = protocol.recall_label
    specs = {}
    if protocol.name == "coco":
        specs = {f"AR@{limit}": ("all", index) for index, limit in enumerate(max_dets[:-1])}
    specs[f"AR@{label}"] = ("all", len(max_dets) - 1)
    for area in AREA_LABELS[1:]:
        specs[f"AR{area[0]}@{label}"] = (area, len(max_dets) - 1)
    return specs


def mean_defined(values: np.ndarray) -> float:
    values = values[values > -1]
    return float(np.mean(values)) if values.size else -1.0


def mean_precision(
    precision: np.ndarray, category_indices: list[int], iou_index: int | None = None, area_index: int = 0
) -> float:
    """The references' AP summary over a category subset at the largest maxDets; -1 when undefined."""
    values = precision[:, :, category_indices, area_index, -1]  # (T, R, K)
    return mean_defined(values if iou_index is None else values[iou_index])


def mean_recall(recall: np.ndarray, category_indices: list[int], area_index: int, max_dets_index: int) -> float:
    return mean_defined(recall[:, category_indices, area_index, max_dets_index])  # (T, K)


def harmonic_mean(base: float, novel: float) -> float:
    if base == -1 or novel == -1:
        return -1.0
    if base + novel == 0:
        return 0.0
    return 2 * base * novel / (base + novel)


def with_harmonic_mean(row: dict[str, float]) -> dict[str, float]:
    return {**row, "hm": harmonic_mean(row["base"], row["novel"])}


def summarize(accumulated: Accumulated, vocab: Vocabulary, protocol: Protocol, frequencies: dict[int, str]) -> dict:
    """The metrics dict (schema in ``docs/evaluation.md``); ``frequencies`` maps category id to r/c/f."""
    category_ids = accumulated.category_ids
    split_of = {c.id: c.split for c in vocab.categories}
    subsets = {
        "base": [k for k, cid in enumerate(category_ids) if split_of[cid] == "base"],
        "novel": [k for k, cid in enumerate(category_ids) if split_of[cid] == "novel"],
        "all": list(range(len(category_ids))),
    }
    metrics: dict[str, Any] = {}
    for name, (iou, area) in METRIC_SPECS.items():
        iou_index = None if iou is None else iou_threshold_index(iou)
        area_index = AREA_LABELS.index(area)
        metrics[name] = with_harmonic_mean({key: mean_precision(accumulated.precision, subsets[key], iou_index,
                                                                area_index) for key in SPLIT_KEYS})  # fmt: skip
    if any(frequencies.get(cid) for cid in category_ids):
        for name, group in FREQUENCY_METRICS.items():
            members = [k for k, cid in enumerate(category_ids) if frequencies.get(cid) == group]
            metrics[name] = mean_precision(accumulated.precision, members)
    for name, (area, max_dets_index) in recall_specs(protocol, accumulated.max_dets).items():
        area_index = AREA_LABELS.index(area)
        metrics[name] = with_harmonic_mean({key: mean_recall(accumulated.recall, subsets[key], area_index,
                                                             max_dets_index) for key in SPLIT_KEYS})  # fmt: skip
    metrics["per_category"] = per_category_metrics(accumulated, vocab)
    metrics["pr_curve_iou50"] = precision_recall_curves(accumulated.precision, subsets)
    return metrics


def iou_threshold_index(iou: float) -> int:
    return int(np.flatnonzero(IOU_THRESHOLDS == iou)[0])


def per_category_metrics(accumulated: Accumulated, vocab: Vocabulary) -> dict[str, dict]:
    iou50 = iou_threshold_index(0.5)
    index_of = {cid: k for k, cid in enumerate(accumulated.category_ids)}
    return {
        c.name: {
            "id": c.id,
            "split": c.split,
            "AP": mean_precision(accumulated.precision, [index_of[c.id]]),
            "AP50": mean_precision(accumulated.precision, [index_of[c.id]], iou50),
        }
        for c in vocab.categories
    }


def precision_recall_curves(precision: np.ndarray, subsets: dict) -> dict:
    """Mean interpolated precision at each of the 101 recall thresholds, IoU 0.5, all areas."""
    values_iou50 = precision[iou_threshold_index(0.5)]
    curves: dict[str, list[float]] = {"recall": np.linspace(0, 1, precision.shape[1]).tolist()}
    for key, indices in subsets.items():
        values = values_iou50[:, indices, 0, -1]  # (R, K)
        defined = values > -1
        counts = defined.sum(axis=1)
        sums = np.where(defined, values, 0).sum(axis=1)
        curves[key] = np.where(counts > 0, sums / np.maximum(counts, 1), -1.0).tolist()
    return curves
