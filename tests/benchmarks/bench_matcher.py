"""Matcher time per batch: ours vs a plain per-image loop and a DETR-style matcher, in the same run.

Run: ``python tests/benchmarks/bench_matcher.py [--batch 32 --queries 900 --texts 80 --targets 50
--max-targets 100]``. Two problems: ``--targets`` boxes in every image, then a count drawn per image
from 0..``--max-targets`` (where padding to the largest count would cost the most).

Peers, both with the same focal class, L1 and GIoU costs:
- per-image loop: for each image, its cost [Q, N_b] (logits gathered at its labels, ``torch.cdist``,
  torchvision's ``generalized_box_iou``), then scipy's ``linear_sum_assignment``, one image after
  the other; the ratio the matcher is held to.
- DETR-style: Deformable-DETR's matcher as written in DETR's ``models/matcher.py``: queries
  flattened to [B*Q, ...], costs against the targets of ALL images concatenated (C [B*Q, sum N]),
  split per image, scipy per image. It is slow, so it runs in fewer rounds (``--detr-repeats``).

All three must reach the same total assignment cost (each scored on the per-image peer's costs).
``ours, one thread`` is ours with torch (and so the matcher's worker pool) limited to one thread.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou

from ovdet.losses.matcher import HungarianMatcher
from ovdet.ops.boxes import box_cxcywh_to_xyxy


@torch.no_grad()
def per_image_match(matcher: HungarianMatcher, outputs, targets):
    """The plain loop: each image's cost [Q, N_b], scipy on it; returns (indices, cost blocks)."""
    alpha, gamma = matcher.focal_alpha, matcher.focal_gamma
    indices, blocks = [], []
    for b, target in enumerate(targets):
        logits = outputs["pred_logits"][b].index_select(1, target["labels"])  # (q, n)
        prob = logits.sigmoid()
        pos = alpha * (1 - prob) ** gamma * F.softplus(-logits)
        neg = (1 - alpha) * prob**gamma * F.softplus(logits)
        pred_boxes, target_boxes = outputs["pred_boxes"][b], target["boxes"]
        cost_bbox = torch.cdist(pred_boxes, target_boxes, p=1)  # (q, n)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes))
        cost = (
            matcher.cost_class * (pos - neg) + matcher.cost_bbox * cost_bbox + matcher.cost_giou * cost_giou
        )
        pred_idx, tgt_idx = linear_sum_assignment(cost.numpy())
        indices.append((torch.as_tensor(pred_idx), torch.as_tensor(tgt_idx)))
        blocks.append(cost)
    return indices, blocks


@torch.no_grad()
def detr_style_match(matcher: HungarianMatcher, outputs, targets):
    """DETR's matcher with the focal cost; returns (indices, per-image cost blocks)."""
    bs, num_queries = outputs["pred_logits"].shape[:2]
    prob = outputs["pred_logits"].flatten(0, 1).sigmoid()  # (bs*q, t)
    out_bbox = outputs["pred_boxes"].flatten(0, 1)  # (bs*q, 4)
    tgt_ids = torch.cat([t["labels"] for t in targets])  # (sum n,)
    tgt_bbox = torch.cat([t["boxes"] for t in targets])  # (sum n, 4)
    alpha, gamma = matcher.focal_alpha, matcher.focal_gamma
    neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
    cost_class = pos[:, tgt_ids] - neg[:, tgt_ids]  # (bs*q, sum n)
    cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
    cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
    cost = matcher.cost_bbox * cost_bbox + matcher.cost_class * cost_class + matcher.cost_giou * cost_giou
    cost = cost.view(bs, num_queries, -1).cpu()
    sizes = [len(t["boxes"]) for t in targets]
    blocks = [c[b] for b, c in enumerate(cost.split(sizes, -1))]
    indices = [linear_sum_assignment(block) for block in blocks]
    return [(torch.as_tensor(i), torch.as_tensor(j)) for i, j in indices], blocks


def make_problem(queries: int, texts: int, target_counts: list[int], seed: int = 0):
    """Random outputs for len(target_counts) images and that many random targets in each."""
    batch = len(target_counts)
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, queries, 2, generator=generator) * 0.8 + 0.1
    sizes = torch.rand(batch, queries, 2, generator=generator) * 0.3 + 0.02
    outputs = {
        "pred_logits": torch.randn(batch, queries, texts, generator=generator) * 2 - 3,
        "pred_boxes": torch.cat([centres, sizes], dim=-1),
    }
    image_targets = []
    for count in target_counts:
        centre = torch.rand(count, 2, generator=generator) * 0.8 + 0.1
        size = torch.rand(count, 2, generator=generator) * 0.3 + 0.02
        labels = torch.randint(texts, (count,), generator=generator)
        image_targets.append({"labels": labels, "boxes": torch.cat([centre, size], dim=-1)})
    return outputs, image_targets


def median_ms(fns: dict[str, tuple[Callable[[], object], int]]) -> dict[str, float]:
    """Median wall time of each ``(function, repeats)``; rounds interleave the functions so load
    changes hit all alike (a function with fewer repeats sits out the last rounds)."""
    for fn, _ in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(max(repeats for _, repeats in fns.values())):
        for name, (fn, repeats) in fns.items():
            if round_index < repeats:
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def with_one_thread(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def assignment_cost(blocks, indices) -> float:
    return sum(float(block[i, j].sum()) for block, (i, j) in zip(blocks, indices, strict=True))


def compare(name: str, target_counts: list[int], args: argparse.Namespace) -> None:
    outputs, targets = make_problem(args.queries, args.texts, target_counts)
    matcher = HungarianMatcher()
    peer_indices, peer_blocks = per_image_match(matcher, outputs, targets)
    totals = {
        "ours": assignment_cost(peer_blocks, matcher(outputs, targets)),
        "per-image": assignment_cost(peer_blocks, peer_indices),
        "DETR": assignment_cost(peer_blocks, detr_style_match(matcher, outputs, targets)[0]),
    }
    reference = totals["per-image"]
    if any(abs(total - reference) > 1e-3 * max(1.0, abs(reference)) for total in totals.values()):
        raise SystemExit(f"{name}: assignment costs differ: {totals}")

    ms = median_ms(
        {
            "ours": (lambda: matcher(outputs, targets), args.repeats),
            "per-image": (lambda: per_image_match(matcher, outputs, targets), args.repeats),
            "DETR": (lambda: detr_style_match(matcher, outputs, targets), args.detr_repeats),
            "ours, one thread": (with_one_thread(lambda: matcher(outputs, targets)), args.repeats),
        }
    )
    print(
        f"\n{name}: B={len(target_counts)} Q={args.queries} T={args.texts}, sum N={sum(target_counts)} "
        f"(max {max(target_counts)}), torch threads={torch.get_num_threads()}, median of {args.repeats} "
        f"interleaved rounds ({args.detr_repeats} for DETR)"
    )
    print(f"ours (HungarianMatcher)                  {ms['ours']:8.1f} ms/batch")
    print(f"peer: per-image loop (cost, scipy)       {ms['per-image']:8.1f} ms/batch")
    print(f"ratio (per-image / ours)                 {ms['per-image'] / ms['ours']:8.2f}x")
    print(f"peer: DETR-style matcher                 {ms['DETR']:8.1f} ms/batch")
    print(f"ratio (DETR / ours)                      {ms['DETR'] / ms['ours']:8.2f}x")
    print(f"ours, one thread                         {ms['ours, one thread']:8.1f} ms/batch")
    print("total assignment cost: " + ", ".join(f"{key} {value:.4f}" for key, value in totals.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--queries", type=int, default=900)
    parser.add_argument("--texts", type=int, default=80)
    parser.add_argument("--targets", type=int, default=50, help="boxes per image, first problem")
    parser.add_argument("--max-targets", type=int, default=100, help="second problem: 0..this per image")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--detr-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads, 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    compare("same N", [args.targets] * args.batch, args)
    generator = torch.Generator().manual_seed(1)
    varied = torch.randint(args.max_targets + 1, (args.batch,), generator=generator).tolist()
    compare("varied N", varied, args)


if __name__ == "__main__":
    main()
