"""The loss registry (DETR's ``loss_map``): every term the criterion computes, the scalars it returns
and their default weights, defined once.

    LOSS_TERMS["labels"] == {"loss_labels": 2.0}

Term ``NAME`` is the method ``SetCriterion.loss_NAME``; the scalars it returns are the keys of
``loss.weights``, whose allowed keys and defaults (``LossConfig``) come from this table. Adding a
loss is one method plus one entry here. Torch-free, so the config can import it.
"""

from __future__ import annotations

# term -> {scalar: default weight}. The order is the criterion's and that of the weighted sum.
LOSS_TERMS: dict[str, dict[str, float]] = {
    "labels": {"loss_labels": 2.0},  # focal classification weight, Deformable-DETR / MM-Grounding-DINO
    # L1 + GIoU: DETR; the others (smooth L1: Fast R-CNN, IoU: UnitBox, DIoU / CIoU: Zheng et al.
    # 2020) are computed and logged at weight 0 until a recipe weights them (docs/recipes.md)
    "boxes": {"loss_l1": 5.0, "loss_smooth_l1": 0.0, "loss_iou": 0.0, "loss_giou": 2.0, "loss_diou": 0.0,
              "loss_ciou": 0.0},
    "dfl": {"loss_dfl": 1.5},  # model.box_head=dfl only; YOLOv8's weight
    "quality": {"loss_quality": 1.0},  # model.quality only; FCOS centerness weight
    "contrastive": {"loss_contrastive": 0.5},
    "image": {"loss_image": 1.0},
}


def weight_names() -> tuple[str, ...]:
    """Every scalar a term returns, in registry order: the allowed keys of ``loss.weights``."""
    return tuple(name for scalars in LOSS_TERMS.values() for name in scalars)


def default_weights() -> dict[str, float]:
    """``loss.weights`` when the config names none (a fresh dict: callers may change it)."""
    return {name: weight for scalars in LOSS_TERMS.values() for name, weight in scalars.items()}


def scheduled_weights(weights: dict[str, float], step: int, image_start: int, image_ramp: int) -> dict[str, float]:
    """The loss weights at optimizer step ``step``: ``loss_image`` is 0 before ``image_start``, then
    rises linearly to its weight over ``image_ramp`` steps (at once when 0); the others are constant."""
    if "loss_image" not in weights:
        return dict(weights)
    ramp = (step - image_start + 1) / image_ramp if image_ramp else 1.0
    factor = 0.0 if step < image_start else min(1.0, ramp)
    return {**weights, "loss_image": factor * weights["loss_image"]}
