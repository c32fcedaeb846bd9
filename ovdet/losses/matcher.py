"""One-to-one assignment between queries and ground-truth boxes (DETR's Hungarian matcher).

Targets name their class by an index into that image's own text list (a category prompt or a
grounding phrase), so the class cost is gathered per image. Each image's cost is a [N_b, Q] matrix
(targets x queries), the orientation scipy's ``linear_sum_assignment`` solves in, so a block goes to
it without a transposing copy. No cost is computed for padding targets.

Where the work runs depends on the device. On the CPU, each image's cost and assignment run
together in a pool of worker threads, one per torch thread, each running torch single-threaded
(torch's kernels and scipy's solver release the GIL): a [N_b, Q] block stays in a core's cache,
where a [B, Q, Nmax] batch runs at memory speed. On an accelerator, the costs of all images are
computed in one batched pass over their concatenated targets ([sum N_b, Q]), copied to the host
once, and the workers run only the assignments. Each image's result comes from its own data alone,
so it never depends on thread timing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ovdet.config import LossConfig
from ovdet.ops.boxes import cxcywh_l1_and_giou

Assignment = tuple[Tensor, Tensor]
Item = TypeVar("Item")
Result = TypeVar("Result")


class HungarianMatcher(nn.Module):
    """Matches each target box to one query by minimising a weighted sum of three costs.

    class: the focal-style cost of Deformable-DETR / MM-Grounding-DINO at the target's text,
    ``alpha * (1 - p)^gamma * -log(p) - (1 - alpha) * p^gamma * -log(1 - p)``;
    bbox: L1 distance between normalized cxcywh boxes; giou: minus the GIoU of the boxes.
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
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[Assignment]:
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
        sizes = [len(t["labels"]) for t in targets]
        check_target_counts(sizes, outputs["pred_logits"].shape[1])
        if "text_mask" in outputs:
            labels = pad_sequence([t["labels"] for t in targets], batch_first=True)  # (bs, mo)
            check_labels_are_real_texts(labels, sizes, outputs["text_mask"])
        if outputs["pred_logits"].device.type == "cpu":
            return map_in_workers(
                lambda b: solve_assignment(self.image_cost(outputs, targets, b)), range(len(targets))
            )
        return self.assign(self.batch_costs(outputs, targets), sizes)

    @torch.no_grad()
    def image_cost(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], image: int) -> Tensor:
        """The weighted cost [N_b, Q] float32 of image ``image``: its targets (rows) against its queries."""
        target = targets[image]
        target_logits = outputs["pred_logits"][image].T.index_select(0, target["labels"])  # (n, q)
        pred_boxes = outputs["pred_boxes"][image].float().T.contiguous()[:, None, :]  # (4, 1, q)
        target_boxes = target["boxes"].to(pred_boxes).T.contiguous()[:, :, None]  # (4, n, 1)
        return self.pair_costs(target_logits, pred_boxes, target_boxes)

    @torch.no_grad()
    def batch_costs(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
        """The costs of all images in one pass: [sum N_b, Q] float32, rows the targets of every
        image in order (image 0's N_0 rows first), each against the queries of its own image."""
        pred_logits, device = outputs["pred_logits"], outputs["pred_logits"].device
        sizes = torch.tensor([len(t["labels"]) for t in targets])
        image = torch.repeat_interleave(torch.arange(len(targets)), sizes).to(device)  # (s,)
        labels = torch.cat([t["labels"] for t in targets]).to(device)  # (s,)
        target_logits = pred_logits[image, :, labels]  # (s, q)
        pred_boxes = outputs["pred_boxes"].float().permute(2, 0, 1)[:, image]  # (4, s, q)
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(pred_boxes)  # (s, 4)
        return self.pair_costs(target_logits, pred_boxes, target_boxes.T.contiguous()[:, :, None])

    def pair_costs(self, target_logits: Tensor, pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """Weighted cost [N, Q] float32 of every (target, query) pair.

        target_logits [N, Q] (any float dtype): each query's logit at each target's text;
        pred_boxes [4, 1 or N, Q] and target_boxes [4, N, 1]: float32 cxcywh, coordinate first.
        """
        cost = self.focal_class_cost(target_logits.float()).mul_(self.cost_class)  # (n, q)
        l1, giou = cxcywh_l1_and_giou(pred_boxes, target_boxes)  # (n, q) each
        return cost.add_(l1, alpha=self.cost_bbox).sub_(giou, alpha=self.cost_giou)

    def focal_class_cost(self, logits: Tensor) -> Tensor:
        """(...) logits of queries for target texts -> (...) focal matching cost."""
        prob = logits.sigmoid()
        # -log(1 - p) = softplus(x) is stable where p saturates, and -log(p) = softplus(x) - x.
        minus_log_not_prob = F.softplus(logits)
        minus_log_prob = minus_log_not_prob - logits
        cost = (1 - prob).pow_(self.focal_gamma).mul_(minus_log_prob).mul_(self.focal_alpha)  # pos
        return cost.addcmul_(prob.pow_(self.focal_gamma), minus_log_not_prob, value=self.focal_alpha - 1)

    @staticmethod
    def assign(costs: Tensor, sizes: list[int]) -> list[Assignment]:
        """Hungarian assignment per image on the rows of ``costs`` [sum N_b, Q] grouped by image, as
        ``batch_costs`` returns them (one device-to-host copy; the solves run in the workers)."""
        blocks = np.split(costs.cpu().numpy(), np.cumsum(sizes)[:-1].tolist())  # B x (n, q)
        return map_in_workers(solve_assignment, blocks)


def solve_assignment(cost: Tensor | np.ndarray) -> Assignment:
    """scipy's optimal assignment of one image's cost [N, Q] (N <= Q, on the CPU) ->
    ``(pred_idx, tgt_idx)`` int64 [N], pred_idx ascending."""
    tgt_idx, pred_idx = linear_sum_assignment(np.asarray(cost))
    order = np.argsort(pred_idx)
    return torch.from_numpy(pred_idx[order]), torch.from_numpy(tgt_idx[order])


def map_in_workers(fn: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """``[fn(item) for item in items]``, run in the matcher's worker threads when there is more than
    one: results keep the order of the items whatever order the threads finish in."""
    num_workers = torch.get_num_threads()
    if num_workers == 1 or len(items) < 2:
        return [fn(item) for item in items]
    return list(worker_pool(num_workers).map(fn, items))


@functools.cache
def worker_pool(num_workers: int) -> ThreadPoolExecutor:
    """The matcher's threads, created on first use and reused: one per torch intra-op thread, so
    the matcher uses the CPUs torch was given.

    Each worker runs torch on one thread (a per-thread setting; torch's DataLoader sets it in its
    pin-memory thread the same way): the workers are the parallelism, and intra-op threads inside
    each on [N_b, Q] blocks would oversubscribe the cores (measured 1.8x slower on 2 cores).
    """
    return ThreadPoolExecutor(
        num_workers, thread_name_prefix="ovdet-matcher", initializer=torch.set_num_threads, initargs=(1,)
    )


# A forked child (a DataLoader worker) inherits the pool but not its threads: start afresh there.
os.register_at_fork(after_in_child=worker_pool.cache_clear)


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
