"""Loader throughput: ours (decode + letterbox + texts + collate) vs the PIL JPEG-decode ceiling.

    python tests/benchmarks/bench_loader.py [--size 192 --image-size 192 --batches 60 --rounds 3 --workers 2]

Shards the synthetic world's three training sources once (``ovdet shard`` layout, cached in
``--work``), then, on the same JPEG bytes:

* ours: ``TrainLoader.iterate(--batches)`` with ``--workers`` DataLoader workers, batch 16 per
  step, ``num_negatives`` 60 (the demo's loader). Timed from the ``iterate`` call (DataLoader
  worker start included) to the last batch.
* peer (the ceiling): ``--workers`` processes, each running ``Image.open(BytesIO(b)).convert("RGB")``
  over its half of the very JPEG bytes the loader read in that round (same samples, same count).
  Pool start-up is not timed.

``--rounds`` rounds alternate ours and peer; prints the median samples/s of each, ``ratio``
(ours / ceiling) and every round's pair.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import tempfile
import time
from pathlib import Path

from PIL import Image

from ovdet.config import LoaderConfig, SourceConfig, SynthConfig


def make_shards(work: Path, size: int) -> Path:
    from ovdet.pipelines.shard import run_shard_stage

    from ovdet.config import DataConfig
    from ovdet.data.shards import MANIFEST
    from ovdet.data.synthetic import generate_world

    world = work / f"world-{size}"
    generate_world(
        SynthConfig(image_size=size, num_detection=200, num_grounding=100, num_image_text=200, num_eval=0),
        world,
        progress=False,
    )
    shards = work / f"shards-{size}"
    if not (shards / MANIFEST).exists():
        sources = [
            SourceConfig("detection", "detection", "coco", ["detection_train.json"], "images", 1.0),
            SourceConfig("grounding", "grounding", "odvg", ["grounding_train.jsonl"], "images", 0.5),
            SourceConfig("image-text", "image_text", "jsonl", ["image_text_train.jsonl"], "images", 1.0),
        ]
        run_shard_stage(
            DataConfig(root=str(world), sources=sources, samples_per_shard=64), shards, progress=False
        )
    return shards


def decode_all(jpegs: list[bytes]) -> int:
    for data in jpegs:
        Image.open(io.BytesIO(data)).convert("RGB")
    return len(jpegs)


def ceiling_samples_per_second(pool, jpegs: list[bytes], workers: int) -> float:
    halves = [jpegs[i::workers] for i in range(workers)]
    start = time.perf_counter()
    done = sum(pool.map(decode_all, halves, chunksize=1))
    return done / (time.perf_counter() - start)


def loader_samples_per_second(loader, batches: int) -> tuple[float, list[bytes]]:
    """Samples/s of the next ``batches`` batches, and the JPEG bytes of exactly those samples."""
    first = loader.batches_consumed * loader.global_batch_size
    start = time.perf_counter()
    count = sum(len(batch["key"]) for batch in loader.iterate(batches))
    seconds = time.perf_counter() - start
    dataset = loader.dataset
    jpegs = [dataset.read(*dataset.stream.locate(k))[0] for k in range(first, first + count)]
    return count / seconds, jpegs


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    from ovdet.data.loader import TrainLoader

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="synthetic image side in pixels (COCO-like)")
    parser.add_argument("--image-size", type=int, default=192, help="loader input size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=100, help="batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ovdet-bench-loader")
    args = parser.parse_args()

    shards = make_shards(args.work, args.size)
    cfg = LoaderConfig(image_size=args.image_size, batch_size=args.batch_size, num_workers=args.workers)
    loader = TrainLoader([shards], cfg)
    ours, peer = [], []
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        pool.map(decode_all, [[]] * args.workers)  # start the processes before timing
        for _ in range(args.rounds):  # interleaved, so load changes on a shared machine hit both alike
            rate, jpegs = loader_samples_per_second(loader, args.batches)
            ours.append(rate)
            peer.append(ceiling_samples_per_second(pool, jpegs, args.workers))

    print(
        f"problem: {args.rounds} rounds x {len(jpegs)} samples of the synthetic world ({args.size}px JPEGs) -> "
        f"{args.image_size}px input, batch {args.batch_size}, {args.workers} workers, {cfg.num_negatives} negatives"
    )
    print(f"ours (TrainLoader, decode + letterbox + texts + collate)  {median(ours):8.1f} samples/s (median)")
    print(
        f"peer (PIL decode ceiling, {args.workers} processes)                {median(peer):8.1f} samples/s (median)"
    )
    print(f"ratio (ours / ceiling)                                    {median(ours) / median(peer):8.2f}")
    print(
        "per round (ours / ceiling): "
        + ", ".join(f"{o:.0f}/{p:.0f}" for o, p in zip(ours, peer, strict=True))
    )


if __name__ == "__main__":
    main()
