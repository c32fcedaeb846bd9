"""Assigner time per batch: each one-to-many assigner (ours) vs ovdet's HungarianMatcher (peer), same run.

Run: ``python tests/benchmarks/bench_assigners.py [--batch 32 --grid 30 --texts 80 --targets 50]``.
The problem is a single-level ``grid x grid`` token grid (Q = 900 by default, priors of 4 cells),
random logits, predicted boxes jittered around their priors, N random targets per image. The peer is
the one-to-one ``HungarianMatcher()(outputs, targets)`` (per-image costs and scipy in a thread pool on the CPU) on the same
batch: the assignment a DETR-style criterion would run instead. ``ratio`` is peer / ours (> 1: ours
is faster). Times are medians of interleaved rounds, so a load change hits every contender alike.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from ovdet.losses.assigners import ONE_TO_MANY, Priors, build_assigner
from ovdet.losses.matcher import HungarianMatcher
from ovdet.ops.boxes import grid_centers


def square_grid_priors(grid: int, scale: float = 4.0) -> Priors:
    """One level of ``grid x grid`` tokens, each prior a square of ``scale`` cells, not clipped."""
    centers = grid_centers(grid, grid)  # (q, 2)
    boxes = torch.cat([centers, torch.full_like(centers, scale / grid)], dim=1)  # (q, 4)
    return Priors(boxes, torch.full((len(boxes),), 1.0 / grid), torch.zeros(len(boxes), dtype=torch.int64))


def make_problem(batch: int, grid: int, texts: int, targets: int, seed: int = 0):
    """outputs, targets and priors of a random batch on a ``grid x grid`` token grid."""
    generator = torch.Generator().manual_seed(seed)
    priors = square_grid_priors(grid)
    queries = len(priors.boxes)
    jitter = torch.randn(batch, queries, 2, generator=generator) * priors.strides[None, :, None]
    centres = (priors.boxes[:, :2] + jitter).clamp(0.01, 0.99)
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
    return outputs, image_targets, priors


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--grid", type=int, default=30, help="token grid side: Q = grid * grid")
    parser.add_argument("--texts", type=int, default=80)
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads, 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    outputs, targets, priors = make_problem(args.batch, args.grid, args.texts, args.targets)
    matcher = HungarianMatcher()
    assigners = {name: build_assigner(name) for name in ONE_TO_MANY}
    fns: dict[str, Callable[[], object]] = {"peer": lambda: matcher(outputs, targets)}
    for name, assigner in assigners.items():
        fns[name] = lambda assigner=assigner: assigner(outputs, targets, priors)
    ms = median_ms(fns, args.repeats)

    print(
        f"problem: B={args.batch} Q={len(priors.boxes)} ({args.grid}x{args.grid} grid) T={args.texts} "
        f"targets/image={args.targets}, torch threads={torch.get_num_threads()}, "
        f"median of {args.repeats} interleaved rounds"
    )
    print(f"peer: ovdet HungarianMatcher (one-to-one, scipy per image) {ms['peer']:8.1f} ms/batch")
    print(f"{'assigner':10s} {'ours ms':>9s} {'peer ms':>9s} {'ratio':>7s} {'positives/image':>16s}")
    for name, assigner in assigners.items():
        positives = sum(len(a.pred_idx) for a in assigner(outputs, targets, priors)) / args.batch
        print(f"{name:10s} {ms[name]:9.1f} {ms['peer']:9.1f} {ms['peer'] / ms[name]:6.2f}x {positives:16.1f}")


if __name__ == "__main__":
    main()
