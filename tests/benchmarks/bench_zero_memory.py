"""Optimizer-state bytes per rank: ours (ZeRO-2) vs the peer (ZeRO-0, plain data parallel), 2 ranks.

Run: ``DS_ACCELERATOR=cpu python tests/benchmarks/bench_zero_memory.py`` (it re-launches itself
as ``deepspeed --num_gpus 2 ... --worker``). Both engines wrap the same DetectionTask (the default
``minilm-efficientnet-lite0`` with the text tower unfrozen, so there are enough parameters) and
take one step on the same hand-built batch, so AdamW's state exists. We count, on each rank, the
sum of ``nbytes`` of every tensor in the optimizer state: for ZeRO-0 the client AdamW's
``exp_avg``/``exp_avg_sq``; for ZeRO-2 the same moments of DeepSpeed's partitioned fp32 groups
(``engine.optimizer.optimizer.state``), plus, reported apart, the fp32 master partition ZeRO keeps.
Target: ours/peer <= 0.55 (the moments halve on 2 ranks; the rest is padding).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch


def state_bytes(state: dict) -> int:
    return sum(
        v.nbytes for per_param in state.values() for v in per_param.values() if isinstance(v, torch.Tensor)
    )


def synthetic_batch(image_size: int, batch_size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    texts = [["red circle", "blue square", "a photo of a green star."] for _ in range(batch_size)]
    return {
        "images": torch.randint(
            0, 255, (batch_size, 3, image_size, image_size), dtype=torch.uint8, generator=generator
        ),
        "texts": texts,
        "labels": [torch.tensor([0, 1]) for _ in range(batch_size)],
        "boxes": [torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2]]) for _ in range(batch_size)],
        "image_labels": [torch.zeros(0, dtype=torch.long) for _ in range(batch_size)],
        "has_boxes": torch.ones(batch_size, dtype=torch.bool),
    }


def measure(zero_stage: int, args) -> dict:
    from ovdet.config import load_config
    from ovdet.models.factory import create_detector
    from ovdet.train.engine import build_engine
    from ovdet.train.task import DetectionTask

    overrides = [f"model.name={args.model}", "model.freeze_text=false", f"train.zero_stage={zero_stage}",
                 f"loader.batch_size={args.batch}", f"loader.image_size={args.image_size}", "train.precision=fp32"]  # fmt: skip
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    task = DetectionTask(create_detector(cfg.model), cfg.loss)
    engine = build_engine(task, cfg.train, cfg.model, cfg.loader)
    total, _ = engine(synthetic_batch(args.image_size, args.batch))
    engine.backward(total)
    engine.step()
    trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    if zero_stage == 0:
        moments, master = state_bytes(engine.optimizer.state), 0
    else:
        moments = state_bytes(engine.optimizer.optimizer.state)
        master = sum(t.nbytes for t in engine.optimizer.single_partition_of_fp32_groups)
    return {"trainable_params": trainable, "moments_bytes": moments, "master_bytes": master}


def worker(args) -> None:
    from ovdet import dist

    dist.init_distributed()
    torch.set_num_threads(1)
    results = {"zero0": measure(0, args), "zero2": measure(2, args)}
    gathered = [None] * dist.world_size()
    torch.distributed.all_gather_object(gathered, results)
    if dist.is_main():
        Path(args.result).write_text(json.dumps(gathered))


def report(per_rank: list[dict]) -> None:
    print(f"trainable parameters: {per_rank[0]['zero0']['trainable_params']:,}  ranks: {len(per_rank)}")
    for rank, results in enumerate(per_rank):
        ours, peer = results["zero2"]["moments_bytes"], results["zero0"]["moments_bytes"]
        print(f"rank {rank}: optimizer state (AdamW moments) ours ZeRO-2 {ours / 2**20:8.1f} MiB   "
              f"peer ZeRO-0 {peer / 2**20:8.1f} MiB   ratio {ours / peer:.3f}   "
              f"(+ ZeRO-2 fp32 master partition {results['zero2']['master_bytes'] / 2**20:.1f} MiB)")  # fmt: skip
    worst = max(r["zero2"]["moments_bytes"] / r["zero0"]["moments_bytes"] for r in per_rank)
    print(f"ours (ZeRO-2) / peer (ZeRO-0), worst rank: ratio {worst:.3f}  (target <= 0.55)")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-efficientnet-lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="/tmp/ovdet-bench-zero-memory.json", help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "OMP_NUM_THREADS": "1"}
    deepspeed = Path(sys.executable).parent / "deepspeed"
    command = [str(deepspeed), "--num_gpus", "2", "--master_port", str(free_port()), __file__, "--worker", "--result", args.result,
               "--model", args.model, "--image-size", str(args.image_size), "--batch", str(args.batch)]  # fmt: skip
    subprocess.run(command, env=env, check=True, capture_output=True)
    report(json.loads(Path(args.result).read_text()))


if __name__ == "__main__":
    main()
