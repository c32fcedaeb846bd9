"""Box conversions and GIoU: small pure functions, the one place a box changes format.

The format is in the name: ``xyxy`` (corners), ``xywh`` (top-left corner and size: COCO),
``cxcywh`` (centre and size: the detector's normalized output). Tensor functions take ``(..., 4)``
and are thin over ``torchvision.ops``; only what torchvision lacks is written here (``box_area``
and the matcher's fused L1 + GIoU cost). Call torchvision directly for what it already names well
(``box_iou``, ``generalized_box_iou``, ``batched_nms``, ``remove_small_boxes``).

Two conversions work on other containers, with torchvision's arithmetic (the same floats out):
``box_xywh_to_xyxy_list`` on plain lists, for the source readers in the shard stage, where
importing torch would cost the driver and every Ray worker seconds; ``box_xyxy_to_cxcywh_array``
on numpy, for the loader, which converts a handful of boxes per sample in a DataLoader worker,
where numpy takes ~10 us and a torch call ~50 us. torch itself loads on the first tensor call,
not on import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ovdet.fileio import is_number

if TYPE_CHECKING:
    from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    from torchvision.ops import box_convert

    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def box_xyxy_to_cxcywh_array(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N, 4) cxcywh, numpy (see the module docstring), same dtype."""
    x1, y1, x2, y2 = boxes.T
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1)


def box_cxcywh_to_xyxy_array(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) cxcywh -> (N, 4) xyxy, numpy: the inverse of ``box_xyxy_to_cxcywh_array``
    (the torch one would load torchvision into every DataLoader worker for a handful of boxes)."""
    cx, cy, w, h = boxes.T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) xywh (COCO)."""
    from torchvision.ops import box_convert

    return box_convert(boxes, in_fmt="xyxy", out_fmt="xywh")


def box_xywh_to_xyxy_list(box: Any) -> Any:
    """One COCO ``[x, y, w, h]`` list -> ``[x, y, x + w, y + h]``, in plain Python floats (see the
    module docstring), computed as torchvision's ``box_convert`` does. Anything else (a malformed
    box from an annotation file) is returned unchanged for the caller's validation to reject."""
    if isinstance(box, list | tuple) and len(box) == 4 and all(is_number(v) for v in box):
        x, y, w, h = box
        return [x, y, x + w, y + h]
    return box


def clip_boxes_xyxy(boxes: Tensor, width: float, height: float) -> Tensor:
    """(..., 4) xyxy clamped to the image ``[0, width] x [0, height]``."""
    from torchvision.ops import clip_boxes_to_image

    return clip_boxes_to_image(boxes, (height, width))


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) area. torchvision's ``box_area`` takes only [N, 4]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[..., N, 4] xyxy, [..., M, 4] xyxy -> [..., N, M] IoU; leading dims broadcast ([N, 4] with
    [B, M, 4] gives [B, N, M]). A pair of empty boxes has IoU 0, not NaN. Works on coordinate planes
    (..., n, m), not on (..., n, m, 2) corner pairs: twice as fast on the CPU."""
    import torch

    x1a, y1a, x2a, y2a = (c[..., :, None] for c in boxes1.unbind(-1))  # (..., n, 1) each
    x1b, y1b, x2b, y2b = (c[..., None, :] for c in boxes2.unbind(-1))  # (..., 1, m) each
    inter_w = (torch.min(x2a, x2b) - torch.max(x1a, x1b)).clamp(min=0)  # (..., n, m)
    inter = inter_w * (torch.min(y2a, y2b) - torch.max(y1a, y1b)).clamp(min=0)  # (..., n, m)
    union = (x2a - x1a) * (y2a - y1a) + (x2b - x1b) * (y2b - y1b) - inter  # (..., n, m)
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def cxcywh_l1_and_giou(pred_boxes: Tensor, target_boxes: Tensor) -> tuple[Tensor, Tensor]:
    """L1 distance and GIoU [N, Q] between cxcywh boxes given coordinate first: pred_boxes
    [4, 1 or N, Q], target_boxes [4, N, 1].

    Both come from the same per-axis differences, so they share them. On one axis, with c the
    centre offset, d the half-size difference and s the sum of the half-sizes, the corners differ
    by c - d and c + d, so ``min(a, b) = (a + b - |a - b|) / 2`` and ``|c - d| + |c + d| =
    2 max(|c|, |d|)`` make the intersection side ``max(s - max(|c|, |d|), 0)`` and the enclosing
    side ``s + max(|c|, |d|)``; the axis adds ``|c| + 2 |d|`` to the L1 distance (cxcywh).
    """
    import torch

    pred_half, target_half = pred_boxes[2:] / 2, target_boxes[2:] / 2  # (2, 1|n, q), (2, n, 1)
    centre_offset = (target_boxes[:2] - pred_boxes[:2]).abs_()  # (2, n, q)
    half_offset = (target_half - pred_half).abs_()  # (2, n, q)
    l1 = (centre_offset[0] + centre_offset[1]).add_(half_offset[0] + half_offset[1], alpha=2)  # (n, q)
    half_sum = target_half + pred_half  # (2, n, q)
    reach = torch.maximum(centre_offset, half_offset)  # (2, n, q)
    inter_side = (half_sum - reach).clamp_(min=0)  # (2, n, q)
    hull_side = half_sum.add_(reach)  # (2, n, q)
    inter = inter_side[0].mul_(inter_side[1])  # (n, q)
    hull = hull_side[0].mul_(hull_side[1])  # (n, q)
    union = (target_boxes[2] * target_boxes[3] + pred_boxes[2] * pred_boxes[3]).sub_(inter)  # (n, q)
    giou = inter.div_(union).add_(union.div_(hull)).sub_(1)  # iou - (hull - union) / hull
    return l1, giou


def grid_centers(height: int, width: int) -> Tensor:
    """``[H*W, 2]`` normalized (x, y) centres of the cells of an ``H x W`` grid, row-major: the
    region tokens' centres (box head bias, assigners' priors, DFL's distances)."""
    import torch

    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([(xs + 0.5) / width, (ys + 0.5) / height], dim=-1).reshape(-1, 2)


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """(..., 4) xyxy, (..., 4) xyxy -> (...) IoU of each pair (torchvision has only the [N, M] matrix)."""
    import torch

    inter_wh = (torch.min(boxes1[..., 2:], boxes2[..., 2:]) - torch.max(boxes1[..., :2], boxes2[..., :2])).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    return inter / (box_area(boxes1) + box_area(boxes2) - inter + eps)
