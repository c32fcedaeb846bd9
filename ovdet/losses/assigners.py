"""One-to-many label assigners: which queries (region tokens with a prior box) learn which target.

Every assigner is called as ``assigner(outputs, targets, priors) -> list[Assignment]`` (one per
image, on the device of ``pred_boxes``). Targets name their class by an index into the image's own
texts, so "the class score of a box" is the score of its own text,
``sigmoid(pred_logits[b, :, labels[j]])``. Costs are computed in float32 whatever the input dtype,
batched over images with the targets padded to the largest count (a mask keeps padding out); only
splitting the result into per-image index lists runs per image. Ranking ties (equal distances,
alignments or costs) go to the lower query index; a query claimed by several targets goes to the
best one *among those that claimed it*, ties to the lower target index, so the result does not
depend on target order. IoU is the plain IoU everywhere; "inside a box" means strictly inside.

- ``max_iou``: RetinaNet / Faster R-CNN, mmdetection's ``MaxIoUAssigner`` (IoU of prior boxes;
  positive >= pos_iou, negative < neg_iou, ignored between; each target's best priors forced
  positive, ``gt_max_assign_all=True``, ``min_pos_iou=0``). Deviations: a prior that is the best of
  several targets goes to the one it overlaps most (mmdetection: the last in target order); a
  target that overlaps no prior forces nothing (mmdetection's ``>= min_pos_iou = 0`` would force
  every prior with IoU 0 onto it).
- ``atss``: Zhang et al. 2020, mmdetection's ``ATSSAssigner`` (top-k priors per level by centre
  distance, threshold mean + unbiased std of their prior IoUs, centre strictly inside the target,
  a prior claimed by several targets to the max-IoU one). Deviations: mmdetection's 0.01 (pixel)
  margin for "inside" is 0 here (coordinates are normalized); a single candidate is its own
  threshold (``std`` would be NaN).
- ``tal``: TOOD / YOLOv8 / YOLO-World, ultralytics' ``TaskAlignedAssigner`` (alignment
  ``t = s^alpha * u^beta``, candidates centred inside the target, top-k by t, weights
  ``t * max_u / (max_t + 1e-9)`` over the target's final positives). Deviations: u is the plain
  IoU of the predicted box (TOOD's definition and mmdetection's; ultralytics uses CIoU clamped at
  0): u and the soft target's max_u then stay overlaps in [0, 1], CIoU's centre and aspect terms
  belong to the box loss, and one IoU serves all four assigners. Candidates with t = 0 (predicted
  box disjoint from the target) are never positive (ultralytics' top-k picks them arbitrarily
  among ties at 0, with weight 0, which every ultralytics loss treats as a negative). A query
  claimed by several targets keeps the max-IoU one among its claimants (as mmdetection;
  ultralytics takes the max-IoU target of all, which may be one that did not select it).
- ``simota``: YOLOX (its original release, which mmdetection's ``SimOTAAssigner`` mirrors).
  Candidates are the image's "fg mask": priors centred in any target box or within
  ``center_radius`` strides of any target centre; cost = ``cls_weight * -log(s) + iou_weight *
  -log(IoU + 1e-8)``, plus YOLOX's 1e5 for (prior, target) pairs not both in box and in centre
  region; dynamic k = max(1, int(sum of the top-10 candidate IoUs)); each target takes its k
  cheapest candidates; a query taken by several targets goes to its cheapest claimant.
  Deviations: the class cost is the BCE against 1 at the target's text only (YOLOX sums a one-hot
  BCE over all classes, which adds ``-log(1 - p)`` of every other class: here the texts are
  per-image prompts, some padded, and that sum would favour queries that score low on other
  prompts); the 1e5 penalty becomes 1e6 in a float64 ranking key, since in float32 adding it rounds
  the penalized costs to 1/128 and ties them (the order is that of YOLOX's exact sum); YOLOX
  resolves a conflict over all targets, here over the claimants only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ovdet.ops.boxes import batched_box_iou, box_cxcywh_to_xyxy

ONE_TO_MANY = ("max_iou", "atss", "tal", "simota")

# Padding for absent targets: a valid box keeps the padded IoU columns finite; they are masked out.
PAD_BOX_CXCYWH = 0.5


@dataclass
class Priors:
    """The detector's Q priors, shared by every image of the batch (normalized canvas coordinates,
    the canvas is square)."""

    boxes: Tensor  # [Q, 4] cxcywh prior boxes (centre = token centre)
    strides: Tensor  # [Q] the token grid's cell size (normalized) of each prior's level
    levels: Tensor  # [Q] int64 level index 0..L-1 (a single-level grid is all zeros)


@dataclass
class Assignment:
    """One image's assignment; every tensor is on the device of ``outputs["pred_boxes"]``."""

    pred_idx: Tensor  # int64 [P] positive queries, ascending, unique
    tgt_idx: Tensor  # int64 [P] the target each positive is assigned to
    # float32 [P] the soft target of each positive's class score: 1.0 for hard assigners, TAL's
    # normalized alignment
    weights: Tensor
    # bool [Q] queries left out of the classification loss (max_iou's band between thresholds); never positive
    ignored: Tensor


@dataclass
class AssignmentProblem:
    """A batch in the form every assigner reads: float32, on one device, targets padded to Nmax."""

    target_logits: Tensor  # [B, Q, Nmax] each query's logit at each target's text
    pred_boxes: Tensor  # [B, Q, 4] xyxy
    prior_boxes: Tensor  # [Q, 4] xyxy
    prior_centers: Tensor  # [Q, 2]
    strides: Tensor  # [Q]
    levels: Tensor  # [Q] int64
    target_boxes: Tensor  # [B, Nmax, 4] xyxy
    target_centers: Tensor  # [B, Nmax, 2]
    is_target: Tensor  # [B, Nmax] bool, False for padding


class LabelAssigner(nn.Module):
    """The shared call of the one-to-many assigners: prepare the batch, ``assign``, split per image."""

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], priors: Priors
    ) -> list[Assignment]:
        """Assign the queries of each image to its targets (or to background, or to nothing).

        Args:
            outputs: ``"pred_logits"`` [B, Q, T] region-text logits; ``"pred_boxes"`` [B, Q, 4]
                normalized cxcywh; optional ``"text_mask"`` [B, T] bool, True for real texts, used
                only to check that labels point at real texts.
            targets: B dicts with ``"labels"`` int64 [N_b] (indices into that image's T texts) and
                ``"boxes"`` [N_b, 4] normalized cxcywh. N_b may be 0.
            priors: the Q priors of the queries (``Priors``), shared by the batch.

        Returns:
            B ``Assignment``, on the device of ``pred_boxes``: positives ``pred_idx`` (ascending) with
            their ``tgt_idx`` and ``weights`` [P], and ``ignored`` [Q].
        """
        problem = prepare_problem(outputs, targets, priors)
        batch, num_queries = problem.pred_boxes.shape[:2]
        if problem.is_target.shape[1] == 0:
            nothing = torch.full((batch, num_queries), -1, device=problem.pred_boxes.device)
            return split_per_image(*hard_assignment(nothing))
        assigned, weights, ignored = self.assign(problem)
        return split_per_image(assigned, weights, ignored)

    def assign(self, problem: AssignmentProblem) -> tuple[Tensor, Tensor, Tensor]:
        """[B, Q] int64 target of each query (-1: none), [B, Q] float32 weights, [B, Q] bool ignored."""
        raise NotImplementedError


class MaxIoUAssigner(LabelAssigner):
    """IoU thresholds on the prior boxes (RetinaNet, Faster R-CNN; mmdetection's ``MaxIoUAssigner``)."""

    def __init__(
        self,
        pos_iou: float = 0.5,  # RetinaNet (RPN: 0.7)
        neg_iou: float = 0.4,  # RetinaNet (RPN: 0.3)
        min_pos_iou: float = 0.0,  # mmdetection's RetinaNet config
        match_low_quality: bool = True,
    ):
        super().__init__()
        if not 0 <= neg_iou <= pos_iou:
            raise ValueError(f"MaxIoUAssigner: need 0 <= neg_iou <= pos_iou, got {neg_iou}, {pos_iou}")
        self.pos_iou = pos_iou
        self.neg_iou = neg_iou
        self.min_pos_iou = min_pos_iou
        self.match_low_quality = match_low_quality

    def assign(self, problem: AssignmentProblem) -> tuple[Tensor, Tensor, Tensor]:
        """Positive at IoU >= pos_iou with the max-IoU target; each target's best priors forced positive."""
        iou = batched_box_iou(problem.prior_boxes, problem.target_boxes)  # (bs, q, mo)
        iou = iou.masked_fill(~problem.is_target[:, None, :], -1.0)
        max_iou, best_target = iou.max(dim=2)  # (bs, q)
        assigned = torch.where(max_iou >= self.pos_iou, best_target, -1)
        if self.match_low_quality:
            forced = self.force_best_priors(iou)  # (bs, q)
            assigned = torch.where(forced >= 0, forced, assigned)
        ignored = (assigned < 0) & (max_iou >= self.neg_iou)
        return assigned, torch.ones_like(max_iou), ignored

    def force_best_priors(self, iou: Tensor) -> Tensor:
        """iou [B, Q, Nmax] (-1 for padding) -> [B, Q]: the target whose best prior each query is, or -1.

        All priors tied at a target's best IoU are forced (``gt_max_assign_all``); a prior that is the
        best of several targets goes to the one it overlaps most.
        """
        best = iou.amax(dim=1, keepdim=True)  # (bs, 1, mo)
        claims = (iou == best) & (best >= self.min_pos_iou) & (best > 0)  # (bs, q, mo)
        return keep_best_claim(claims, iou)


class ATSSAssigner(LabelAssigner):
    """Adaptive training sample selection (Zhang et al. 2020; mmdetection's ``ATSSAssigner``)."""

    def __init__(self, topk: int = 9):  # ATSS paper: 9 candidates per level
        super().__init__()
        self.topk = topk

    def assign(self, problem: AssignmentProblem) -> tuple[Tensor, Tensor, Tensor]:
        """Positive if the prior IoU >= mean + std of the target's candidates' and centred inside it."""
        iou = batched_box_iou(problem.prior_boxes, problem.target_boxes)  # (bs, q, mo)
        candidates = self.nearest_per_level(problem)  # (bs, q, mo)
        threshold = mean_plus_std(iou, candidates)  # (bs, 1, mo)
        inside = points_inside_boxes(problem.prior_centers, problem.target_boxes)  # (bs, q, mo)
        claims = candidates & (iou >= threshold) & inside & problem.is_target[:, None, :]
        assigned = keep_best_claim(claims, iou)  # (bs, q)
        return hard_assignment(assigned)

    def nearest_per_level(self, problem: AssignmentProblem) -> Tensor:
        """[B, Q, Nmax] bool: on each level, the ``topk`` priors whose centres are nearest each target's."""
        dx, dy = center_offsets(problem)  # (bs, q, mo) each
        distance = dx * dx + dy * dy  # squared: the same order
        candidates = torch.zeros_like(distance, dtype=torch.bool)
        for level in problem.levels.unique().tolist():
            in_level = problem.levels == level  # (q,)
            level_distance = distance.masked_fill(~in_level[None, :, None], float("inf"))
            candidates |= first_k_along_queries(level_distance, min(self.topk, int(in_level.sum())))
        return candidates


class TaskAlignedAssigner(LabelAssigner):
    """Task-aligned assignment (TOOD; YOLOv8 / YOLO-World, ultralytics' ``TaskAlignedAssigner``)."""

    def __init__(
        self,
        topk: int = 10,  # YOLOv8 (TOOD: 13)
        alpha: float = 0.5,  # YOLOv8 (TOOD: 1.0)
        beta: float = 6.0,  # TOOD, YOLOv8
        eps: float = 1e-9,  # ultralytics
    ):
        super().__init__()
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps

    def assign(self, problem: AssignmentProblem) -> tuple[Tensor, Tensor, Tensor]:
        """Each target's top-k candidates by ``t = s^alpha * u^beta``; weights = normalized t."""
        scores = problem.target_logits.sigmoid()  # (bs, q, mo)
        iou = batched_box_iou(problem.pred_boxes, problem.target_boxes)  # (bs, q, mo)
        is_candidate = points_inside_boxes(problem.prior_centers, problem.target_boxes)
        is_candidate &= problem.is_target[:, None, :]  # (bs, q, mo)
        alignment = scores.pow(self.alpha) * iou.pow(self.beta) * is_candidate  # (bs, q, mo)
        is_top = first_k_along_queries(alignment.masked_fill(~is_candidate, -1.0), self.topk, largest=True)
        claims = is_top & is_candidate & (alignment > 0)
        assigned = keep_best_claim(claims, iou)  # (bs, q)
        ignored = torch.zeros_like(assigned, dtype=torch.bool)
        return assigned, self.normalized_alignment(alignment, iou, assigned), ignored

    def normalized_alignment(self, alignment: Tensor, iou: Tensor, assigned: Tensor) -> Tensor:
        """alignment, iou [B, Q, Nmax], assigned [B, Q] -> [B, Q] ``t * max_u / (max_t + eps)``, the
        maxima over each target's final positives (ultralytics' normalization); 0 off positives."""
        owner = assigned.clamp(min=0)  # (bs, q)
        is_positive = assigned >= 0  # (bs, q)
        own_alignment = alignment.gather(2, owner[..., None]).squeeze(2) * is_positive  # (bs, q)
        own_iou = iou.gather(2, owner[..., None]).squeeze(2) * is_positive  # (bs, q)
        # Off positives both are 0: scattered into target 0 they leave its maxima (>= 0) unchanged.
        max_alignment = torch.zeros_like(alignment[:, 0]).scatter_reduce(1, owner, own_alignment, "amax")
        max_iou = torch.zeros_like(iou[:, 0]).scatter_reduce(1, owner, own_iou, "amax")  # (bs, mo)
        return own_alignment * max_iou.gather(1, owner) / (max_alignment.gather(1, owner) + self.eps)


class SimOTAAssigner(LabelAssigner):
    """SimOTA's dynamic top-k (YOLOX; mmdetection's ``SimOTAAssigner``)."""

    def __init__(
        self,
        center_radius: float = 2.5,  # YOLOX
        candidate_topk: int = 10,  # YOLOX: IoUs summed for the dynamic k
        iou_weight: float = 3.0,  # YOLOX
        cls_weight: float = 1.0,  # YOLOX
    ):
        super().__init__()
        self.center_radius = center_radius
        self.candidate_topk = candidate_topk
        self.iou_weight = iou_weight
        self.cls_weight = cls_weight

    def assign(self, problem: AssignmentProblem) -> tuple[Tensor, Tensor, Tensor]:
        """Each target takes its dynamic-k cheapest candidates; conflicts go to the cheapest claimant."""
        iou = batched_box_iou(problem.pred_boxes, problem.target_boxes)  # (bs, q, mo)
        in_box, in_center = self.geometry(problem)  # (bs, q, mo) each
        is_valid = (in_box | in_center).any(dim=2, keepdim=True)  # (bs, q, 1): YOLOX's fg mask
        # -log(sigmoid(x)) = softplus(-x): BCE against 1, stable where the score saturates.
        cost = self.cls_weight * F.softplus(-problem.target_logits) - self.iou_weight * torch.log(iou + 1e-8)
        # YOLOX adds 1e5 outside (box and centre), which in float32 rounds those costs to 1/128 and
        # ties them; in float64 with 1e6 the order is YOLOX's exact one (costs stay far below 1e6).
        key = cost.double() + 1e6 * ~(in_box & in_center)  # (bs, q, mo)
        key = key.masked_fill(~is_valid, float("inf"))
        ks = self.dynamic_ks(iou * is_valid)  # (bs, 1, mo)
        claims = first_k_along_queries(key, ks) & is_valid & problem.is_target[:, None, :]
        return hard_assignment(keep_best_claim(claims, -key))

    def geometry(self, problem: AssignmentProblem) -> tuple[Tensor, Tensor]:
        """[B, Q, Nmax] bool each: prior centre strictly inside the target box; strictly within
        ``center_radius`` strides of the target centre on both axes. False for padding."""
        in_box = points_inside_boxes(problem.prior_centers, problem.target_boxes)  # (bs, q, mo)
        dx, dy = center_offsets(problem)  # (bs, q, mo) each
        radius = self.center_radius * problem.strides[None, :, None]  # (1, q, 1)
        in_center = (dx.abs() < radius) & (dy.abs() < radius)  # (bs, q, mo)
        is_target = problem.is_target[:, None, :]
        return in_box & is_target, in_center & is_target

    def dynamic_ks(self, candidate_iou: Tensor) -> Tensor:
        """[B, Q, Nmax] IoUs (0 off the candidates) -> [B, 1, Nmax] int64 ``max(1, int(sum of top-10))``."""
        num = min(self.candidate_topk, candidate_iou.shape[1])
        top = candidate_iou.topk(num, dim=1).values  # (bs, num, mo)
        return top.sum(dim=1, keepdim=True).long().clamp(min=1)


def build_assigner(name: str, **kwargs) -> LabelAssigner:
    """The one-to-many assigner called ``name`` (one of ``ONE_TO_MANY``), built with ``kwargs``."""
    classes = {
        "max_iou": MaxIoUAssigner,
        "atss": ATSSAssigner,
        "tal": TaskAlignedAssigner,
        "simota": SimOTAAssigner,
    }
    if name not in classes:
        raise ValueError(f"unknown assigner {name!r}; the one-to-many assigners are {', '.join(ONE_TO_MANY)}")
    return classes[name](**kwargs)


def prepare_problem(
    outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], priors: Priors
) -> AssignmentProblem:
    """Check the batch, move it to float32 on the predictions' device, pad the targets to Nmax."""
    pred_logits = outputs["pred_logits"].float()  # (bs, q, t)
    pred_boxes = outputs["pred_boxes"].float()  # (bs, q, 4)
    device, (batch, num_queries, num_texts) = pred_boxes.device, pred_logits.shape
    if len(targets) != batch or len(priors.boxes) != num_queries:
        raise ValueError(
            f"assigner: {batch} images and {num_queries} queries in the outputs, but {len(targets)} "
            f"target dicts and {len(priors.boxes)} priors"
        )
    labels = pad_sequence([t["labels"].long().to(device) for t in targets], batch_first=True)  # (bs, mo)
    boxes = pad_sequence(
        [t["boxes"].float().to(device) for t in targets], batch_first=True, padding_value=PAD_BOX_CXCYWH
    )  # (bs, mo, 4)
    sizes = torch.tensor([len(t["labels"]) for t in targets], device=device)
    is_target = torch.arange(labels.shape[1], device=device)[None, :] < sizes[:, None]  # (bs, mo)
    check_labels(labels, is_target, num_texts, outputs.get("text_mask"))
    prior_boxes = priors.boxes.float().to(device)  # (q, 4)
    return AssignmentProblem(
        target_logits=pred_logits.gather(2, labels[:, None, :].expand(-1, num_queries, -1)),  # (bs, q, mo)
        pred_boxes=box_cxcywh_to_xyxy(pred_boxes),
        prior_boxes=box_cxcywh_to_xyxy(prior_boxes),
        prior_centers=prior_boxes[:, :2],
        strides=priors.strides.float().to(device),
        levels=priors.levels.long().to(device),
        target_boxes=box_cxcywh_to_xyxy(boxes),
        target_centers=boxes[..., :2],
        is_target=is_target,
    )


def check_labels(labels: Tensor, is_target: Tensor, num_texts: int, text_mask: Tensor | None) -> None:
    """labels, is_target [B, Nmax]: every real label must index one of the image's real texts."""
    is_bad = is_target & ((labels < 0) | (labels >= num_texts))  # (bs, mo)
    if text_mask is not None and not is_bad.any():
        is_bad = is_target & ~text_mask.bool().to(labels.device).gather(1, labels)
    bad = is_bad.nonzero()
    if len(bad):
        b, i = bad[0].tolist()
        raise ValueError(
            f"assigner: image {b} target {i} has label {labels[b, i].item()}, not one of its {num_texts} "
            "texts or a padded text"
        )


def center_offsets(problem: AssignmentProblem) -> tuple[Tensor, Tensor]:
    """[B, Q, Nmax] x and y offsets of each prior centre from each target centre."""
    px, py = (c[None, :, None] for c in problem.prior_centers.unbind(-1))  # (1, q, 1) each
    tx, ty = (c[:, None, :] for c in problem.target_centers.unbind(-1))  # (bs, 1, mo) each
    return px - tx, py - ty


def points_inside_boxes(points: Tensor, boxes: Tensor) -> Tensor:
    """points [Q, 2], boxes [B, N, 4] xyxy -> [B, Q, N] bool: the point lies strictly inside the box."""
    px, py = (c[None, :, None] for c in points.unbind(-1))  # (1, q, 1) each
    x1, y1, x2, y2 = (c[:, None, :] for c in boxes.unbind(-1))  # (bs, 1, mo) each
    return (px > x1) & (px < x2) & (py > y1) & (py < y2)


def mean_plus_std(values: Tensor, is_candidate: Tensor) -> Tensor:
    """values, is_candidate [B, Q, N] -> [B, 1, N] mean + unbiased std of each column's candidates
    (ATSS's IoU threshold); a single candidate has std 0."""
    count = is_candidate.sum(dim=1, keepdim=True)  # (bs, 1, mo)
    mean = (values * is_candidate).sum(dim=1, keepdim=True) / count.clamp(min=1)
    squares = ((values - mean).pow(2) * is_candidate).sum(dim=1, keepdim=True)
    return mean + (squares / (count - 1).clamp(min=1)).sqrt()


def first_k_along_queries(values: Tensor, k: int | Tensor, largest: bool = False) -> Tensor:
    """values [B, Q, N], k an int or int64 [B, 1, N] (>= 1; all Q when larger) -> [B, Q, N] bool: in each
    (image, target) column the k queries of smallest values (largest with ``largest``), ties to the
    lower query index: a stable sort's first k, from one top-k (a full sort is several times slower)."""
    values = -values if largest else values
    k = torch.as_tensor(k, device=values.device).clamp(max=values.shape[1])
    k = k.expand(values.shape[0], 1, values.shape[2])  # (bs, 1, mo)
    ascending = values.topk(int(k.max()), dim=1, largest=False).values  # (bs, kmax, mo)
    kth = ascending.gather(1, k - 1)  # (bs, 1, mo)
    is_better, is_tied = values < kth, values == kth  # (bs, q, mo)
    room = k - is_better.sum(dim=1, keepdim=True)  # (bs, 1, mo), >= 1
    if bool((is_tied.sum(dim=1, keepdim=True) > room).any()):  # ties at the k-th value: lower queries first
        is_tied &= is_tied.cumsum(dim=1) <= room
    return is_better | is_tied


def keep_best_claim(claims: Tensor, key: Tensor) -> Tensor:
    """claims [B, Q, N] bool, key [B, Q, N] -> [B, Q] int64: the claiming target of largest key for
    each query (the lower index on ties), -1 where no target claims it."""
    best = key.masked_fill(~claims, float("-inf")).argmax(dim=2)  # (bs, q)
    return torch.where(claims.any(dim=2), best, -1)


def hard_assignment(assigned: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """assigned [B, Q] -> itself, weights 1 [B, Q], nothing ignored [B, Q]: a hard assigner's result."""
    weights = torch.ones_like(assigned, dtype=torch.float32)
    return assigned, weights, torch.zeros_like(assigned, dtype=torch.bool)


def split_per_image(assigned: Tensor, weights: Tensor, ignored: Tensor) -> list[Assignment]:
    """assigned [B, Q] int64 (-1: none), weights [B, Q], ignored [B, Q] -> B ``Assignment``."""
    image_idx, pred_idx = (assigned >= 0).nonzero(as_tuple=True)  # row-major: queries ascend per image
    counts = torch.bincount(image_idx, minlength=len(assigned)).tolist()
    return [
        Assignment(pred, assigned[b, pred], weights[b, pred].float(), ignored[b])
        for b, pred in enumerate(pred_idx.split(counts))
    ]
