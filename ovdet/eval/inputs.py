"""Checked evaluation inputs: COCO/LVIS ground truth and COCO-format detections as columns.

Every problem is an ``OvdetError`` naming the file and record. Detections are validated for shape,
types and values here; which of them a protocol then keeps is ``ovdet.eval.protocols``' business.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ovdet.data.vocab import Vocabulary, normalize_name
from ovdet.errors import OvdetError
from ovdet.eval.engine import Detections
from ovdet.fileio import is_integer, is_number

FEDERATED_IMAGE_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")  # LVIS v1 image fields


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


def has_federated_labels(gt: dict) -> bool:
    """True when the GT images carry LVIS's ``neg_category_ids`` (LVIS format)."""
    return any("neg_category_ids" in image for image in gt.get("images", []))


def check_federated_labels(gt: dict, protocol: str) -> None:
    """Each image must list its verified-negative and not-exhaustive categories (LVIS v1)."""
    for key in FEDERATED_IMAGE_KEYS:
        for image in gt["images"]:
            value = image.get(key)
            if not isinstance(value, list) or not all(is_integer(v) for v in value):
                problem = "has no" if value is None else "has a malformed"
                raise OvdetError(f"GT: image {image['id']} {problem} '{key}' list, which --protocol {protocol} needs "
                                 "(LVIS federated labels; use --protocol coco for exhaustively annotated sets)")


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


def checked_detections(detections: list, image_ids: list, source: str) -> Detections:
    """Validated detection columns (areas ``w*h``); a detection of a non-GT image is an error."""
    if not isinstance(detections, list):
        raise OvdetError(f"{source}: expected a list of detections, got {type(detections).__name__}")
    if not detections:
        empty = np.zeros(0, dtype=np.int64)
        return Detections(empty, empty, np.zeros((0, 4)), np.zeros(0), np.zeros(0), empty)
    image_column, category_column, boxes, scores = detection_columns(detections, source)
    columns = Detections(image_column, category_column, boxes, scores, boxes[:, 2] * boxes[:, 3],
                         np.arange(len(scores)))  # fmt: skip
    check_detection_values(columns, image_ids, source)
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


def check_detection_values(columns: Detections, image_ids: list, source: str) -> None:
    problems = [
        (~np.isin(columns.image_ids, image_ids), "image_id is not a GT image"),
        (~np.isfinite(columns.scores), "score is NaN or infinite"),
        (~np.isfinite(columns.boxes).all(axis=1), "bbox has NaN or infinite values"),
        ((columns.boxes[:, 2:] < 0).any(axis=1), "bbox has a negative width or height"),
    ]
    first = [(int(np.argmax(mask)), reason) for mask, reason in problems if mask.any()]
    if first:
        index, reason = min(first)
        record = f"image_id={columns.image_ids[index]}, category_id={columns.category_ids[index]}"
        raise OvdetError(f"{source}: detection #{index} ({record}): {reason}")
