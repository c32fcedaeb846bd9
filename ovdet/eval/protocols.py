"""Evaluation protocols: which detections and GT boxes a reference tool scores, and how.

Each protocol turns (GT, detections) into the input of one COCOeval run (``ovdet.eval.engine``):

* ``coco``: pycocotools ``COCOeval`` (``maxDets`` 1, 10, 100 per image and category).
* ``lvis``: lvis-api ``LVISEval(gt, LVISResults(gt, dets, max_dets=300), "bbox")``, the federated
  protocol. Its rules, applied in lvis-api's order: the top 300 detections per image by score
  (over every category); boxes of area 0 dropped (``get_ann_ids`` keeps 0 < area < inf, GT too);
  per image, detections of a category neither annotated there nor in its ``neg_category_ids``
  dropped; GT ``iscrowd`` unused; a GT ``ignore`` flag ignores the box; unmatched detections of a
  category in the image's ``not_exhaustive_category_ids`` ignored instead of false positives.
* ``lvis-fixed``: Fixed AP (Dave et al. 2021, ``scripts/evaluate_ap_fixed.py`` of
  achalddave/large-vocab-devil): the top K = 10,000 detections per category over the whole
  dataset, no per-image cap, then the federated rules above.

Two LVISEval rules have an exact COCOeval counterpart, which is how the engine stays one COCOeval
run: an unmatched detection whose area is outside the area range is ignored by COCOeval, so a
not-exhaustive detection gets area -1 (outside every range); an ignored GT box is one whose area
is outside every range, so it gets area -1 too (COCOeval's own ``ignore`` is overwritten by
``iscrowd``). ``tests/eval/test_lvis_parity.py`` runs lvis-api on generated federated cases.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from ovdet.errors import OvdetError
from ovdet.eval.engine import Detections
from ovdet.eval.inputs import check_federated_labels, has_federated_labels

PROTOCOLS = ("coco", "lvis", "lvis-fixed")
COCO_MAX_DETS = [1, 10, 100]  # COCOeval params.maxDets
LVIS_MAX_DETS_PER_IMAGE = 300  # LVISResults(max_dets=300), "the official value of max_dets for LVIS"
FIXED_DETS_PER_CATEGORY = 10_000  # Fixed AP, Dave et al. 2021 (K for LVIS)
# Detections per image a model is asked for when it is evaluated under each protocol: COCOeval and
# LVISEval keep no more; Fixed AP has no per-image cap and rewards more (the authors' advice).
MODEL_DETECTIONS_PER_IMAGE = {"coco": 100, "lvis": 300, "lvis-fixed": 1000}

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Protocol:
    """A resolved protocol: ``name`` and its caps (0 = none)."""

    name: str
    dets_per_image: int = 0
    dets_per_category: int = 0

    @property
    def is_federated(self) -> bool:
        return self.name != "coco"

    @property
    def recall_label(self) -> str:
        """The suffix of the AR keys: the per-image limit recall is measured at ('all': none)."""
        return str(self.dets_per_image) if self.dets_per_image else "all"

    def settings(self) -> dict:
        settings = {"protocol": self.name}
        if self.name == "coco":
            settings["maxDets"] = COCO_MAX_DETS
        else:
            settings["max_dets_per_image"] = self.dets_per_image or None
            settings["max_dets_per_category"] = self.dets_per_category or None
            settings["federated"] = True
        return settings


def resolve_protocol(name: str, gt: dict, dets_per_category: int = FIXED_DETS_PER_CATEGORY) -> Protocol:
    """``auto`` (or "") is ``lvis`` when the GT images carry ``neg_category_ids``, else ``coco``."""
    if name in ("", "auto"):
        name = "lvis" if has_federated_labels(gt) else "coco"
    if name not in PROTOCOLS:
        raise OvdetError(f"unknown evaluation protocol {name!r} (choose from auto, {', '.join(PROTOCOLS)})")
    if name == "coco":
        return Protocol("coco", dets_per_image=COCO_MAX_DETS[-1])
    check_federated_labels(gt, name)
    if name == "lvis":
        return Protocol("lvis", dets_per_image=LVIS_MAX_DETS_PER_IMAGE)
    if dets_per_category < 1:
        raise OvdetError(f"lvis-fixed: detections per category must be at least 1, got {dets_per_category}")
    return Protocol("lvis-fixed", dets_per_category=dets_per_category)


@dataclass
class Prepared:
    """The engine's input under a protocol, and what happened to every detection (``counts``)."""

    gt_annotations: list[dict]
    detections: Detections
    max_dets: list[int]
    counts: dict[str, int]


def prepare(protocol: Protocol, gt: dict, detections: Detections, vocab_ids: list[int], source: str) -> Prepared:
    """Apply ``protocol``'s rules; ``counts`` holds read = evaluated + every kind of drop."""
    counts = {"read": len(detections)}
    if protocol.name == "lvis":
        detections = keep_counted(detections, top_k_mask(detections.image_ids, detections.scores,
                                                         protocol.dets_per_image), counts, "over_image_cap")  # fmt: skip
    elif protocol.name == "lvis-fixed":
        detections = keep_fixed_top_k(detections, protocol.dets_per_category, counts)
    detections = drop_outside_vocabulary(detections, vocab_ids, counts, source)
    if not protocol.is_federated:
        counts["evaluated"] = len(detections)
        return Prepared(gt["annotations"], detections, COCO_MAX_DETS, counts)
    detections = keep_counted(detections, detections.areas > 0, counts, "zero_area")
    gt_annotations = federated_gt_annotations(gt)
    detections = apply_federated_labels(gt, gt_annotations, detections, counts)
    counts["evaluated"] = len(detections)
    return Prepared(gt_annotations, detections, [max(1, max_per_pair(detections))], counts)


def keep_counted(detections: Detections, keep: np.ndarray, counts: dict, reason: str) -> Detections:
    counts[reason] = int((~keep).sum())
    return detections.subset(keep)


def top_k_mask(groups: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """True for the ``k`` highest-scoring rows of each group; ties keep the earlier row, as the
    stable ``sorted(..., reverse=True)`` of lvis-api and of the Fixed AP script do."""
    order = np.lexsort((np.arange(len(scores)), -scores, groups))
    sorted_groups = groups[order]
    rank = np.arange(len(order)) - np.searchsorted(sorted_groups, sorted_groups, side="left")
    keep = np.zeros(len(scores), dtype=bool)
    keep[order[rank < k]] = True
    return keep


def keep_fixed_top_k(detections: Detections, k: int, counts: dict) -> Detections:
    kept = keep_counted(detections, top_k_mask(detections.category_ids, detections.scores, k), counts,
                        "over_category_cap")  # fmt: skip
    per_category = np.unique(kept.category_ids, return_counts=True)[1]
    counts["categories_under_cap"] = int((per_category < k).sum())
    if counts["categories_under_cap"]:
        logger.warning("lvis-fixed: %d categories have fewer than %d detections; Fixed AP rewards a model that "
                       "outputs %d per category (Dave et al. 2021)", counts["categories_under_cap"], k, k)
    return kept


def drop_outside_vocabulary(detections: Detections, vocab_ids: list[int], counts: dict, source: str) -> Detections:
    inside = np.isin(detections.category_ids, vocab_ids)
    if not inside.all():
        first = int(np.argmin(inside))
        logger.warning("%s: %d detections of categories outside the vocabulary dropped (e.g. detection #%d, "
                       "category_id %d)", source, int((~inside).sum()), int(detections.indices[first]),
                       int(detections.category_ids[first]))  # fmt: skip
    return keep_counted(detections, inside, counts, "outside_vocabulary")


def federated_gt_annotations(gt: dict) -> list[dict]:
    """GT boxes as LVISEval sees them: 0 < area < inf, iscrowd unused, ``ignore`` as area -1."""
    category_ids = {c["id"] for c in gt["categories"]}
    kept = []
    for annotation in gt["annotations"]:
        if not 0 < annotation["area"] < math.inf or annotation["category_id"] not in category_ids:
            continue
        annotation = {**annotation, "iscrowd": 0}
        if annotation.pop("ignore", 0):
            annotation["area"] = -1.0
        kept.append(annotation)
    return kept


def apply_federated_labels(gt: dict, gt_annotations: list[dict], detections: Detections, counts: dict) -> Detections:
    """Drop detections of categories the image's labels neither confirm nor deny; give those of its
    not-exhaustive categories area -1 (ignored when unmatched)."""
    image_ids = np.array(sorted(image["id"] for image in gt["images"]), dtype=np.int64)
    category_ids = np.array(sorted(c["id"] for c in gt["categories"]), dtype=np.int64)

    def keys(images: np.ndarray, categories: np.ndarray) -> np.ndarray:
        """One integer per (image, category) pair of GT ids; -1 where either is not in the GT."""
        known = np.isin(images, image_ids) & np.isin(categories, category_ids)
        pair_keys = np.full(len(images), -1, dtype=np.int64)
        image_index = np.searchsorted(image_ids, images[known])
        pair_keys[known] = image_index * len(category_ids) + np.searchsorted(category_ids, categories[known])
        return pair_keys

    positive = keys(np.array([a["image_id"] for a in gt_annotations], dtype=np.int64),
                    np.array([a["category_id"] for a in gt_annotations], dtype=np.int64))  # fmt: skip
    negative = keys(*image_list_columns(gt["images"], "neg_category_ids"))
    not_exhaustive = keys(*image_list_columns(gt["images"], "not_exhaustive_category_ids"))
    detection_keys = keys(detections.image_ids, detections.category_ids)
    verified = (detection_keys >= 0) & np.isin(detection_keys, np.concatenate([positive, negative]))
    detections = keep_counted(detections, verified, counts, "unverified")
    detection_keys = detection_keys[verified]
    return replace(detections, areas=np.where(np.isin(detection_keys, not_exhaustive), -1.0, detections.areas))


def image_list_columns(images: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, category ids) of every entry of each image's ``key`` list."""
    lengths = [len(image[key]) for image in images]
    image_column = np.repeat(np.array([image["id"] for image in images], dtype=np.int64), lengths)
    category_column = np.array([c for image in images for c in image[key]], dtype=np.int64)
    return image_column, category_column


def max_per_pair(detections: Detections) -> int:
    """The most detections any (image, category) pair has."""
    if not len(detections):
        return 0
    pairs = np.stack([detections.image_ids, detections.category_ids], axis=1)
    return int(np.unique(pairs, axis=0, return_counts=True)[1].max())
