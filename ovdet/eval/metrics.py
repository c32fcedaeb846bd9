"""Box AP for open-vocabulary detection: base, novel, all and their harmonic mean from ONE evaluation.

``evaluate(gt, detections, vocab)`` runs COCOeval once over every vocabulary category (generalized
setting: detections compete across the whole vocabulary) and derives each subset's numbers from the
per-category precision array ``[T, R, K, A, M]`` exactly as ``COCOeval.summarize`` does (mean over
entries > -1). The numbers equal pycocotools COCOeval run separately with ``params.catIds`` set to
the subset (``tests/eval/test_parity.py``). The metrics dict schema is in ``docs/evaluation.md``.
No torch import anywhere on this path: ``ovdet eval`` stays fast to start.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ovdet.data.vocab import Vocabulary, load_vocabulary, normalize_name
from ovdet.errors import OvdetError

ENGINES = ("faster", "pycocotools")
SPLIT_KEYS = ("base", "novel", "all")
# metric name -> (IoU threshold or None for 0.50:0.95, area range label), as COCOeval.summarize
METRIC_SPECS = {
    "AP": (None, "all"),
    "AP50": (0.5, "all"),
    "AP75": (0.75, "all"),
    "APs": (None, "small"),
    "APm": (None, "medium"),
    "APl": (None, "large"),
}
FREQUENCY_METRICS = {"APr": "r", "APc": "c", "APf": "f"}
AREA_LABELS = ["all", "small", "medium", "large"]
NUM_RECALL_THRESHOLDS = 101  # COCOeval recThrs 0:0.01:1
AREA_RANGES = [[0, 1e10], [0, 32**2], [32**2, 96**2], [96**2, 1e10]]  # COCOeval's defaults

logger = logging.getLogger(__name__)


def evaluate(
    gt: dict,
    detections: list[dict],
    vocab: Vocabulary,
    *,
    engine: str = "faster",
    max_dets: int = 100,
    detections_name: str = "detections",
) -> dict[str, Any]:
    """Score COCO-format ``detections`` against COCO ``gt`` for every vocabulary category.

    Returns the metrics dict: ``AP, AP50, AP75, APs, APm, APl`` each ``{"base", "novel", "all",
    "hm"}`` as fractions (-1 where undefined, as pycocotools), ``APr/APc/APf`` for LVIS
    vocabularies, ``per_category``, ``pr_curve_iou50``, ``num_images``, ``num_detections``,
    ``settings``.
    """
    if engine not in ENGINES:
        raise OvdetError(f"unknown evaluation engine {engine!r} (choose from {', '.join(ENGINES)})")
    gt = checked_ground_truth(gt)
    check_vocabulary_in_gt(vocab, gt)
    image_ids = [image["id"] for image in gt["images"]]
    columns = checked_detections(detections, image_ids, vocab.ids, detections_name)
    if not len(columns):
        logger.warning("%s: no detections; every AP is 0 (-1 where the GT has no boxes)", detections_name)
    category_ids = sorted(vocab.ids)
    precision, iou_thresholds = accumulate_precision(gt, columns, category_ids, max_dets, engine)
    metrics = summarize(precision, iou_thresholds, category_ids, vocab)
    metrics["num_images"] = len(image_ids)
    metrics["num_detections"] = len(columns)
    metrics["settings"] = evaluation_settings(iou_thresholds, max_dets, engine)
    return metrics


def evaluate_files(
    gt_path: str | Path,
    detections_path: str | Path,
    vocab_spec: str,
    out_dir: str | Path,
    novel: list[str] | None = None,
    report: bool = True,
    image_root: str | Path | None = None,
    engine: str = "faster",
) -> dict[str, Any]:
    """Read the files, evaluate, write ``out_dir/metrics.json`` (+ report), print the table."""
    from ovdet.eval.report import format_table, write_report

    gt = read_json(gt_path, dict)
    detections = read_json(detections_path, list)
    vocab = load_vocabulary(vocab_spec, novel=novel, gt=gt)
    metrics = evaluate(gt, detections, vocab, engine=engine, detections_name=str(detections_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(format_table(metrics))
    if report:
        write_report(out_dir, metrics, gt, detections, vocab, image_root=image_root)
    return metrics


def read_json(path: str | Path, expected: type) -> Any:
    try:
        with open(path) as file:
            data = json.load(file)
    except OSError as exc:
        raise OvdetError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise OvdetError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
    if not isinstance(data, expected):
        raise OvdetError(f"{path}: expected a JSON {expected.__name__}, got {type(data).__name__}")
    return data


def checked_ground_truth(gt: dict) -> dict:
    """A shallow copy of ``gt`` with copied annotations (COCOeval writes into them), area filled in."""
    if not isinstance(gt, dict):
        raise OvdetError(f"GT: expected a COCO dict, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise OvdetError(f"GT: missing the '{key}' list")
    for image in gt["images"]:
        if not is_integer(image.get("id")):
            raise OvdetError(f"GT: image {image.get('file_name', '?')}: 'id' must be an integer, got {image.get('id')!r}")
    annotations = [checked_gt_annotation(annotation) for annotation in gt["annotations"]]
    return {**gt, "annotations": annotations}


def checked_gt_annotation(annotation: dict) -> dict:
    missing = [key for key in ("id", "image_id", "category_id", "bbox") if key not in annotation]
    if missing:
        raise OvdetError(f"GT: annotation {annotation.get('id', '?')}: missing {', '.join(missing)}")
    if not (is_integer(annotation["image_id"]) and is_integer(annotation["category_id"])):
        raise OvdetError(f"GT: annotation {annotation['id']}: image_id and category_id must be integers")
    annotation = dict(annotation)
    if "area" not in annotation:
        annotation["area"] = annotation["bbox"][2] * annotation["bbox"][3]
    return annotation


def check_vocabulary_in_gt(vocab: Vocabulary, gt: dict) -> None:
    """Each vocabulary category must be a GT category with the same id and name (or synonym)."""
    gt_names = {int(c["id"]): normalize_name(c["name"]) for c in gt["categories"]}
    gt_ids = {name: category_id for category_id, name in gt_names.items()}
    for category in vocab.categories:
        names = {normalize_name(n) for n in [category.name, *category.synonyms]}
        if gt_names.get(category.id) in names:
            continue
        other = next((gt_ids[n] for n in names if n in gt_ids), None)
        if other is not None:
            raise OvdetError(f"vocabulary: {category.name!r} has id {category.id} but GT id {other}")
        raise OvdetError(f"vocabulary: {category.name!r} (id {category.id}) is not among the GT categories")


@dataclass
class Detections:
    """Validated detections as columns (COCO results order): image_ids [N], category_ids [N],
    boxes [N, 4] xywh pixels, scores [N]."""

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def checked_detections(detections: list, image_ids: list, category_ids: list, source: str) -> Detections:
    if not isinstance(detections, list):
        raise OvdetError(f"{source}: expected a list of detections, got {type(detections).__name__}")
    if not detections:
        empty = np.zeros(0, dtype=np.int64)
        return Detections(empty, empty, np.zeros((0, 4)), np.zeros(0))
    columns = Detections(*detection_columns(detections, source))
    check_detection_values(columns, image_ids, category_ids, source)
    return columns


def detection_columns(detections: list, source: str) -> tuple[np.ndarray, ...]:
    """(image_ids [N], category_ids [N], boxes [N, 4] xywh, scores [N]); fast path with a slow diagnosis."""
    try:
        image_ids = np.array([d["image_id"] for d in detections])
        category_ids = np.array([d["category_id"] for d in detections])
        boxes = np.array([d["bbox"] for d in detections], dtype=np.float64)
        scores = np.array([d["score"] for d in detections], dtype=np.float64)
    except (KeyError, TypeError, ValueError, IndexError):
        raise_first_malformed(detections, source)
    if image_ids.dtype.kind not in "iu" or category_ids.dtype.kind not in "iu" or boxes.shape[1:] != (4,):
        raise_first_malformed(detections, source)
    return image_ids, category_ids, boxes, scores


def raise_first_malformed(detections: list, source: str) -> None:
    for index, detection in enumerate(detections):
        reason = malformed_reason(detection)
        if reason:
            raise OvdetError(f"{source}: detection #{index}: {reason}")
    raise OvdetError(f"{source}: detections have inconsistent fields")


def malformed_reason(detection: Any) -> str | None:
    if not isinstance(detection, dict):
        return f"expected an object, got {type(detection).__name__}"
    missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in detection]
    if missing:
        return f"missing {', '.join(missing)}"
    for key in ("image_id", "category_id"):
        if not is_integer(detection[key]):
            return f"{key} must be an integer, got {detection[key]!r}"
    box = detection["bbox"]
    if not isinstance(box, list) or len(box) != 4 or not all(is_number(v) for v in box):
        return f"bbox must be 4 numbers [x, y, w, h], got {box!r}"
    if not is_number(detection["score"]):
        return f"score must be a number, got {detection['score']!r}"
    return None


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_detection_values(columns: Detections, image_ids: list, category_ids: list, source: str) -> None:
    image_column, category_column, boxes, scores = (columns.image_ids, columns.category_ids, columns.boxes,
                                                    columns.scores)  # fmt: skip
    problems = [
        (~np.isin(image_column, image_ids), "image_id is not a GT image"),
        (~np.isin(category_column, category_ids), "category_id is not in the vocabulary"),
        (~np.isfinite(scores), "score is NaN or infinite"),
        (~np.isfinite(boxes).all(axis=1), "bbox has NaN or infinite values"),
        ((boxes[:, 2:] < 0).any(axis=1), "bbox has a negative width or height"),
    ]
    first = [(int(np.argmax(mask)), reason) for mask, reason in problems if mask.any()]
    if first:
        index, reason = min(first)
        record = f"image_id={image_column[index]}, category_id={category_column[index]}"
        raise OvdetError(f"{source}: detection #{index} ({record}): {reason}")


def engine_classes(engine: str) -> tuple[type, type]:
    if engine == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def build_coco(coco_class: type, dataset: dict) -> Any:
    coco = coco_class()
    coco.dataset = dataset
    coco.createIndex()
    return coco


@dataclass
class EvaluationGroup:
    """Categories evaluated together on a compact image layout: each category's (image, category)
    pairs that hold GT or detections become images 1..n in the original image order."""

    category_ids: list[int]
    num_images: int
    gt_annotations: list[dict]
    detections: list[dict]


def accumulate_precision(
    gt: dict, detections: Detections, category_ids: list[int], max_dets: int, engine: str
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval evaluate + accumulate for ``category_ids``: (precision [T, R, K, A, M], IoU thresholds [T]).

    Categories without GT stay -1 (COCOeval skips them). The others run on compact layouts
    (``evaluation_groups``): COCOeval's cost grows with images x categories, and a category only
    ever sees its own non-empty (image, category) pairs, kept in image order, so every value is
    unchanged while the work drops to the pairs that exist.
    """
    iou_thresholds = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
    precision = np.full((len(iou_thresholds), NUM_RECALL_THRESHOLDS, len(category_ids), len(AREA_LABELS), 3), -1.0)
    position = {category_id: k for k, category_id in enumerate(category_ids)}
    categories = {c["id"]: c for c in gt["categories"]}
    for group in evaluation_groups(gt, detections, category_ids):
        group_precision = evaluate_group(engine, group, [categories[i] for i in group.category_ids], max_dets)
        precision[:, :, [position[i] for i in group.category_ids]] = group_precision
    return precision, iou_thresholds


def evaluate_group(engine: str, group: EvaluationGroup, categories: list[dict], max_dets: int) -> np.ndarray:
    coco_class, eval_class = engine_classes(engine)
    images = [{"id": i} for i in range(1, group.num_images + 1)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = build_coco(coco_class, {"images": images, "categories": categories,
                                          "annotations": group.gt_annotations})  # fmt: skip
        coco_dt = build_coco(coco_class, {"images": images, "categories": categories,
                                          "annotations": group.detections})  # fmt: skip
        evaluator = eval_class(coco_gt, coco_dt, "bbox")
        evaluator.params.catIds = group.category_ids
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    return np.asarray(evaluator.eval["precision"])


def evaluation_groups(gt: dict, detections: Detections, category_ids: list[int]) -> list[EvaluationGroup]:
    """Group categories with GT by their number of non-empty pairs (powers of two), so padding
    every category of a group to the group's largest at most doubles the work."""
    image_ids = np.array([image["id"] for image in gt["images"]], dtype=np.int64)
    gt_images = np.array([a["image_id"] for a in gt["annotations"]], dtype=np.int64)
    gt_categories = np.array([a["category_id"] for a in gt["annotations"]], dtype=np.int64)
    on_gt_images = np.isin(gt_images, image_ids)
    evaluated = np.intersect1d(gt_categories[on_gt_images], category_ids)
    gt_rows = np.flatnonzero(np.isin(gt_categories, evaluated) & on_gt_images)
    dt_rows = np.flatnonzero(np.isin(detections.category_ids, evaluated))
    virtual_images, pairs_per_category = pack_pairs(
        np.concatenate([gt_images[gt_rows], detections.image_ids[dt_rows]]),
        np.concatenate([gt_categories[gt_rows], detections.category_ids[dt_rows]]),
        evaluated,
    )
    group_of_category = np.log2(np.maximum(pairs_per_category, 1)).astype(np.int64)
    gt_groups = group_of_category[np.searchsorted(evaluated, gt_categories[gt_rows])]
    dt_groups = group_of_category[np.searchsorted(evaluated, detections.category_ids[dt_rows])]
    gt_virtual, dt_virtual = virtual_images[: len(gt_rows)], virtual_images[len(gt_rows) :]
    groups = []
    for group in np.unique(group_of_category):
        in_group = group_of_category == group
        gt_in, dt_in = gt_groups == group, dt_groups == group
        groups.append(EvaluationGroup(
            category_ids=evaluated[in_group].tolist(),
            num_images=int(pairs_per_category[in_group].max()),
            gt_annotations=moved_annotations(gt["annotations"], gt_rows[gt_in], gt_virtual[gt_in]),
            detections=result_annotations(detections, dt_rows[dt_in], dt_virtual[dt_in]),
        ))  # fmt: skip
    return groups


def moved_annotations(annotations: list[dict], rows: np.ndarray, image_ids: np.ndarray) -> list[dict]:
    return [{**annotations[row], "image_id": image_id}
            for row, image_id in zip(rows.tolist(), image_ids.tolist(), strict=True)]  # fmt: skip


def pack_pairs(images: np.ndarray, categories: np.ndarray, evaluated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the 1-based rank of its image among the images its category appears in
    (ascending image id, the order COCOeval concatenates images); and pairs per category [K]."""
    if not len(images):
        return np.zeros(0, dtype=np.int64), np.zeros(len(evaluated), dtype=np.int64)
    image_index = np.unique(images, return_inverse=True)[1].reshape(-1)
    category_index = np.searchsorted(evaluated, categories)
    stride = int(image_index.max()) + 1
    pair_keys, pair_of_row = np.unique(category_index * stride + image_index, return_inverse=True)
    pair_categories = pair_keys // stride
    first_pair = np.searchsorted(pair_categories, np.arange(len(evaluated)))
    rank = np.arange(len(pair_keys)) - first_pair[pair_categories]
    return rank[pair_of_row.reshape(-1)] + 1, np.bincount(pair_categories, minlength=len(evaluated))


def result_annotations(detections: Detections, rows: np.ndarray, image_ids: np.ndarray) -> list[dict]:
    """COCO result annotations for ``rows``, as ``COCO.loadRes`` builds them (area w*h, id = row + 1)."""
    boxes = detections.boxes[rows]
    columns = zip((rows + 1).tolist(), image_ids.tolist(), detections.category_ids[rows].tolist(), boxes.tolist(),
                  detections.scores[rows].tolist(), (boxes[:, 2] * boxes[:, 3]).tolist(), strict=True)  # fmt: skip
    return [
        {"id": i, "image_id": image_id, "category_id": category_id, "bbox": box, "score": score,
         "area": area, "iscrowd": 0}
        for i, image_id, category_id, box, score, area in columns
    ]  # fmt: skip


def mean_precision(
    precision: np.ndarray, category_indices: list[int], iou_index: int | None = None, area_index: int = 0
) -> float:
    """COCOeval._summarize over a category subset at the largest maxDets; -1 when nothing is defined."""
    values = precision[:, :, category_indices, area_index, -1]  # (T, R, K)
    if iou_index is not None:
        values = values[iou_index]
    values = values[values > -1]
    return float(np.mean(values)) if values.size else -1.0


def harmonic_mean(base: float, novel: float) -> float:
    if base == -1 or novel == -1:
        return -1.0
    if base + novel == 0:
        return 0.0
    return 2 * base * novel / (base + novel)


def summarize(precision: np.ndarray, iou_thresholds: np.ndarray, category_ids: list[int], vocab: Vocabulary) -> dict:
    split_of = {c.id: c.split for c in vocab.categories}
    subsets = {
        "base": [k for k, cid in enumerate(category_ids) if split_of[cid] == "base"],
        "novel": [k for k, cid in enumerate(category_ids) if split_of[cid] == "novel"],
        "all": list(range(len(category_ids))),
    }
    metrics: dict[str, Any] = {}
    for name, (iou, area) in METRIC_SPECS.items():
        iou_index = None if iou is None else int(np.flatnonzero(iou_thresholds == iou)[0])
        area_index = AREA_LABELS.index(area)
        row = {key: mean_precision(precision, subsets[key], iou_index, area_index) for key in SPLIT_KEYS}
        metrics[name] = {**row, "hm": harmonic_mean(row["base"], row["novel"])}
    if vocab.has_frequencies:
        metrics.update(frequency_metrics(precision, category_ids, vocab))
    metrics["per_category"] = per_category_metrics(precision, iou_thresholds, category_ids, vocab)
    metrics["pr_curve_iou50"] = precision_recall_curves(precision, iou_thresholds, subsets)
    return metrics


def frequency_metrics(precision: np.ndarray, category_ids: list[int], vocab: Vocabulary) -> dict[str, float]:
    """LVIS APr/APc/APf: AP (0.50:0.95, all areas) over each frequency group."""
    frequency_of = {c.id: c.frequency for c in vocab.categories}
    return {
        name: mean_precision(precision, [k for k, cid in enumerate(category_ids) if frequency_of[cid] == group])
        for name, group in FREQUENCY_METRICS.items()
    }


def per_category_metrics(
    precision: np.ndarray, iou_thresholds: np.ndarray, category_ids: list[int], vocab: Vocabulary
) -> dict[str, dict]:
    iou50 = int(np.flatnonzero(iou_thresholds == 0.5)[0])
    index_of = {cid: k for k, cid in enumerate(category_ids)}
    return {
        c.name: {
            "id": c.id,
            "split": c.split,
            "AP": mean_precision(precision, [index_of[c.id]]),
            "AP50": mean_precision(precision, [index_of[c.id]], iou50),
        }
        for c in vocab.categories
    }


def precision_recall_curves(precision: np.ndarray, iou_thresholds: np.ndarray, subsets: dict) -> dict:
    """Mean interpolated precision at each of the 101 recall thresholds, IoU 0.5, all areas."""
    iou50 = int(np.flatnonzero(iou_thresholds == 0.5)[0])
    curves: dict[str, list[float]] = {"recall": np.linspace(0, 1, precision.shape[1]).tolist()}
    for key, indices in subsets.items():
        values = precision[iou50][:, indices, 0, -1]  # (R, K)
        defined = values > -1
        counts = defined.sum(axis=1)
        sums = np.where(defined, values, 0).sum(axis=1)
        curves[key] = np.where(counts > 0, sums / np.maximum(counts, 1), -1.0).tolist()
    return curves


def evaluation_settings(iou_thresholds: np.ndarray, max_dets: int, engine: str) -> dict:
    return {
        "iouThrs": [round(float(t), 2) for t in iou_thresholds],
        "maxDets": max_dets,
        "areaRng": dict(zip(AREA_LABELS, AREA_RANGES, strict=True)),
        "engine": engine,
    }
