"""Training recipes: the settings that make a detector train like OWL-ViT, GLIP or YOLO-World.

A run config names one with ``recipe: yolo-world`` (or the override ``recipe=glip``); ``load_config``
fills in the recipe's settings under the config's own, so any key the file or an override sets wins
(``recipe=yolo-world loss.weights.loss_ciou=5``). Every recipe sets the same keys, so switching
recipe never leaves another recipe's setting behind. Measured against each other in docs/recipes.md;
each option is described in docs/losses.md.
"""

from __future__ import annotations

import copy
from typing import Any

from ovdet.errors import OvdetError

RECIPES: dict[str, dict[str, Any]] = {
    # OWL-ViT (Minderer et al. 2022): one-to-one Hungarian matching, focal classification, L1 + GIoU
    # on directly regressed boxes, no quality head (the library's defaults)
    "owl": {
        "loss": {"assigner": "hungarian", "classification": "focal",
                 "weights": {"loss_labels": 2.0, "loss_l1": 5.0, "loss_giou": 2.0, "loss_ciou": 0.0}},
        "model": {"box_head": "direct", "quality": "none"},
        "loader": {"mosaic_probability": 0.0},
    },
    # GLIP (Li et al. 2022): ATSS assignment with FCOS centerness, focal classification, GIoU
    "glip": {
        "loss": {"assigner": "atss", "classification": "focal",
                 "weights": {"loss_labels": 2.0, "loss_l1": 0.0, "loss_giou": 2.0, "loss_ciou": 0.0}},
        "model": {"box_head": "direct", "quality": "centerness"},
        "loader": {"mosaic_probability": 0.0},
    },
    # YOLO-World (Cheng et al. 2024) on YOLOv8's head: task-aligned assignment, BCE on its soft
    # targets, DFL box head, CIoU, mosaic on every sample; YOLOv8's weights box 7.5, cls 0.5 (and dfl
    # 1.5, loss_dfl's default)
    "yolo-world": {
        "loss": {"assigner": "tal", "classification": "bce",
                 "weights": {"loss_labels": 0.5, "loss_l1": 0.0, "loss_giou": 0.0, "loss_ciou": 7.5}},
        "model": {"box_head": "dfl", "quality": "none"},
        "loader": {"mosaic_probability": 1.0},
    },
}


def apply_recipe(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """``raw`` (a config tree as read, overrides applied) with its ``recipe``'s settings filled in
    under the keys it sets itself; unchanged when it names none."""
    name = raw.get("recipe") or ""
    if not name:
        return raw
    if not isinstance(name, str) or name not in RECIPES:
        raise OvdetError(f"{source}: recipe={name!r} is not a recipe (known: {', '.join(RECIPES)})")
    return merged(copy.deepcopy(RECIPES[name]), raw)


def merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, anything else in ``top`` replaces."""
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = merged(base[key], value)
        else:
            base[key] = value
    return base
