"""Box conversions and GIoU: small pure functions, the one place a box changes format.

The format is in the name: ``xyxy`` (corners), ``xywh`` (top-left corner and size: COCO),
``cxcywh`` (centre and size: the detector's normalized output). Tensor functions take ``(..., 4)``
and are thin over ``torchvision.ops``; only what torchvision lacks is written here (``box_area``
and GIoU over leading dims). Call torchvision directly for what it already names well
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


def batched_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[B, N, 4] xyxy, [B, M, 4] xyxy -> [B, N, M] GIoU between the boxes of the same batch item.

    Any number of leading dims works ([N, 4], [M, 4] gives torchvision's [N, M]). Boxes must have
    positive area; degenerate pairs give NaN as in torchvision.
    """
    import torch

    pairs1, pairs2 = boxes1[..., :, None, :], boxes2[..., None, :, :]  # (..., n, 1, 4), (..., 1, m, 4)
    inter_lt = torch.max(pairs1[..., :2], pairs2[..., :2])  # (..., n, m, 2)
    inter_rb = torch.min(pairs1[..., 2:], pairs2[..., 2:])  # (..., n, m, 2)
    inter_wh = (inter_rb - inter_lt).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]  # (..., n, m)
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter  # (..., n, m)
    hull_wh = torch.max(pairs1[..., 2:], pairs2[..., 2:]) - torch.min(pairs1[..., :2], pairs2[..., :2])
    hull = hull_wh[..., 0] * hull_wh[..., 1]  # (..., n, m)
    return inter / union - (hull - union) / hull


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
