"""The COCOeval engine on a compact layout: per-category precision and recall arrays, fast.

Every protocol (``ovdet.eval.protocols``) reduces to one COCOeval run over prepared GT annotations
and detection columns; this module runs it. COCOeval's cost grows with images x categories, almost
all of them empty pairs at LVIS scale, while a category's numbers depend only on its own non-empty
(image, category) pairs, concatenated in image-id order. So each category's pairs are renumbered as
images 1..n in the same order and categories with a similar n are evaluated together
(``evaluation_groups``). ``tests/eval/test_parity.py`` and ``tests/eval/test_lvis_parity.py``
compare this against the references on the original layout.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from ovdet.errors import OvdetError

ENGINES = ("faster", "pycocotools")
AREA_LABELS = ["all", "small", "medium", "large"]
AREA_RANGES = [[0, 1e10], [0, 32**2], [32**2, 96**2], [96**2, 1e10]]  # COCOeval's and LVISEval's defaults
NUM_RECALL_THRESHOLDS = 101  # COCOeval recThrs 0:0.01:1
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)  # as COCOeval


@dataclass
class Detections:
    """Detection columns (COCO results order): image_ids [N], category_ids [N], boxes [N, 4] xywh
    pixels, scores [N], areas [N] (COCOeval's area-range test; ``w*h`` unless a protocol says) and
    indices [N] (each row's position in the detections as given, for messages)."""

    image_ids: np.ndarray
    category_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    areas: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, keep: np.ndarray) -> Detections:
        """The rows where boolean ``keep`` [N] is true, in their original order."""
        return Detections(self.image_ids[keep], self.category_ids[keep], self.boxes[keep], self.scores[keep],
                          self.areas[keep], self.indices[keep])  # fmt: skip


@dataclass
class Accumulated:
    """COCOeval's accumulated arrays for ``category_ids``: precision [T, R, K, A, M] and recall
    [T, K, A, M] (-1 where a category has no GT in an area range), with T = ``IOU_THRESHOLDS``,
    A = ``AREA_LABELS``, M = ``max_dets``."""

    precision: np.ndarray
    recall: np.ndarray
    category_ids: list[int]
    max_dets: list[int]


@dataclass
class EvaluationGroup:
    """Categories evaluated together on a compact image layout: each category's (image, category)
    pairs that hold GT or detections become images 1..n in the original image order."""

    category_ids: list[int]
    num_images: int
    gt_annotations: list[dict]
    detections: list[dict]


def accumulate(
    gt_annotations: list[dict],
    image_ids: list[int],
    categories: list[dict],
    detections: Detections,
    category_ids: list[int],
    max_dets: list[int],
    engine: str = "faster",
) -> Accumulated:
    """COCOeval evaluate + accumulate (``iouType`` bbox) for ``category_ids`` on the GT images.

    ``gt_annotations`` need ``id, image_id, category_id, bbox, area, iscrowd``; ``categories`` are
    the GT category records. Categories without GT stay -1 (COCOeval skips them).
    """
    if engine not in ENGINES:
        raise OvdetError(f"unknown evaluation engine {engine!r} (choose from {', '.join(ENGINES)})")
    shape = (len(IOU_THRESHOLDS), len(category_ids), len(AREA_LABELS), len(max_dets))
    precision = np.full((shape[0], NUM_RECALL_THRESHOLDS, *shape[1:]), -1.0)
    recall = np.full(shape, -1.0)
    position = {category_id: k for k, category_id in enumerate(category_ids)}
    category_of = {c["id"]: c for c in categories}
    for group in evaluation_groups(gt_annotations, image_ids, detections, category_ids):
        evaluated = evaluate_group(engine, group, [category_of[i] for i in group.category_ids], max_dets)
        columns = [position[i] for i in group.category_ids]
        precision[:, :, columns] = evaluated["precision"]
        recall[:, columns] = evaluated["recall"]
    return Accumulated(precision, recall, list(category_ids), list(max_dets))


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


def evaluate_group(engine: str, group: EvaluationGroup, categories: list[dict], max_dets: list[int]) -> dict:
    coco_class, eval_class = engine_classes(engine)
    images = [{"id": i} for i in range(1, group.num_images + 1)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = build_coco(coco_class, {"images": images, "categories": categories,
                                          "annotations": group.gt_annotations})  # fmt: skip
        coco_dt = build_coco(coco_class, {"images": images, "categories": categories,
                                          "annotations": group.detections})  # fmt: skip
        evaluator = eval_class(coco_gt, coco_dt, "bbox")
        evaluator.params.catIds = group.category_ids
        evaluator.params.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
    return {"precision": np.asarray(evaluator.eval["precision"]), "recall": np.asarray(evaluator.eval["recall"])}


def evaluation_groups(
    gt_annotations: list[dict], image_ids: list[int], detections: Detections, category_ids: list[int]
) -> list[EvaluationGroup]:
    """Group categories with GT by their number of non-empty pairs (powers of two), so padding
    every category of a group to the group's largest at most doubles the work."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    gt_images = np.array([a["image_id"] for a in gt_annotations], dtype=np.int64)
    gt_categories = np.array([a["category_id"] for a in gt_annotations], dtype=np.int64)
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
            gt_annotations=moved_annotations(gt_annotations, gt_rows[gt_in], gt_virtual[gt_in]),
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
    """COCO result annotations for ``rows`` (id = row + 1, as ``COCO.loadRes`` numbers them)."""
    columns = zip((rows + 1).tolist(), image_ids.tolist(), detections.category_ids[rows].tolist(),
                  detections.boxes[rows].tolist(), detections.scores[rows].tolist(),
                  detections.areas[rows].tolist(), strict=True)  # fmt: skip
    return [
        {"id": i, "image_id": image_id, "category_id": category_id, "bbox": box, "score": score,
         "area": area, "iscrowd": 0}
        for i, image_id, category_id, box, score, area in columns
    ]  # fmt: skip
