"""Box conversions and the IoU family: small pure functions over ``(..., 4)`` tensors.

The format is in the name: ``xyxy`` (corners), ``xywh`` (top-left corner and size), ``cxcywh``
(centre and size; the detector's normalized output). A thin layer over ``torchvision.ops``: only
what torchvision lacks is written here (``box_area`` and the batched GIoU over leading dims).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision import ops


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    return ops.box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    return ops.box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) xywh (COCO) -> (..., 4) xyxy."""
    return ops.box_convert(boxes, in_fmt="xywh", out_fmt="xyxy")


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) xywh (COCO)."""
    return ops.box_convert(boxes, in_fmt="xyxy", out_fmt="xywh")


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) area. torchvision's ``box_area`` takes only [N, 4]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[N, 4] xyxy, [M, 4] xyxy -> [N, M] pairwise IoU."""
    return ops.box_iou(boxes1, boxes2)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[N, 4] xyxy, [M, 4] xyxy -> [N, M] pairwise GIoU in [-1, 1] (Rezatofighi et al. 2019)."""
    return ops.generalized_box_iou(boxes1, boxes2)


def batched_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[B, N, 4] xyxy, [B, M, 4] xyxy -> [B, N, M] GIoU between the boxes of the same batch item.

    Any number of leading dims works ([N, 4], [M, 4] gives torchvision's [N, M]). Boxes must have
    positive area; degenerate pairs give NaN as in torchvision.
    """
    pairs1, pairs2 = boxes1[..., :, None, :], boxes2[..., None, :, :]  # (..., n, 1, 4), (..., 1, m, 4)
    inter_lt = torch.max(pairs1[..., :2], pairs2[..., :2])  # (..., n, m, 2)
    inter_rb = torch.min(pairs1[..., 2:], pairs2[..., 2:])  # (..., n, m, 2)
    inter_wh = (inter_rb - inter_lt).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]  # (..., n, m)
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter  # (..., n, m)
    hull_wh = torch.max(pairs1[..., 2:], pairs2[..., 2:]) - torch.min(pairs1[..., :2], pairs2[..., :2])
    hull = hull_wh[..., 0] * hull_wh[..., 1]  # (..., n, m)
    return inter / union - (hull - union) / hull


def clip_boxes_xyxy(boxes: Tensor, width: float, height: float) -> Tensor:
    """(..., 4) xyxy clamped to the image ``[0, width] x [0, height]``."""
    return ops.clip_boxes_to_image(boxes, (height, width))
