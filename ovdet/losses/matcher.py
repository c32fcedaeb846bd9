"""One-to-one assignment between queries and ground-truth boxes (DETR's Hungarian matcher).

Targets name their class by an index into that image's own text list (a category prompt or a
grounding phrase), so the class cost is gathered per image. All cost matrices are built in one
batched computation over targets padded to the largest count in the batch; only the assignment
(``scipy.optimize.linear_sum_assignment``) runs per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ovdet.config import LossConfig
from ovdet.ops.boxes import batched_generalized_box_iou, box_cxcywh_to_xyxy

# Padding for absent targets: a valid box keeps the padded GIoU columns finite; they are never read.
PAD_BOX_CXCYWH = 0.5


class HungarianMatcher(nn.Module):
    """Matches each target box to one query by minimising a weighted sum of three costs.

    class: the focal-style cost of Deformable-DETR / MM-Grounding-DINO at the target's text,
    ``alpha * (1 - p)^gamma * -log(p) - (1 - alpha) * p^gamma * -log(1 - p)``;
    bbox: L1 distance between normalized cxcywh boxes; giou: minus the GIoU of the xyxy boxes.
    Queries left unmatched are background.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0, every assignment would be equal")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def forward(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """Match the queries of each image to its targets.

        Args:
            outputs: ``"pred_logits"`` [B, Q, T] region-text logits; ``"pred_boxes"`` [B, Q, 4]
                normalized cxcywh in [0, 1]; optional ``"text_mask"`` [B, T] bool, True for real
                texts (False for padding), used only to check that labels point at real texts.
            targets: B dicts with ``"labels"`` int64 [N_b] (indices into that image's T texts) and
                ``"boxes"`` [N_b, 4] normalized cxcywh. N_b may be 0 and must be at most Q.

        Returns:
            B tuples ``(pred_idx, tgt_idx)``, both int64 [N_b] on the CPU, pred_idx sorted
            ascending: query ``pred_idx[i]`` is matched to target ``tgt_idx[i]``.
        """
        cost, sizes = self.cost_matrix(outputs, targets)
        return self.assign(cost, sizes)

    @torch.no_grad()
    def cost_matrix(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[Tensor, list[int]]:
        """Weighted costs [B, Q, Nmax] (columns past N_b are padding) and the target counts [B]."""
        pred_logits = outputs["pred_logits"].float()  # (bs, q, t)
        pred_boxes = outputs["pred_boxes"].float()  # (bs, q, 4)
        num_queries = pred_logits.shape[1]
        sizes = [len(t["labels"]) for t in targets]
        check_target_counts(sizes, num_queries)
        labels = pad_sequence([t["labels"].long() for t in targets], batch_first=True)  # (bs, mo)
        boxes = pad_sequence(
            [t["boxes"].to(pred_boxes) for t in targets], batch_first=True, padding_value=PAD_BOX_CXCYWH
        )  # (bs, mo, 4)
        if "text_mask" in outputs:
            check_labels_are_real_texts(labels, sizes, outputs["text_mask"])

        # Gather first: the cost is elementwise, and Nmax targets are usually fewer than T texts.
        target_logits = pred_logits.gather(2, labels[:, None, :].expand(-1, num_queries, -1))  # (bs, q, mo)
        cost_class = self.focal_class_cost(target_logits)  # (bs, q, mo)
        cost_bbox = torch.cdist(pred_boxes, boxes, p=1)  # (bs, q, mo)
        cost_giou = -batched_generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(boxes))
        cost = self.cost_class * cost_class + self.cost_bbox * cost_bbox + self.cost_giou * cost_giou
        return cost, sizes

    def focal_class_cost(self, logits: Tensor) -> Tensor:
        """(...) logits of queries for target texts -> (...) focal matching cost."""
        prob = logits.sigmoid()
        # -log(p) = softplus(-x) and -log(1 - p) = softplus(x), stable where p saturates.
        pos = self.focal_alpha * (1 - prob).pow(self.focal_gamma) * F.softplus(-logits)
        neg = (1 - self.focal_alpha) * prob.pow(self.focal_gamma) * F.softplus(logits)
        return pos - neg

    @staticmethod
    def assign(cost: Tensor, sizes: list[int]) -> list[tuple[Tensor, Tensor]]:
        """Hungarian assignment per image on ``cost[b, :, :sizes[b]]`` (one device-to-host copy)."""
        cost_np = cost.cpu().numpy()  # (bs, q, mo)
        indices = []
        for b, size in enumerate(sizes):
            pred_idx, tgt_idx = linear_sum_assignment(cost_np[b, :, :size])
            indices.append(
                (torch.as_tensor(pred_idx, dtype=torch.int64), torch.as_tensor(tgt_idx, dtype=torch.int64))
            )
        return indices


def build_matcher(cfg: LossConfig) -> HungarianMatcher:
    """The matcher with the costs and focal parameters of the loss config."""
    return HungarianMatcher(
        cost_class=cfg.cost_class,
        cost_bbox=cfg.cost_bbox,
        cost_giou=cfg.cost_giou,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
    )


def check_target_counts(sizes: list[int], num_queries: int) -> None:
    """A one-to-one matching needs at least as many queries as targets in every image."""
    for b, size in enumerate(sizes):
        if size > num_queries:
            raise ValueError(
                f"HungarianMatcher: image {b} has {size} targets but the model has only {num_queries} "
                "queries; raise the number of queries or cap the boxes per image"
            )


def check_labels_are_real_texts(labels: Tensor, sizes: list[int], text_mask: Tensor) -> None:
    """labels [B, Nmax] (padded), text_mask [B, T]: every real label must point at a real text."""
    is_target = (
        torch.arange(labels.shape[1], device=labels.device)[None, :]
        < torch.tensor(sizes, device=labels.device)[:, None]
    )  # (bs, mo)
    is_padded_text = ~text_mask.bool().gather(1, labels)  # (bs, mo)
    bad = (is_target & is_padded_text).nonzero()
    if len(bad):
        b, i = bad[0].tolist()
        raise ValueError(
            f"HungarianMatcher: image {b} target {i} has label {labels[b, i].item()}, a padded text"
        )
