"""Matcher time per batch: ours (batched padded costs) vs a DETR-style matcher, in the same run.

Run: ``python tests/benchmarks/bench_matcher.py [--batch 32 --queries 900 --texts 80 --targets 50]``.
The peer is Deformable-DETR's matcher (focal class cost) as written in DETR's ``models/matcher.py``:
queries flattened to [B*Q, ...], costs against the targets of ALL images concatenated
(C [B*Q, sum N]), split per image, scipy per image. Both must reach the same total assignment cost.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou

from ovdet.losses.matcher import HungarianMatcher
from ovdet.ops.boxes import box_cxcywh_to_xyxy


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


def make_problem(batch: int, queries: int, texts: int, targets: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, queries, 2, generator=generator) * 0.8 + 0.1
    sizes = torch.rand(batch, queries, 2, generator=generator) * 0.3 + 0.02
    outputs = {
        "pred_logits": torch.randn(batch, queries, texts, generator=generator) * 2 - 3,
        "pred_boxes": torch.cat([centres, sizes], dim=-1),
    }
    image_targets = []
    for _ in range(batch):
        centre = torch.rand(targets, 2, generator=generator) * 0.8 + 0.1
        size = torch.rand(targets, 2, generator=generator) * 0.3 + 0.02
        labels = torch.randint(texts, (targets,), generator=generator)
        image_targets.append({"labels": labels, "boxes": torch.cat([centre, size], dim=-1)})
    return outputs, image_targets


def median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function; rounds interleave them so load changes hit all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def assignment_cost(blocks, indices) -> float:
    return sum(float(block[i, j].sum()) for block, (i, j) in zip(blocks, indices, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--queries", type=int, default=900)
    parser.add_argument("--texts", type=int, default=80)
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads, 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    outputs, targets = make_problem(args.batch, args.queries, args.texts, args.targets)
    matcher = HungarianMatcher()
    ours_indices = matcher(outputs, targets)
    cost, sizes = matcher.cost_matrix(outputs, targets)
    peer_indices, peer_blocks = detr_style_match(matcher, outputs, targets)
    ours_total = assignment_cost([cost[b, :, :n] for b, n in enumerate(sizes)], ours_indices)
    peer_total = assignment_cost(peer_blocks, peer_indices)
    if abs(ours_total - peer_total) > 1e-3 * max(1.0, abs(peer_total)):
        raise SystemExit(f"assignment costs differ: ours {ours_total:.4f}, peer {peer_total:.4f}")

    ms = median_ms(
        {
            "ours": lambda: matcher(outputs, targets),
            "peer": lambda: detr_style_match(matcher, outputs, targets),
            "build": lambda: matcher.cost_matrix(outputs, targets),
            "assign": lambda: HungarianMatcher.assign(cost, sizes),
        },
        args.repeats,
    )
    ours_ms, peer_ms, build_ms, assign_ms = ms["ours"], ms["peer"], ms["build"], ms["assign"]

    print(
        f"problem: B={args.batch} Q={args.queries} T={args.texts} targets/image={args.targets}, "
        f"torch threads={torch.get_num_threads()}, median of {args.repeats} interleaved rounds"
    )
    print(f"ours                       {ours_ms:8.1f} ms/batch")
    print(f"peer (DETR-style matcher)  {peer_ms:8.1f} ms/batch")
    print(f"ratio (peer / ours)        {peer_ms / ours_ms:8.2f}x")
    print(f"ours: cost build {build_ms:.1f} ms, assignment {assign_ms:.1f} ms")
    print(f"total assignment cost: ours {ours_total:.4f}, peer {peer_total:.4f} (same)")


if __name__ == "__main__":
    main()
