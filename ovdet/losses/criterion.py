"""The training losses (DETR's ``SetCriterion``): one method per loss term, each a dict of named scalars.

``SetCriterion(matcher, cfg)(outputs, targets)`` returns the UNWEIGHTED scalars of every term of
``ovdet.losses.registry.LOSS_TERMS`` (``loss_image`` is left out when ``cfg.image_loss == "none"``);
the caller applies ``cfg.weights`` with ``weighted_sum``. ``docs/losses.md`` explains each term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ovdet import dist
from ovdet.config import LossConfig
from ovdet.losses.matcher import HungarianMatcher
from ovdet.losses.registry import LOSS_TERMS
from ovdet.ops.boxes import box_cxcywh_to_xyxy


class SetCriterion(nn.Module):
    """Losses of an open-vocabulary set-prediction detector.

    Images whose target has ``has_boxes=False`` (image-text samples) take no part in matching nor
    in the box, label and contrastive losses, so their queries are not pushed to background; they
    are supervised by ``loss_image`` alone through their ``image_labels``.

    Every loss method has the signature of ``loss_map``'s values, ``(outputs, targets, indices,
    counts) -> {scalar name: tensor}`` (the names ``LOSS_TERMS`` lists for the term), where
    ``counts`` holds the global normalizers of ``global_counts``: ``"boxes"`` (DETR's num_boxes)
    and ``"image_positives"``.
    """

    def __init__(self, matcher: HungarianMatcher, cfg: LossConfig):
        super().__init__()
        self.matcher = matcher
        self.cfg = cfg
        self.loss_map = {term: getattr(self, f"loss_{term}") for term in LOSS_TERMS}

    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Compute every loss term.

        Args:
            outputs: ``"pred_logits"`` [B, Q, T] region-text logits; ``"pred_boxes"`` [B, Q, 4]
                normalized cxcywh; optional ``"text_mask"`` [B, T] bool (True = real text).
            targets: B dicts: ``"labels"`` int64 [N_b] (indices into the image's texts),
                ``"boxes"`` [N_b, 4] normalized cxcywh, optional ``"has_boxes"`` bool (default True;
                when False, labels and boxes may be absent), optional ``"image_labels"`` int64 [P_b]:
                the texts an image-text sample's caption names (its positives for ``loss_image``).

        Returns:
            Scalar losses keyed by name, unweighted.
        """
        targets = [boxes_only(t, outputs["pred_boxes"].device) for t in targets]
        indices = self.matcher(outputs, targets)
        # Every rank joins this one reduction on every call, whichever terms have work to do.
        counts = global_counts({"boxes": count_boxes(targets), "image_positives": count_image_positives(targets)})
        losses = {}
        for loss in self.loss_map.values():
            losses.update(loss(outputs, targets, indices, counts))
        return losses

    def loss_labels(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
        counts: dict[str, float],
    ) -> dict[str, Tensor]:
        """Sigmoid focal (or BCE) loss over every real (query, text) pair of images with boxes.

        The target is 1 where the query is matched to a box of that text, else 0; the sum is
        divided by num_boxes (Deformable-DETR). Returns ``{"loss_labels": scalar}``.
        """
        logits = outputs["pred_logits"]  # (bs, q, t)
        target = matched_text_targets(logits, targets, indices)  # (bs, q, t)
        has_boxes = torch.tensor([t["has_boxes"] for t in targets], device=logits.device)  # (bs,)
        is_scored = has_boxes[:, None, None] & text_mask_of(outputs)[:, None, :]  # (bs, 1, t)
        is_scored = is_scored.expand_as(logits)  # (bs, q, t)
        # Select before the loss: padded texts may carry -inf logits, whose loss (and grad) is NaN.
        logits, target = logits[is_scored], target[is_scored]  # (pairs,)
        if self.cfg.classification == "focal":
            alpha, gamma = self.cfg.focal_alpha, self.cfg.focal_gamma
            loss = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma, reduction="sum")
        else:
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        return {"loss_labels": loss / counts["boxes"]}

    def loss_contrastive(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
        counts: dict[str, float],
    ) -> dict[str, Tensor]:
        """Region-text InfoNCE: each matched query's softmax over its image's real texts vs its label.

        The softmax is over ``pred_logits`` as they are, with no temperature: they already carry the
        head's learned scale, and dividing them again would sharpen the softmax twice. Sum over
        matched queries divided by num_boxes (all targets are matched, so this is the global mean
        over matches); 0 (still attached to the graph) when nothing is matched.
        Returns ``{"loss_contrastive": scalar}``.
        """
        logits = outputs["pred_logits"]  # (bs, q, t)
        batch_idx, query_idx = matched_query_index(indices)
        if len(batch_idx) == 0:
            return {"loss_contrastive": zero_loss(logits)}
        matched = logits[batch_idx, query_idx]  # (m, t)
        is_real = text_mask_of(outputs)[batch_idx]  # (m, t)
        matched = matched.masked_fill(~is_real, torch.finfo(matched.dtype).min)
        labels = matched_targets(targets, indices, "labels").long()  # (m,)
        loss = F.cross_entropy(matched, labels, reduction="sum")
        return {"loss_contrastive": loss / counts["boxes"]}  # every target is matched: matches == boxes

    def loss_boxes(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
        counts: dict[str, float],
    ) -> dict[str, Tensor]:
        """L1 on cxcywh and 1 - GIoU on xyxy over matched pairs, each summed and divided by num_boxes.

        Returns ``{"loss_bbox": scalar, "loss_giou": scalar}``.
        """
        batch_idx, query_idx = matched_query_index(indices)
        pred = outputs["pred_boxes"][batch_idx, query_idx]  # (m, 4)
        target = matched_targets(targets, indices, "boxes").to(pred)  # (m, 4)
        loss_bbox = F.l1_loss(pred, target, reduction="sum")
        loss_giou = generalized_box_iou_loss(
            box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target), reduction="sum"
        )
        num_boxes = counts["boxes"]
        return {"loss_bbox": loss_bbox / num_boxes, "loss_giou": loss_giou / num_boxes}

    def loss_image(
        self,
        outputs: dict[str, Tensor],
        targets: list[dict[str, Tensor]],
        indices: list[tuple[Tensor, Tensor]],
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


def count_boxes(targets: list[dict[str, Tensor]]) -> int:
    """This rank's target boxes (the ``boxes_only`` targets: images without boxes count 0)."""
    return sum(len(t["labels"]) for t in targets)


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


def matched_query_index(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """(batch_idx [M], query_idx [M]) of all matched queries, image by image (DETR's permutation idx)."""
    batch_idx = torch.cat([torch.full_like(pred, b) for b, (pred, _) in enumerate(indices)])
    query_idx = torch.cat([pred for pred, _ in indices])
    return batch_idx, query_idx


def matched_targets(
    targets: list[dict[str, Tensor]], indices: list[tuple[Tensor, Tensor]], key: str
) -> Tensor:
    """[M, ...]: ``targets[b][key]`` of the matched targets, in the order of ``matched_query_index``."""
    return torch.cat([t[key][tgt] for t, (_, tgt) in zip(targets, indices, strict=True)])


def matched_text_targets(
    logits: Tensor, targets: list[dict[str, Tensor]], indices: list[tuple[Tensor, Tensor]]
) -> Tensor:
    """[B, Q, T] float: 1 at (b, query, label of its matched target), 0 elsewhere."""
    batch_idx, query_idx = matched_query_index(indices)
    labels = matched_targets(targets, indices, "labels").long()  # (m,)
    target = torch.zeros_like(logits)
    target[batch_idx.to(logits.device), query_idx.to(logits.device), labels.to(logits.device)] = 1.0
    return target


def max_score_logits(logits: Tensor) -> Tensor:
    """[N, Q, T] region-text logits -> [N, T] image-text logits, max over queries (MIL)."""
    return logits.max(dim=1).values


def largest_box_logits(logits: Tensor, boxes: Tensor) -> Tensor:
    """[N, Q, T] logits, [N, Q, 4] cxcywh -> [N, T] logits of each image's largest predicted box (Detic)."""
    largest = (boxes[..., 2] * boxes[..., 3]).argmax(dim=1)  # (n,)
    return logits[torch.arange(len(logits), device=logits.device), largest]
