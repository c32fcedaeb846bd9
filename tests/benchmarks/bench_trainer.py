"""Training steps/s: ours (``run_training``, DeepSpeed engine, 1 rank) vs a bare PyTorch loop.

Run: ``DS_ACCELERATOR=cpu python tests/benchmarks/bench_trainer.py [--shards DIR --steps 40]``
(without ``--shards`` it writes the tiny synthetic world to a temp folder first). The peer is a
bare loop over the same batches, pre-materialised from the same loader: the same DetectionTask
forward, ``loss.backward()``, gradient clipping, ``AdamW.step()``, the same LR schedule, nothing
else. Ours adds data loading (one worker), the cross-rank agreement, metrics, checkpoint-free
logging. Both time steps 2..N (the first step warms up allocators); target ours/peer >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

TINY = ["model.name=tiny-vit-minilm", "model.feature_indices=[1]", "loader.image_size=64", "train.threads=1",
        "train.checkpoint_every=0", "train.warmup_steps=5"]  # fmt: skip


def build_tiny_world(root: Path) -> Path:
    ovdet = str(Path(sys.executable).parent / "ovdet")
    world = [
        "synth.image_size=64",
        "synth.num_detection=32",
        "synth.num_grounding=16",
        "synth.num_image_text=32",
    ]
    subprocess.run([ovdet, "synth", "--out", str(root / "world"), *world], check=True, capture_output=True)
    repo = Path(__file__).resolve().parents[2]
    text = (
        (repo / "configs" / "data" / "synthetic.yaml")
        .read_text()
        .replace("samples_per_shard: 256", "samples_per_shard: 16")
    )
    lines = [f"root: {root / 'world'}" if line.startswith("root:") else line for line in text.splitlines()]
    (root / "data.yaml").write_text("\n".join(lines) + "\n")
    subprocess.run([ovdet, "shard", "--config", str(root / "data.yaml"), "--out", str(root / "shards")], check=True,
                   capture_output=True)  # fmt: skip
    return root / "shards"


def ours(cfg, shards: Path, out: Path) -> float:
    """Steps/s over steps 2..N from the trainer's own timing window (setup and export excluded)."""
    from ovdet.train.trainer import run_training

    cfg.train.log_every = 1
    run_training(cfg.train, cfg.model, cfg.loss, cfg.loader, [shards], out, {}, progress=False)
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(cfg.loader.batch_size / r["samples_per_s"] for r in rows[1:])
    return (len(rows) - 1) / seconds


def peer(cfg, shards: Path) -> float:
    from ovdet.data.loader import TrainLoader
    from ovdet.models.factory import create_detector
    from ovdet.train.engine import param_groups, warmup_cosine
    from ovdet.train.task import DetectionTask

    batches = list(TrainLoader([shards], cfg.loader).iterate(cfg.train.steps))
    torch.manual_seed(cfg.train.seed)
    task = DetectionTask(create_detector(cfg.model), cfg.loss)
    optimizer = torch.optim.AdamW(param_groups(task.detector, cfg.train, cfg.model), lr=cfg.train.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.train))
    trainable = [p for p in task.parameters() if p.requires_grad]
    start = 0.0
    for index, batch in enumerate(batches):
        if index == 1:
            start = time.perf_counter()
        total, _ = task(batch)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.train.grad_clip)
        optimizer.step()
        schedule.step()
        float(total)
    return (len(batches) - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=None, help="shard folder (default: build the tiny world)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from ovdet.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(args.shards) if args.shards else build_tiny_world(Path(tmp))
        overrides = [*TINY, f"train.steps={args.steps}", f"loader.batch_size={args.batch}"]
        torch.set_num_threads(1)
        peer_rate = peer(load_config(None, [*overrides, "loader.num_workers=0"]), shards)
        ours_rate = ours(load_config(None, [*overrides, "loader.num_workers=1"]), shards, Path(tmp) / "train")
    print(f"tiny-vit-minilm, image 64, batch {args.batch}, {args.steps} steps, 1 rank, 1 thread")
    print(f"ours (ovdet run_training, DeepSpeed ZeRO-0 fp32): {ours_rate:6.2f} steps/s")
    print(f"peer (bare PyTorch loop, pre-materialised batches): {peer_rate:6.2f} steps/s")
    print(f"ratio ours/peer: {ours_rate / peer_rate:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
