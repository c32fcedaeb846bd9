"""Pseudo-label stage throughput: 2 Ray workers (actors) vs 1 on the same shards.

    python tests/benchmarks/bench_pseudo_label.py [--images 400 --per-shard 25 --workers 2]

The demo's world and model: ``--images`` image-text samples of the synthetic world at 192 px,
sharded ``--per-shard`` a shard, and the demo model (MiniLM text tower, EfficientNet-Lite0) after
one training step (``ovdet train``), so its heads are a real checkpoint's. Each run is the whole
stage as ``ovdet pseudo-label`` runs it: Ray start, one model load per actor, every shard labelled,
manifest written. Both runs must write identical shards.

Prints samples/s of each and the ratio (2 workers / 1 worker); the issue's bar is 1.6x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from ovdet.pipelines.pseudo_label import run_pseudo_label_stage

from ovdet.config import PseudoLabelConfig
from ovdet.fileio import sha256_file

REPO = Path(__file__).resolve().parents[2]


def ovdet(*args: str) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    subprocess.run([sys.executable, "-m", "ovdet.cli", *args], check=True, cwd=REPO, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def prepare(work: Path, images: int, per_shard: int) -> tuple[Path, Path]:
    world, shards, run = work / "world", work / "shards", work / "train"
    if not (world / "world.json").exists():
        ovdet("synth", "--out", str(world), "synth.num_detection=16", "synth.num_grounding=0",
              f"synth.num_image_text={images}", "synth.num_eval=0")  # fmt: skip
    if not (shards / "manifest.json").exists():  # the synthetic data config without its grounding source
        data = yaml.safe_load((REPO / "configs" / "data" / "synthetic.yaml").read_text())
        data.update(root=str(world), samples_per_shard=per_shard,
                    sources=[s for s in data["sources"] if s["kind"] != "grounding"])  # fmt: skip
        (work / "data.yaml").write_text(yaml.safe_dump(data))
        ovdet("shard", "--config", str(work / "data.yaml"), "--out", str(shards))
    if not (run / "final" / "model.safetensors").exists():
        ovdet("train", "--config", "configs/demo.yaml", "--out", str(run), f"loader.shard_dirs=[{shards}]",
              "loader.sources=[synth-detection]", "train.steps=1", "train.warmup_steps=0", "loader.num_workers=0")
    return shards, run


def timed_run(model: Path, shards: Path, out: Path, workers: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = run_pseudo_label_stage(str(model), shards, out, PseudoLabelConfig(threshold=0.05, num_workers=workers),
                                      progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    return seconds, sum(source["read"] for source in manifest["sources"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--per-shard", type=int, default=25)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ovdet-bench-pseudo-label")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    shards, model = prepare(args.work, args.images, args.per_shard)
    one_s, one_n = timed_run(model, shards, args.work / "out-1", 1)
    many_s, many_n = timed_run(model, shards, args.work / f"out-{args.workers}", args.workers)
    digests = [{p.relative_to(out): sha256_file(p) for p in out.rglob("*.tar")}
               for out in (args.work / "out-1", args.work / f"out-{args.workers}")]  # fmt: skip
    if digests[0] != digests[1] or one_n != many_n:
        raise SystemExit("the two runs wrote different shards")
    print(f"problem: {one_n} image-text samples at 192 px in {len(digests[0])} shards, the demo model, "
          f"threshold 0.05; one run each (Ray start and model loads included)")
    print(f"1 worker (peer)        {one_s:7.2f} s   {one_n / one_s:6.2f} samples/s")
    print(f"{args.workers} workers (ours)       {many_s:7.2f} s   {many_n / many_s:6.2f} samples/s")
    print(f"ratio ({args.workers} workers / 1)      {one_s / many_s:7.2f}x   (bar: 1.6x)")


if __name__ == "__main__":
    main()
