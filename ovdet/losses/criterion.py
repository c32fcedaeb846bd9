"""The training losses (DETR's ``SetCriterion``): one method per loss term, each a dict of named scalars.

``SetCriterion(matcher, cfg)(outputs, targets)`` returns the UNWEIGHTED scalars of every term of
``ovdet.losses.registry.LOSS_TERMS`` (``loss_image`` is left out when ``cfg.image_loss == "none"``);
the caller applies ``cfg.weights`` with ``weighted_sum``. ``docs/losses.md`` explains each term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    sigmoid_focal_loss,
)

from ovdet import dist
from ovdet.config import LossConfig
from ovdet.losses.assigners import Assignment, Priors, build_assigner
from ovdet.losses.matcher import HungarianMatcher, build_matcher
from ovdet.losses.registry import LOSS_TERMS
from ovdet.ops.boxes import box_cxcywh_to_xyxy, elementwise_box_iou, grid_centers


def build_assignment(cfg: LossConfig) -> nn.Module:
    """``loss.assigner``: the Hungarian matcher, or a one-to-many assigner with its config's parameters."""
    if cfg.assigner == "hungarian":
        return build_matcher(cfg)
    parameters = {
        "max_iou": {"pos_iou": cfg.max_iou_positive, "neg_iou": cfg.max_iou_negative},
        "atss": {"topk": cfg.atss_topk},
        "tal": {"alpha": cfg.tal_alpha, "beta": cfg.tal_beta, "topk": cfg.tal_topk},
        "simota": {"center_radius": cfg.simota_center_radius, "iou_weight": cfg.simota_iou_weight,
                   "candidate_topk": cfg.simota_candidates},
    }
    return build_assigner(cfg.assigner, **parameters[cfg.assigner])


class SetCriterion(nn.Module):
    """Losses of an open-vocabulary detector under any label assignment.

    The assigner is the one-to-one ``HungarianMatcher`` or a one-to-many assigner of
    ``ovdet.losses.assigners`` (``loss.assigner``); both give one ``Assignment`` per image: the
    positive queries, their targets, a soft weight per positive (1, or TAL's normalized alignment)
    and the queries ignored by the classification loss. Every positive-sum is weighted by those
    weights and divided by their global sum, ``counts["positives"]`` (DETR's num_boxes under
    Hungarian matching, where every box has exactly one positive of weight 1; RetinaNet's and
    YOLOX's number of positives; YOLOv8's target-score sum).

    Images whose target has ``has_boxes=False`` (image-text samples) take no part in assignment
    nor in the box, label and contrastive losses, so their queries are not pushed to background; they
    are supervised by ``loss_image`` alone through their ``image_labels``.

    Every loss method has the signature of ``loss_map``'s values, ``(outputs, targets, assignments,
    counts) -> {scalar name: tensor}`` (the names ``LOSS_TERMS`` lists for the term; ``{}`` when the
    model has no head for it), where ``counts`` holds the global normalizers of ``global_counts``.
    """

    def __init__(self, matcher: nn.Module, cfg: LossConfig, quality: str = "none"):
        super().__init__()
        self.matcher = matcher
        self.cfg = cfg
        self.quality = quality
        self.loss_map = {term: getattr(self, f"loss_{term}") for term in LOSS_TERMS}

    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Compute every loss term.

        Args:
            outputs: ``"pred_logits"`` [B, Q, T] region-text logits; ``"pred_boxes"`` [B, Q, 4]
                normalized cxcywh; optional ``"text_mask"`` [B, T] bool (True = real text);
                optional ``"token_grid"`` int64 [2] (H, W: the queries are a row-major token grid,
                needed by one-to-many assigners and DFL), ``"quality_logits"`` [B, Q],
                ``"no_object_logits"`` [B, Q], ``"box_distribution"`` [B, Q, 4, reg_max].
            targets: B dicts: ``"labels"`` int64 [N_b] (indices into the image's texts),
                ``"boxes"`` [N_b, 4] normalized cxcywh, optional ``"has_boxes"`` bool (default True;
                when False, labels and boxes may be absent), optional ``"image_labels"`` int64 [P_b]:
                the texts an image-text sample's caption names (its positives for ``loss_image``).

        Returns:
            Scalar losses keyed by name, unweighted.
        """
        targets = [boxes_only(t, outputs["pred_boxes"].device) for t in targets]
        assignments = self.assign(outputs, targets)
        local = {"positives": count_positives(assignments), "image_positives": count_image_positives(targets)}
        if self.cfg.classification == "softmax":
            local["softmax_weight"] = softmax_weight(assignments, targets, self.cfg.no_object_weight)
        if self.quality == "objectness":
            local["scored_queries"] = float(scored_queries(outputs["pred_boxes"], targets, assignments).sum().item())
        # Every rank joins this one reduction on every call, whichever terms have work to do.
        counts = global_counts(local)
        losses = {}
        for loss in self.loss_map.values():
            losses.update(loss(outputs, targets, assignments, counts))
        return losses

    def assign(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[Assignment]:
        """One ``Assignment`` per image, from the Hungarian matcher or a one-to-many assigner."""
        if isinstance(self.matcher, HungarianMatcher):
            num_queries = outputs["pred_logits"].shape[1]
            return [one_to_one(pred, tgt, num_queries) for pred, tgt in self.matcher(outputs, targets)]
        height, width = outputs["token_grid"].tolist()
        priors = grid_priors(height, width, self.cfg.prior_scale, outputs["pred_boxes"].device)
        return self.matcher(outputs, targets, priors)

    def loss_labels(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        assignments: list[Assignment],
        counts: dict[str, float],
    ) -> dict[str, Tensor]:
        """Classification of every query of the images with boxes (``loss.classification``).

        - ``focal`` / ``bce``: sigmoid focal loss (or BCE) over every real (query, text) pair; the
          target is the positive's weight (1, TAL's soft score) at its target's text, else 0;
          ignored queries are left out; sum / positives (Deformable-DETR, YOLOv8).
        - ``softmax``: ``softmax_cross_entropy`` (DETR). Returns ``{"loss_labels": scalar}``.
        """
        if self.cfg.classification == "softmax":
            return {"loss_labels": softmax_cross_entropy(outputs, targets, assignments, self.cfg, counts)}
        logits = outputs["pred_logits"]  # (bs, q, t)
        target = assigned_text_targets(logits, targets, assignments)  # (bs, q, t)
        is_scored = scored_queries(logits, targets, assignments)[:, :, None] & text_mask_of(outputs)[:, None, :]
        is_scored = is_scored.expand_as(logits)  # (bs, q, t)
        # Select before the loss: padded texts may carry -inf logits, whose loss (and grad) is NaN.
        logits, target = logits[is_scored], target[is_scored]  # (pairs,)
        if self.cfg.classification == "focal":
            alpha, gamma = self.cfg.focal_alpha, self.cfg.focal_gamma
            loss = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="sum")
        else:
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        return {"loss_labels": loss / counts["positives"]}

    def loss_contrastive(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        assignments: list[Assignment],
        counts: dict[str, float],
    ) -> dict[str, Tensor]:
        """Region-text InfoNCE: each positive query's softmax over its image's real texts vs its label.

        The softmax is over ``pred_logits`` as they are, with no temperature: they already carry the
        head's learned scale, and dividing them again would sharpen the softmax twice. Weighted sum
        over positives divided by the positives' weight (under Hungarian matching every target is
        matched, so this is the global mean over matches); 0 (still attached to the graph) when
        nothing is matched. Returns ``{"loss_contrastive": scalar}``.
        """
        logits = outputs["pred_logits"]  # (bs, q, t)
        batch_idx, query_idx = positive_query_index(assignments, logits.device)
        if len(batch_idx) == 0:
            return {"loss_contrastive": zero_loss(logits)}
        matched = logits[batch_idx, query_idx]  # (m, t)
        is_real = text_mask_of(outputs)[batch_idx]  # (m, t)
        matched = matched.masked_fill(~is_real, torch.finfo(matched.dtype).min)
        labels = assigned_targets(targets, assignments, "labels").long()  # (m,)
        loss = F.cross_entropy(matched, labels, reduction="none")  # (m,)
        return {"loss_contrastive": weighted_total(loss, assignments) / counts["positives"]}

    def loss_boxes(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        assignments: list[Assignment],
        counts: dict[str, float],
    ) -> dict[str, Tensor]:
        """Every box loss of ``box_losses`` over the positives, weighted, summed and divided by the
        positives' weight. Returns ``{"loss_l1", "loss_smooth_l1", "loss_iou", "loss_giou",
        "loss_diou", "loss_ciou"}``."""
        batch_idx, query_idx = positive_query_index(assignments, outputs["pred_boxes"].device)
        pred = outputs["pred_boxes"][batch_idx, query_idx]  # (m, 4)
        target = assigned_targets(targets, assignments, "boxes").to(pred)  # (m, 4)
        per_box = box_losses(pred, target, self.cfg.smooth_l1_beta)
        return {name: weighted_total(loss, assignments) / counts["positives"] for name, loss in per_box.items()}

    def loss_dfl(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        assignments: list[Assignment],
        counts: dict[str, float],
    ) -> dict[str, Tensor]:
        """Distribution focal loss (Li et al. 2020) of ``model.box_head=dfl``: each positive's four
        distances from its token's centre to its target's sides, in grid cells (clamped to the bins'
        range), against the two bins around it (``distribution_focal_loss``); the mean over the four
        sides, weighted, summed, divided by the positives' weight (YOLOv8).
        Returns ``{"loss_dfl": scalar}``, or ``{}`` without a distribution head."""
        if "box_distribution" not in outputs:
            return {}
        distribution = outputs["box_distribution"]  # (bs, q, 4, bins)
        batch_idx, query_idx = positive_query_index(assignments, distribution.device)
        height, width = outputs["token_grid"].tolist()
        centers = token_centers(outputs, query_idx)  # (m, 2)
        target = box_cxcywh_to_xyxy(assigned_targets(targets, assignments, "boxes").to(centers))  # (m, 4)
        cells = side_distances(centers, target) * centers.new_tensor([width, height, width, height])  # (m, 4)
        loss = distribution_focal_loss(distribution[batch_idx, query_idx].float(), cells).mean(-1)  # (m,)
        return {"loss_dfl": weighted_total(loss, assignments) / counts["positives"]}

    def loss_quality(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        assignments: list[Assignment],
        counts: dict[str, float],
    ) -> dict[str, Tensor]:
        """The quality score of ``model.quality`` against its target, divided by the positives' weight:

        - ``objectness`` (OWLv2): BCE over every scored query of the images with boxes, target 1 at
          positives, 0 elsewhere, divided by the number of scored queries instead (YOLOv5's
          objectness mean);
        - ``centerness`` (FCOS): BCE at positives against the centerness of the token's centre in
          its target box (0 outside it);
        - ``iou`` (IoU-aware): BCE at positives against the IoU of the predicted box with its
          target (detached).
        Returns ``{"loss_quality": scalar}``, or ``{}`` when the model has no quality head."""
        if self.quality == "none" or "quality_logits" not in outputs:
            return {}
        quality = outputs["quality_logits"].float()  # (bs, q)
        if self.quality == "objectness":
            return {"loss_quality": objectness_loss(quality, targets, assignments) / counts["scored_queries"]}
        batch_idx, query_idx = positive_query_index(assignments, quality.device)
        target_boxes = box_cxcywh_to_xyxy(assigned_targets(targets, assignments, "boxes").to(quality))  # (m, 4)
        if self.quality == "centerness":
            centers = token_centers(outputs, query_idx)  # (m, 2)
            target = centerness(side_distances(centers, target_boxes).clamp(min=0))  # (m,)
        else:
            pred = box_cxcywh_to_xyxy(outputs["pred_boxes"][batch_idx, query_idx].detach().float())
            target = elementwise_box_iou(pred, target_boxes)  # (m,)
        loss = F.binary_cross_entropy_with_logits(quality[batch_idx, query_idx], target, reduction="none")
        return {"loss_quality": weighted_total(loss, assignments) / counts["positives"]}

    def loss_image(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        assignments: list[Assignment],
        counts: dict[str, float],
    ) -> dict[str, Tensor]:
        """Image-level loss for the images whose target has ``image_labels`` (image-text samples):
        the caption's texts are positives, the image's other real texts negatives. The sum is
        divided by the global number of positives (at least 1).

        - ``max_score_softmax`` (default): for each positive text, the query that scores it highest
          (multiple-instance learning), and a softmax over that query's logits for the positive
          and the negatives (the other positives left out: they may be right for that region too).
          Like ``loss_contrastive``, it moves only the relative scores of the texts.
        - ``max_score``: BCE of each text's max over queries. At the focal prior every image logit
          is about -4.6, so its positive terms (gradient about 1 each) pull every region toward
          the direction all names share; on the synthetic world that stalled region-text alignment
          at any weight down to 0.1 (``docs/results.md``).
        - ``max_size`` (Detic): BCE on the logits of the query with the largest predicted box.

        ``image_loss_grad="similarity"`` rebuilds the logits from the model's ``logit_parts`` with
        the shift and scale detached (``similarity_only_logits``), so the loss cannot move them.
        Returns ``{"loss_image": scalar}``, or ``{}`` when ``image_loss`` is ``"none"``.
        """
        if self.cfg.image_loss == "none":
            return {}
        logits = outputs["pred_logits"]  # (bs, q, t)
        if self.cfg.image_loss_grad == "similarity" and "region_similarity" in outputs:
            logits = similarity_only_logits(outputs)
        rows = [b for b, target in enumerate(targets) if target.get("image_labels") is not None]
        denominator = counts["image_positives"]
        if not rows:
            return {"loss_image": zero_loss(logits)}
        rows_t = torch.tensor(rows, device=logits.device)  # (n,)
        is_real = text_mask_of(outputs)[rows_t]  # (n, t)
        target = torch.zeros(len(rows), logits.shape[2], device=logits.device)  # (n, t)
        for row, b in enumerate(rows):
            target[row, targets[b]["image_labels"].to(logits.device).long()] = 1.0
        if self.cfg.image_loss == "max_score_softmax":
            loss = max_score_softmax_loss(logits[rows_t], target.bool(), is_real)
            if self.cfg.image_loss_objectness:
                shift_only = shift_only_logits(outputs) if "logit_shift" in outputs else logits
                loss = loss + self.cfg.image_loss_objectness * best_query_positive_loss(
                    logits[rows_t], shift_only[rows_t], target.bool())
            return {"loss_image": loss / denominator}
        if self.cfg.image_loss == "max_score":
            image_logits = max_score_logits(logits[rows_t])  # (n, t)
        else:
            image_logits = largest_box_logits(logits[rows_t], outputs["pred_boxes"][rows_t])  # (n, t)
        loss = F.binary_cross_entropy_with_logits(image_logits[is_real], target[is_real], reduction="sum")
        return {"loss_image": loss / denominator}


def similarity_only_logits(outputs: dict[str, Tensor]) -> Tensor:
    """[B, Q, T] ``pred_logits`` rebuilt from ``region_similarity``, ``logit_shift`` and
    ``logit_scale`` with the last two detached: the same values (padded texts keep the model's
    padding logit), gradients only to the similarity."""
    logits = (outputs["region_similarity"] + outputs["logit_shift"].detach()) * outputs["logit_scale"].detach()
    return torch.where(text_mask_of(outputs)[:, None, :], logits, outputs["pred_logits"].detach())


def shift_only_logits(outputs: dict[str, Tensor]) -> Tensor:
    """[B, Q, T] ``pred_logits`` rebuilt with only ``logit_shift`` attached (similarity and scale detached)."""
    logits = (outputs["region_similarity"].detach() + outputs["logit_shift"]) * outputs["logit_scale"].detach()
    return torch.where(text_mask_of(outputs)[:, None, :], logits, outputs["pred_logits"].detach())


def best_query_positive_loss(logits: Tensor, trained: Tensor, is_positive: Tensor) -> Tensor:
    """Sum over positive (image, text) pairs of -log sigmoid of ``trained`` at the query where ``logits``
    scores the text highest: the image shows the named thing there (``image_loss_objectness``).

    Args:
        logits: [N, Q, T] region-text logits (select the query).
        trained: [N, Q, T] the same values, attached only to what the term may train.
        is_positive: [N, T] bool, the caption's texts.
    """
    rows, texts = is_positive.nonzero(as_tuple=True)  # (k,), (k,)
    if len(rows) == 0:
        return zero_loss(trained)
    best_query = logits[rows, :, texts].detach().argmax(dim=1)  # (k,)
    return F.softplus(-trained[rows, best_query, texts]).sum()


def max_score_softmax_loss(logits: Tensor, is_positive: Tensor, is_real: Tensor) -> Tensor:
    """Sum over positive (image, text) pairs of the cross-entropy, at the query scoring the text
    highest, of that text against the image's negatives.

    Args:
        logits: [N, Q, T] region-text logits of N image-text samples.
        is_positive: [N, T] bool, the caption's texts.
        is_real: [N, T] bool, real (not padded) texts.
    """
    rows, texts = is_positive.nonzero(as_tuple=True)  # (k,), (k,)
    if len(rows) == 0:
        return zero_loss(logits)
    best_query = logits[rows, :, texts].detach().argmax(dim=1)  # (k,)
    selected = logits[rows, best_query]  # (k, t)
    allowed = is_real[rows] & ~is_positive[rows]  # (k, t): the negatives...
    allowed[torch.arange(len(rows), device=logits.device), texts] = True  # ...and the text itself
    selected = selected.masked_fill(~allowed, torch.finfo(selected.dtype).min)
    return F.cross_entropy(selected, texts, reduction="sum")


def weighted_sum(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """``sum(weights[k] * losses[k])`` over the keys of ``weights`` present in ``losses``."""
    terms = [weight * losses[name] for name, weight in weights.items() if name in losses]
    return sum(terms[1:], terms[0]) if terms else torch.zeros(())


def zero_loss(tensor: Tensor) -> Tensor:
    """A 0 that is still attached to the graph (so every rank's backward reaches the same
    parameters), finite even where ``tensor`` holds -inf."""
    return tensor[..., :0].sum()


def boxes_only(target: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """The target with ``has_boxes`` made explicit; an image without boxes gets empty labels/boxes."""
    has_boxes = bool(target.get("has_boxes", True))
    if has_boxes:
        return {**target, "has_boxes": True}
    empty = {
        "labels": torch.zeros(0, dtype=torch.int64, device=device),
        "boxes": torch.zeros(0, 4, device=device),
    }
    return {**target, **empty, "has_boxes": False}


def count_image_positives(targets: list[dict[str, Tensor]]) -> int:
    """This rank's caption positives over the targets that have ``image_labels``."""
    return sum(len(t["image_labels"]) for t in targets if t.get("image_labels") is not None)


def global_counts(local: dict[str, float]) -> dict[str, float]:
    """Per-rank counts, each averaged over ranks (the global count at least 1), in one all-reduce:
    dividing a per-rank loss SUM by one makes the data-parallel average over ranks equal to the
    single-process loss of the whole batch (DETR's num_boxes)."""
    totals = dist.sum_over_ranks([float(value) for value in local.values()])
    # Clamp the global sum, then divide (DETR clamps after dividing, which breaks DP == large batch
    # whenever a global batch holds fewer boxes than there are ranks).
    return {name: max(total, 1.0) / dist.world_size() for name, total in zip(local, totals, strict=True)}


def text_mask_of(outputs: dict[str, Tensor]) -> Tensor:
    """[B, T] bool: the model's text mask, or all True when every text is real."""
    if "text_mask" in outputs:
        return outputs["text_mask"].bool()
    logits = outputs["pred_logits"]
    return torch.ones(logits.shape[0], logits.shape[2], dtype=torch.bool, device=logits.device)


def max_score_logits(logits: Tensor) -> Tensor:
    """[N, Q, T] region-text logits -> [N, T] image-text logits, max over queries (MIL)."""
    return logits.max(dim=1).values


def largest_box_logits(logits: Tensor, boxes: Tensor) -> Tensor:
    """[N, Q, T] logits, [N, Q, 4] cxcywh -> [N, T] logits of each image's largest predicted box (Detic)."""
    largest = (boxes[..., 2] * boxes[..., 3]).argmax(dim=1)  # (n,)
    return logits[torch.arange(len(logits), device=logits.device), largest]


def objectness_loss(quality: Tensor, targets: list[dict[str, Tensor]], assignments: list[Assignment]) -> Tensor:
    """Summed BCE of [B, Q] objectness logits: 1 at positives, 0 at the other scored queries."""
    target = torch.zeros_like(quality)
    batch_idx, query_idx = positive_query_index(assignments, quality.device)
    target[batch_idx, query_idx] = 1.0
    is_scored = scored_queries(quality, targets, assignments)  # (bs, q)
    return F.binary_cross_entropy_with_logits(quality[is_scored], target[is_scored], reduction="sum")


def one_to_one(pred_idx: Tensor, tgt_idx: Tensor, num_queries: int) -> Assignment:
    """The Hungarian matcher's ``(pred_idx, tgt_idx)`` of one image as an ``Assignment`` (weights 1,
    nothing ignored)."""
    weights = torch.ones(len(pred_idx))
    return Assignment(pred_idx, tgt_idx, weights, torch.zeros(num_queries, dtype=torch.bool))


def grid_priors(height: int, width: int, prior_scale: float, device: torch.device) -> Priors:
    """The priors of an ``H x W`` token grid (one level): each token's centre, a square prior box of
    ``prior_scale`` cells (RetinaNet's octave base scale 4), the cell size as the stride."""
    centers = grid_centers(height, width).to(device)  # (q, 2)
    size = centers.new_tensor([prior_scale / width, prior_scale / height]).expand_as(centers)  # (q, 2)
    strides = torch.full((len(centers),), 1.0 / max(height, width), device=device)  # square canvas
    return Priors(torch.cat([centers, size], dim=-1), strides, torch.zeros(len(centers), dtype=torch.int64, device=device))


def count_positives(assignments: list[Assignment]) -> float:
    """This rank's positives, each counted by its weight (the number of positives for hard
    assigners); one host sync."""
    return float(torch.cat([a.weights.float() for a in assignments]).sum()) if assignments else 0.0


def softmax_weight(assignments: list[Assignment], targets: list[dict[str, Tensor]], no_object_weight: float) -> float:
    """This rank's total class weight of softmax classification: 1 per positive, ``no_object_weight``
    per other scored query (DETR's weighted mean: ``F.cross_entropy(..., weight=empty_weight)``)."""
    rows = [b for b, target in enumerate(targets) if target["has_boxes"]]
    if not rows:
        return 0.0
    positives = sum(len(assignments[b].pred_idx) for b in rows)
    ignored = int(torch.stack([assignments[b].ignored for b in rows]).sum())  # one host sync
    queries = len(rows) * len(assignments[0].ignored)
    return positives + no_object_weight * (queries - positives - ignored)


def softmax_cross_entropy(
    outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], assignments: list[Assignment],
    cfg: LossConfig, counts: dict[str, float],
) -> Tensor:
    """DETR's classification: per scored query of the images with boxes, a cross-entropy over the
    image's real texts plus the no-object logit, target the positive's text or no-object; classes
    weighted 1 and ``no_object_weight``; the weighted sum divided by the global weight (DETR's
    weighted mean, made global over ranks)."""
    logits = outputs["pred_logits"]  # (bs, q, t)
    real = text_mask_of(outputs)[:, None, :].expand_as(logits)  # (bs, q, t)
    logits = logits.masked_fill(~real, torch.finfo(logits.dtype).min)
    logits = torch.cat([logits, outputs["no_object_logits"][..., None].to(logits)], dim=-1)  # (bs, q, t+1)
    num_texts = logits.shape[-1] - 1
    classes = torch.full(logits.shape[:2], num_texts, dtype=torch.int64, device=logits.device)  # (bs, q)
    batch_idx, query_idx = positive_query_index(assignments, logits.device)
    classes[batch_idx, query_idx] = assigned_targets(targets, assignments, "labels").long().to(logits.device)
    class_weight = torch.ones(num_texts + 1, device=logits.device)
    class_weight[-1] = cfg.no_object_weight
    is_scored = scored_queries(logits, targets, assignments)  # (bs, q)
    loss = F.cross_entropy(logits[is_scored], classes[is_scored], weight=class_weight, reduction="sum")
    return loss / counts["softmax_weight"]


def scored_queries(logits: Tensor, targets: list[dict[str, Tensor]], assignments: list[Assignment]) -> Tensor:
    """[B, Q] bool: the queries a classification loss scores: every query of an image with boxes that
    its assignment does not ignore."""
    has_boxes = torch.tensor([t["has_boxes"] for t in targets], device=logits.device)  # (bs,)
    ignored = torch.stack([a.ignored.to(logits.device) for a in assignments])  # (bs, q)
    return has_boxes[:, None] & ~ignored


def positive_query_index(assignments: list[Assignment], device: torch.device) -> tuple[Tensor, Tensor]:
    """(batch_idx [M], query_idx [M]) of all positive queries, image by image (DETR's permutation idx)."""
    batch_idx = torch.cat([torch.full_like(a.pred_idx, b) for b, a in enumerate(assignments)])
    query_idx = torch.cat([a.pred_idx for a in assignments])
    return batch_idx.to(device), query_idx.to(device)


def assigned_targets(targets: list[dict[str, Tensor]], assignments: list[Assignment], key: str) -> Tensor:
    """[M, ...]: ``targets[b][key]`` of each positive's target, in the order of ``positive_query_index``."""
    return torch.cat([t[key][a.tgt_idx.to(t[key].device)] for t, a in zip(targets, assignments, strict=True)])


def positive_weights(assignments: list[Assignment]) -> Tensor:
    """[M] the positives' weights, in the order of ``positive_query_index``."""
    return torch.cat([a.weights.float() for a in assignments])


def weighted_total(per_positive: Tensor, assignments: list[Assignment]) -> Tensor:
    """``sum(weight * loss)`` over the positives' [M] losses."""
    return (per_positive * positive_weights(assignments).to(per_positive)).sum()


def assigned_text_targets(logits: Tensor, targets: list[dict[str, Tensor]], assignments: list[Assignment]) -> Tensor:
    """[B, Q, T] float: the positive's weight at (b, query, its target's text), 0 elsewhere."""
    batch_idx, query_idx = positive_query_index(assignments, logits.device)
    labels = assigned_targets(targets, assignments, "labels").long().to(logits.device)  # (m,)
    target = torch.zeros_like(logits)
    target[batch_idx, query_idx, labels] = positive_weights(assignments).to(target)
    return target


def box_losses(pred: Tensor, target: Tensor, smooth_l1_beta: float) -> dict[str, Tensor]:
    """[M, 4] predicted and target boxes, normalized cxcywh -> each box loss per box [M]: L1 and
    smooth L1 on cxcywh; 1 - IoU, GIoU, DIoU, CIoU on xyxy (torchvision.ops where it has them)."""
    pred_xyxy, target_xyxy = box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)
    return {
        "loss_l1": F.l1_loss(pred, target, reduction="none").sum(-1),
        "loss_smooth_l1": F.smooth_l1_loss(pred, target, reduction="none", beta=smooth_l1_beta).sum(-1),
        "loss_iou": 1 - elementwise_box_iou(pred_xyxy, target_xyxy),
        "loss_giou": generalized_box_iou_loss(pred_xyxy, target_xyxy),
        "loss_diou": distance_box_iou_loss(pred_xyxy, target_xyxy),
        "loss_ciou": complete_box_iou_loss(pred_xyxy, target_xyxy),
    }


def token_centers(outputs: dict[str, Tensor], query_idx: Tensor) -> Tensor:
    """[M, 2] normalized centres of the tokens ``query_idx`` of the ``token_grid``."""
    height, width = outputs["token_grid"].tolist()
    return grid_centers(height, width).to(query_idx.device)[query_idx]


def side_distances(centers: Tensor, boxes_xyxy: Tensor) -> Tensor:
    """Points [M, 2] and boxes [M, 4] xyxy -> [M, 4] distances (left, top, right, bottom) from each
    point to its box's sides, negative where the point lies outside."""
    return torch.cat([centers - boxes_xyxy[:, :2], boxes_xyxy[:, 2:] - centers], dim=-1)


def centerness(distances: Tensor) -> Tensor:
    """[M, 4] non-negative (l, t, r, b) -> [M] FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))."""
    left_right, top_bottom = distances[:, 0::2], distances[:, 1::2]
    ratio_x = left_right.min(-1).values / left_right.max(-1).values.clamp(min=1e-12)
    ratio_y = top_bottom.min(-1).values / top_bottom.max(-1).values.clamp(min=1e-12)
    return (ratio_x * ratio_y).sqrt()


def distribution_focal_loss(logits: Tensor, distances: Tensor) -> Tensor:
    """GFL's DFL: bin logits [..., bins] and target distances [...] in bins -> [...] loss
    ``CE(y_left) (y_right - y) + CE(y_right) (y - y_left)``, the target clamped to [0, bins - 1.01]
    (YOLOv8's clamp, so the right bin exists)."""
    bins = logits.shape[-1]
    target = distances.clamp(0, bins - 1 - 0.01)
    left = target.floor().long()
    weight_left = left + 1 - target
    log_probs = logits.log_softmax(-1)
    ce_left = -log_probs.gather(-1, left[..., None]).squeeze(-1)
    ce_right = -log_probs.gather(-1, (left + 1)[..., None]).squeeze(-1)
    return ce_left * weight_left + ce_right * (1 - weight_left)
