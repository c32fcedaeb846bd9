"""Shard stage wall time: ours (Ray tasks, 2 workers) vs a single-process webdataset.ShardWriter loop.

    python tests/benchmarks/bench_shard.py [--images 300 --size 512 --max-side 384 --workers 2]

Both read the same synthetic world (COCO detection JSON + JPEGs, generated once into
``--work``) and do the same work per record: ``ovdet.data.sources.iter_source`` (annotation
validation) and ``ovdet.data.images.load_image`` (full decode, checks, resize to ``--max-side``
so every image is re-encoded), then write ``KEY.jpg`` + ``KEY.json`` tars of
``--per-shard`` samples.

* ours: ``ovdet.pipelines.shard.run_shard_stage`` with ``num_cpus=--workers``, timed three ways:
  cold (``ray.init`` and ``ray.shutdown`` inside the stage, as one ``ovdet shard`` runs), warm
  (Ray already started; its worker processes still start and import on the first tasks), and
  steady (a second run on the same cluster: plan, tasks and manifest only).
* peer: one process, ``iter_source`` -> ``load_image`` -> ``webdataset.ShardWriter``.

Prints ``ours`` (cold and warm), ``peer (single-process webdataset.ShardWriter)`` and both
ratios (peer / ours), and checks that both wrote the same samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from ovdet.config import DataConfig, SourceConfig, SynthConfig
from ovdet.data.synthetic import generate_world


def make_world(work: Path, images: int, size: int) -> Path:
    world = work / f"world-{images}-{size}"
    generate_world(
        SynthConfig(image_size=size, num_detection=images, num_grounding=0, num_image_text=0, num_eval=0),
        world,
        progress=False,
    )
    return world


def data_config(world: Path, args) -> DataConfig:
    source = SourceConfig("det", "detection", "coco", ["detection_train.json"], "images", 1.0)
    return DataConfig(
        root=str(world),
        sources=[source],
        samples_per_shard=args.per_shard,
        max_image_side=args.max_side,
        num_cpus=args.workers,
    )


def run_ours(cfg: DataConfig, out: Path) -> tuple[float, int]:
    from ovdet.pipelines.shard import run_shard_stage

    start = time.perf_counter()
    manifest = run_shard_stage(cfg, out, progress=False)
    return time.perf_counter() - start, sum(s["written"] for s in manifest["sources"].values())


def run_ours_warm(cfg: DataConfig, out: Path) -> tuple[float, float, float, int]:
    """Seconds for ray.init alone, for the stage on the running cluster (its workers start and
    import on first use), and for a second stage run (workers already up)."""
    import ray

    start = time.perf_counter()
    ray.init(
        num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
    )
    startup = time.perf_counter() - start
    try:
        first, written = run_ours(cfg, out / "first")
        steady, _ = run_ours(cfg, out / "second")
    finally:
        ray.shutdown()
    return startup, first, steady, written


def run_peer(cfg: DataConfig, out: Path) -> tuple[float, int]:
    import webdataset as wds

    from ovdet.data.images import load_image
    from ovdet.data.records import Record
    from ovdet.data.sources import iter_source

    start = time.perf_counter()
    written = 0
    for source in cfg.sources:
        (out / source.name).mkdir(parents=True, exist_ok=True)
        pattern = str(out / source.name / f"{source.name}-%06d.tar")
        with wds.ShardWriter(pattern, maxcount=cfg.samples_per_shard, verbose=0) as sink:
            for item in iter_source(source, Path(cfg.root)):
                if not isinstance(item, Record):
                    continue
                jpeg, record = load_image(item, cfg.max_image_side, cfg.jpeg_quality, cfg.max_image_pixels)
                sink.write(
                    {"__key__": record.key, "jpg": jpeg, "json": json.dumps(record.to_json(), sort_keys=True)}
                )
                written += 1
    return time.perf_counter() - start, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500)
    # 512 px, not 192: at 192 px a whole image costs ~1 ms and the comparison measures only overheads
    parser.add_argument("--size", type=int, default=512, help="synthetic image side in pixels")
    parser.add_argument(
        "--max-side", type=int, default=384, help="resize target: forces a re-encode of every image"
    )
    parser.add_argument("--per-shard", type=int, default=25)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ovdet-bench-shard")
    args = parser.parse_args()

    world = make_world(args.work, args.images, args.size)
    cfg = data_config(world, args)
    outputs = args.work / "out"
    shutil.rmtree(outputs, ignore_errors=True)
    peer_s, peer_n = run_peer(cfg, outputs / "peer")
    cold_s, cold_n = run_ours(cfg, outputs / "ours-cold")
    startup_s, warm_s, steady_s, warm_n = run_ours_warm(cfg, outputs / "ours-warm")
    if not peer_n == cold_n == warm_n:
        raise SystemExit(f"written samples differ: peer {peer_n}, ours cold {cold_n}, ours warm {warm_n}")

    print(
        f"problem: {args.images} synthetic {args.size}px JPEGs -> max side {args.max_side} (re-encoded), "
        f"{args.per_shard} per shard, {args.workers} Ray workers; one run each"
    )
    print(f"ours, cold (Ray start-up + shutdown included)   {cold_s:7.2f} s   {cold_n / cold_s:7.1f} img/s")
    print(f"ours, warm (Ray already running)              {warm_s:7.2f} s   {warm_n / warm_s:7.1f} img/s")
    print(f"ours, steady (Ray and its workers running)    {steady_s:7.2f} s   {warm_n / steady_s:7.1f} img/s")
    print(f"  (ray.init alone took {startup_s:.2f} s)")
    print(f"peer (single-process webdataset.ShardWriter)  {peer_s:7.2f} s   {peer_n / peer_s:7.1f} img/s")
    print(f"ratio (peer / ours), cold                     {peer_s / cold_s:7.2f}x")
    print(f"ratio (peer / ours), warm                     {peer_s / warm_s:7.2f}x")
    print(f"ratio (peer / ours), steady                   {peer_s / steady_s:7.2f}x")


if __name__ == "__main__":
    main()
