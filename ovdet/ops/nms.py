"""Post-processing NMS variants, each selectable by name: ``apply_nms(boxes, scores, classes, method)``.

Every method except ``"agnostic"`` is class-wise: boxes of different classes never suppress or decay
each other. Boxes are xyxy pixels; everything is computed in float32 whatever the input dtype.

- ``"none"``: every detection, sorted by score.
- ``"class"`` / ``"agnostic"``: greedy hard NMS, ``torchvision.ops.batched_nms`` / ``nms``
  (suppresses IoU > ``iou_threshold``, torchvision's convention).
- ``"soft-linear"`` / ``"soft-gaussian"``: Soft-NMS, Bodla et al., "Soft-NMS -- Improving Object
  Detection With One Line of Code", ICCV 2017. The highest-scored alive box M is kept and every other
  box b of its class decays: linear ``s *= 1 - IoU(M, b)`` where ``IoU >= iou_threshold``; gaussian
  ``s *= exp(-IoU^2 / sigma)``. A box is dropped (and never becomes M) once its score is below
  ``score_threshold``, as in the paper's reference code; unlike that code, boxes already below it on
  input are dropped too, IoU has no +1 pixel, and a box with weight 0 (identical to M under the
  linear kernel) is dropped whatever the threshold.
- ``"diou"``: DIoU-NMS, Zheng et al., "Distance-IoU Loss: Faster and Better Learning for Bounding
  Box Regression", AAAI 2020: hard NMS that suppresses b when ``IoU(M, b) - R >= iou_threshold``,
  R = squared centre distance / squared diagonal of the smallest enclosing box.
- ``"matrix"``: Matrix NMS, Wang et al., "SOLOv2: Dynamic and Fast Instance Segmentation",
  NeurIPS 2020, on box IoU instead of mask IoU, gaussian kernel ``f(x) = exp(-sigma * x^2)`` as in
  SOLOv2's code. Box j's decay is ``min(1, min_i f(iou_ij) / f(c_i))`` over the boxes i of its class
  scored above it, with ``c_i`` the largest IoU of i with a box of its class scored above i. Kept:
  decayed score >= ``score_threshold``. Note the kernel multiplies by sigma where Soft-NMS divides:
  SOLOv2's default is ``sigma=2.0``, which callers must pass (``apply_nms``'s default 0.5 is
  Soft-NMS's). Computed over the same-class pairs only (sum of n_c^2 / 2 of them, not [N, N]).
- ``"weighted"``: hard NMS per class (``batched_nms``), then box voting as in Gidaris & Komodakis,
  "Object detection via a multi-region & semantic segmentation-aware CNN model", ICCV 2015 (and
  Detectron's ``box_voting``, method "ID"): each kept box becomes the score-weighted average of all
  boxes of its class (suppressed or not, itself included) with IoU >= ``iou_threshold`` with it; its
  score stays its own. Not mmdet's ``score_voting`` (PAA), which weights by a gaussian of 1 - IoU.

``score_threshold`` applies to the score-decaying methods (soft-*, matrix) only.
The greedy methods (soft-*, diou) run all classes at once: each round, every class keeps its
highest-scored alive box and decays the rest of its class, so the loop runs max-boxes-per-class
times over [N] tensors, with no host synchronisation inside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from ovdet.ops.boxes import box_area

METHODS = ("none", "class", "agnostic", "soft-linear", "soft-gaussian", "diou", "matrix", "weighted")

# (top boxes [N, 4], boxes [N, 4]) -> [N] multiplicative weight of each box's score; 0 = suppressed.
DecayFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class NmsResult:
    """The kept detections, ordered by ``scores`` descending (ties: lower input index first).

    indices: int64 [K] indices into the input.
    scores: [K] their (possibly decayed) scores, in the input scores' dtype.
    boxes: [K, 4] xyxy in the input boxes' dtype (float32 for integer boxes): the voted boxes for
        ``"weighted"``, else the input boxes.
    """

    indices: Tensor
    scores: Tensor
    boxes: Tensor


def apply_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    method: str,
    iou_threshold: float = 0.5,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
) -> NmsResult:
    """boxes [N, 4] xyxy, scores [N], classes int64 [N] -> the detections ``method`` keeps.

    ``method`` is one of ``METHODS`` (see the module docstring for each definition). ``sigma`` is
    the gaussian width of ``"soft-gaussian"`` (``exp(-iou^2 / sigma)``) and of ``"matrix"``
    (``exp(-sigma * iou^2)``, SOLOv2 uses 2.0). Works on any device; float16 input is computed in float32.
    """
    if method not in METHODS:
        raise ValueError(f"unknown NMS method {method!r}; expected one of {', '.join(METHODS)}")
    check_detections(boxes, scores, classes)
    boxes32, scores32 = boxes.float(), scores.float()
    if method == "weighted":
        indices = batched_nms(boxes32, scores32, classes, iou_threshold)
        kept_boxes = vote_boxes(boxes32, scores32, classes, indices, iou_threshold)
        return ordered_result(indices, scores32[indices], kept_boxes, scores.dtype, boxes.dtype)
    indices, kept_scores = kept_by_method(
        boxes32, scores32, classes, method, iou_threshold, sigma, score_threshold
    )
    return ordered_result(indices, kept_scores, boxes32[indices], scores.dtype, boxes.dtype)


def check_detections(boxes: Tensor, scores: Tensor, classes: Tensor) -> None:
    """Raise ValueError unless boxes is [N, 4] and scores, classes are [N]."""
    n = boxes.shape[0] if boxes.dim() == 2 else -1
    if boxes.shape != (n, 4) or scores.shape != (n,) or classes.shape != (n,):
        raise ValueError(
            f"expected boxes [N, 4], scores [N], classes [N]; got {tuple(boxes.shape)}, "
            f"{tuple(scores.shape)}, {tuple(classes.shape)}"
        )


def kept_by_method(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    method: str,
    iou_threshold: float,
    sigma: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    """float32 boxes [N, 4], scores [N], classes [N] -> (kept indices [K], their scores [K]), unordered.

    For every method of ``METHODS`` but ``"weighted"``, which also changes the boxes.
    """
    if boxes.shape[0] == 0 or method == "none":
        return torch.arange(boxes.shape[0], device=boxes.device), scores
    if method == "class":
        indices = batched_nms(boxes, scores, classes, iou_threshold)
        return indices, scores[indices]
    if method == "agnostic":
        indices = nms(boxes, scores, iou_threshold)
        return indices, scores[indices]
    if method == "diou":
        indices = diou_nms(boxes, scores, classes, iou_threshold)
        return indices, scores[indices]
    if method == "matrix":
        return matrix_nms(boxes, scores, classes, sigma, score_threshold)
    kernel = method.removeprefix("soft-")
    return soft_nms(boxes, scores, classes, kernel, iou_threshold, sigma, score_threshold)


def ordered_result(
    indices: Tensor, scores: Tensor, boxes: Tensor, scores_dtype: torch.dtype, boxes_dtype: torch.dtype
) -> NmsResult:
    """Kept indices [K], float32 scores [K], boxes [K, 4] in any order -> NmsResult sorted by score
    descending, ties by index ascending, scores and boxes cast back to the input's float dtypes."""
    by_index = torch.argsort(indices)
    indices, scores, boxes = indices[by_index], scores[by_index], boxes[by_index]
    order = torch.sort(scores, descending=True, stable=True).indices
    return NmsResult(
        indices[order].long(),
        scores[order].to(float_dtype(scores_dtype)),
        boxes[order].to(float_dtype(boxes_dtype)),
    )


def float_dtype(dtype: torch.dtype) -> torch.dtype:
    """The input's dtype if it is a float type, else float32 (integer pixel boxes)."""
    return dtype if dtype.is_floating_point else torch.float32


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """(..., 4) xyxy, (..., 4) xyxy -> (...) IoU of each box with its partner (torchvision's
    ``box_iou`` gives all pairs [N, M]; this is its diagonal without the [N, N] matrix)."""
    inter_wh = (
        torch.min(boxes1[..., 2:], boxes2[..., 2:]) - torch.max(boxes1[..., :2], boxes2[..., :2])
    ).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    return inter / (box_area(boxes1) + box_area(boxes2) - inter)


def paired_distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """(..., 4) xyxy, (..., 4) xyxy -> (...) DIoU = IoU - squared centre distance / squared diagonal
    of the enclosing box, per pair (the diagonal of ``torchvision.ops.distance_box_iou``, same eps)."""
    centre_gap = (boxes1[..., :2] + boxes1[..., 2:] - boxes2[..., :2] - boxes2[..., 2:]) / 2  # (..., 2)
    hull_wh = torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(boxes1[..., :2], boxes2[..., :2])
    distance_ratio = centre_gap.pow(2).sum(-1) / (hull_wh.pow(2).sum(-1) + eps)
    return paired_box_iou(boxes1, boxes2) - distance_ratio


def linear_soft_weight(top_boxes: Tensor, boxes: Tensor, iou_threshold: float) -> Tensor:
    """[N, 4], [N, 4] -> [N] Soft-NMS linear weight: 1 - IoU where IoU >= iou_threshold, else 1."""
    iou = paired_box_iou(top_boxes, boxes)
    return torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))


def gaussian_soft_weight(top_boxes: Tensor, boxes: Tensor, sigma: float) -> Tensor:
    """[N, 4], [N, 4] -> [N] Soft-NMS gaussian weight exp(-IoU^2 / sigma)."""
    return torch.exp(-paired_box_iou(top_boxes, boxes).pow(2) / sigma)


def diou_hard_weight(top_boxes: Tensor, boxes: Tensor, iou_threshold: float) -> Tensor:
    """[N, 4], [N, 4] -> [N] DIoU-NMS weight: 0 (suppressed) where DIoU >= iou_threshold, else 1."""
    return (paired_distance_box_iou(top_boxes, boxes) < iou_threshold).float()


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    kernel: str,
    iou_threshold: float,
    sigma: float,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    """Class-wise Soft-NMS. boxes [N, 4], scores [N], classes [N], kernel "linear" or "gaussian"
    -> (kept indices [K], decayed scores [K]), unordered."""
    if kernel == "linear":
        decay = partial(linear_soft_weight, iou_threshold=iou_threshold)
    elif kernel == "gaussian":
        decay = partial(gaussian_soft_weight, sigma=sigma)
    else:
        raise ValueError(f"unknown Soft-NMS kernel {kernel!r}; expected 'linear' or 'gaussian'")
    is_kept, decayed = greedy_by_class(boxes, scores, classes, decay, score_threshold)
    indices = is_kept.nonzero().squeeze(1)
    return indices, decayed[indices]


def diou_nms(boxes: Tensor, scores: Tensor, classes: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise DIoU-NMS. boxes [N, 4], scores [N], classes [N] -> kept indices [K], unordered."""
    decay = partial(diou_hard_weight, iou_threshold=iou_threshold)
    is_kept, _ = greedy_by_class(boxes, scores, classes, decay, score_threshold=-math.inf)
    return is_kept.nonzero().squeeze(1)


def greedy_by_class(
    boxes: Tensor, scores: Tensor, classes: Tensor, decay: DecayFn, score_threshold: float
) -> tuple[Tensor, Tensor]:
    """Greedy (soft) NMS of every class at once. boxes [N, 4], scores [N], classes [N] ->
    (is_kept bool [N], scores [N] after decay: a kept box's score is its score when it was taken).

    Each round, every class takes its highest-scored alive box M as kept; the other alive boxes b of
    the class get ``s_b *= decay(M, b)`` and die when the weight is 0 or s_b < score_threshold.
    """
    group, counts = torch.unique(classes, return_inverse=True, return_counts=True)[1:]
    index = torch.arange(scores.numel(), device=scores.device)
    scores = scores.clone()
    is_alive = scores >= score_threshold
    is_kept = torch.zeros_like(is_alive)
    for _ in range(int(counts.max())):
        top = top_alive_per_class(scores, group, counts.numel(), is_alive)  # (n,)
        is_top = top == index
        is_kept |= is_top
        is_alive &= ~is_top
        weight = decay(boxes[top.clamp(max=index.numel() - 1)], boxes)  # (n,), used only where alive
        scores = torch.where(is_alive, scores * weight, scores)
        is_alive &= (weight > 0) & (scores >= score_threshold)
    return is_kept, scores


def top_alive_per_class(scores: Tensor, group: Tensor, num_groups: int, is_alive: Tensor) -> Tensor:
    """scores [N], group [N] class ids in [0, num_groups), is_alive bool [N] -> [N]: for each box, the
    index of the highest-scored alive box of its class (lowest index on ties), N if none is alive."""
    n = scores.numel()
    alive_scores = torch.where(is_alive, scores, torch.full_like(scores, -math.inf))
    best = torch.full((num_groups,), -math.inf, device=scores.device)
    best = best.scatter_reduce(0, group, alive_scores, "amax")  # (c,)
    index = torch.arange(n, device=scores.device)
    is_best = is_alive & (alive_scores == best[group])
    candidates = torch.where(is_best, index, torch.full_like(index, n))
    first = torch.full((num_groups,), n, device=scores.device).scatter_reduce(0, group, candidates, "amin")
    return first[group]


def matrix_nms(
    boxes: Tensor, scores: Tensor, classes: Tensor, sigma: float, score_threshold: float
) -> tuple[Tensor, Tensor]:
    """Class-wise Matrix NMS (SOLOv2, gaussian kernel exp(-sigma * iou^2)) on boxes, fully parallel.
    boxes [N, 4], scores [N], classes [N] -> (indices [K] with decayed score >= score_threshold,
    decayed scores [K]), unordered. Work and memory grow with the same-class pairs, sum of n_c^2 / 2."""
    n = scores.numel()
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(classes[order], stable=True).indices]  # (n,) by class, then by score
    boxes, scores = boxes[order], scores[order]
    start, _ = class_blocks(classes[order])
    lower, upper = expand_ranges(start, torch.arange(n, device=start.device) - start)  # (p,) i above j
    iou = paired_box_iou(boxes[upper], boxes[lower])  # (p,) iou_ij
    zeros = torch.zeros_like(scores)
    compensate = zeros.scatter_reduce(0, lower, iou, "amax")  # (n,) c_i, 0 for the top of a class
    # f(iou_ij) / f(c_i) in log space, so a large sigma cannot underflow to 0 / 0. Reducing into zeros
    # caps the decay at 1, which SOLOv2's code gets from the rows of its [N, N] matrix outside the pairs.
    log_ratio = sigma * (compensate[upper].pow(2) - iou.pow(2))  # (p,)
    decayed = scores * torch.exp(zeros.scatter_reduce(0, lower, log_ratio, "amin"))  # (n,)
    is_kept = decayed >= score_threshold
    return order[is_kept], decayed[is_kept]


def vote_boxes(boxes: Tensor, scores: Tensor, classes: Tensor, keep: Tensor, iou_threshold: float) -> Tensor:
    """Box voting. boxes [N, 4], scores [N], classes [N], keep [K] -> [K, 4]: each kept box replaced by
    the score-weighted mean of the boxes of its class with IoU >= iou_threshold with it (itself
    included); unchanged when those weights sum to 0."""
    order = torch.sort(classes, stable=True).indices  # (n,) grouped by class
    start, size = class_blocks(classes[order])
    position = torch.argsort(order)  # (n,) where each box sits in `order`
    slot, member = expand_ranges(start[position[keep]], size[position[keep]])  # (p,) kept box, its class
    voter = order[member]  # (p,)
    is_close = paired_box_iou(boxes[keep][slot], boxes[voter]) >= iou_threshold
    weight = scores[voter] * is_close  # (p,)
    total = torch.zeros_like(keep, dtype=boxes.dtype).index_add(0, slot, weight)  # (k,)
    summed = torch.zeros_like(boxes[keep]).index_add(0, slot, weight[:, None] * boxes[voter])  # (k, 4)
    return torch.where(total[:, None] > 0, summed / total[:, None], boxes[keep])


def class_blocks(sorted_classes: Tensor) -> tuple[Tensor, Tensor]:
    """sorted_classes [N], equal classes contiguous -> (start [N], size [N]): for each position, where
    the block of its class starts and how many boxes the block holds."""
    counts = torch.unique_consecutive(sorted_classes, return_counts=True)[1]
    return (counts.cumsum(0) - counts).repeat_interleave(counts), counts.repeat_interleave(counts)


def expand_ranges(first: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
    """first [M], length [M] -> (owner [P], value [P]), P = sum(length): for each m in turn, the
    values first[m], ..., first[m] + length[m] - 1, each with owner m."""
    owner = torch.repeat_interleave(torch.arange(first.numel(), device=first.device), length)
    offset = torch.arange(owner.numel(), device=first.device) - (length.cumsum(0) - length)[owner]
    return owner, first[owner] + offset
