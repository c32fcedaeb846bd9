"""One training task: detector + criterion -> (weighted total loss, named loss dict).

This is the module DeepSpeed wraps; it is single-device code (no distributed imports).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ovdet.config import LossConfig
from ovdet.errors import OvdetError
from ovdet.losses.criterion import SetCriterion, build_assignment, weighted_sum
from ovdet.losses.registry import scheduled_weights


class DetectionTask(nn.Module):
    """``forward(batch) -> (total_loss, {loss_name: scalar})`` for a loader batch.

    ``batch`` (see ``ovdet.data.loader.collate``): ``images`` uint8 [B, 3, S, S]; per image
    ``texts`` (list of str), ``labels`` [N] (index into its texts), ``boxes`` [N, 4] normalized
    cxcywh, ``image_labels`` [K] (caption positives of image-text samples); ``has_boxes`` [B].
    """

    def __init__(self, detector: nn.Module, loss_cfg: LossConfig):
        super().__init__()
        check_recipe(detector, loss_cfg)
        self.detector = detector
        self.criterion = SetCriterion(build_assignment(loss_cfg), loss_cfg, detector.spec.get("quality", "none"))
        self.weights = dict(loss_cfg.weights)
        self.image_loss_start, self.image_loss_ramp = loss_cfg.image_loss_start, loss_cfg.image_loss_ramp
        self.step = 0  # the optimizer step being trained; the training loop sets it before each forward

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = self.detector.pixel_mean.device
        with self.autocast_to_parameter_dtype(device):
            outputs, text_mask = self.detector.predict(batch["images"].to(device), batch["texts"])
        matcher_input = {k: v.float() if v.is_floating_point() else v for k, v in outputs.as_matcher_input(text_mask).items()}  # noqa: E501
        columns = (batch["labels"], batch["boxes"], batch["image_labels"], batch["has_boxes"].tolist())
        targets = [criterion_target(*column, device) for column in zip(*columns, strict=True)]
        losses = self.criterion(matcher_input, targets)
        weights = scheduled_weights(self.weights, self.step, self.image_loss_start, self.image_loss_ramp)
        return weighted_sum(losses, weights), losses

    def autocast_to_parameter_dtype(self, device: torch.device):
        """bf16/fp16 engines cast the parameters, not the float inputs the detector builds
        (normalized pixels, text embeddings): autocast makes them meet; losses stay fp32."""
        parameter_dtype = next(p.dtype for p in self.detector.parameters())
        return torch.autocast(device.type, dtype=parameter_dtype, enabled=parameter_dtype != torch.float32)


def criterion_target(
    labels: torch.Tensor, boxes: torch.Tensor, image_labels: torch.Tensor, has_boxes: bool, device: torch.device
) -> dict[str, Any]:
    """One image's ``SetCriterion`` target; only an image without boxes (an image-text sample) is
    supervised by its caption's texts, ``image_labels``."""
    target = {"labels": labels.to(device), "boxes": boxes.to(device), "has_boxes": has_boxes}
    if not has_boxes:
        target["image_labels"] = image_labels.to(device)
    return target


def check_recipe(detector: nn.Module, loss_cfg: LossConfig) -> None:
    """Refuse a loss config the detector cannot train, in one line naming the keys."""
    name = detector.spec.get("name", "this model")
    if loss_cfg.assigner != "hungarian" and not getattr(detector, "has_token_grid", False):
        raise OvdetError(f"loss.assigner={loss_cfg.assigner} needs priors from a grid of region tokens; {name}'s "
                         "queries are not a grid (loss.assigner=hungarian, or recipe=owl)")
    if loss_cfg.classification == "softmax" and detector.spec.get("kind") == "hf":
        raise OvdetError(f"loss.classification=softmax needs a no-object logit per query; {name} keeps its own "
                         "class head (loss.classification=focal or bce)")
