"""What the trainer logs: losses averaged over a window of steps and over ranks, written by rank 0
to ``metrics.jsonl`` (one JSON object per logged step) and TensorBoard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ovdet import dist
from ovdet.fileio import write_text_atomic
from ovdet.runs import TrainPaths


class MetricsLog:
    """Rank 0 writes metrics to ``metrics.jsonl`` and TensorBoard; other ranks write nothing."""

    def __init__(self, out_dir: Path):
        self.enabled = dist.is_main()
        self.path = TrainPaths(out_dir).metrics_log
        self.writer = None
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (by a run killed after its last checkpoint), so a
        resumed run's ``metrics.jsonl`` reads like an uninterrupted one's."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        if len(kept) != len(lines):
            write_text_atomic(self.path, "".join(kept))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as stream:
            stream.write(json.dumps({"step": step, **values}) + "\n")
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class LossWindow:
    """Sums of the total and named losses over the micro-steps since the last log, and the samples
    they took (all ranks), for the per-window means and throughput."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.micro_steps = 0
        self.samples = 0
        self.start = time.perf_counter()

    def add(self, total: torch.Tensor, parts: dict[str, torch.Tensor], batch_size: int) -> None:
        self.sums["loss"] = self.sums.get("loss", 0.0) + float(total.detach())
        for key, value in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value.detach())
        self.micro_steps += 1
        self.samples += batch_size * dist.world_size()

    def means(self) -> dict[str, float]:
        """Mean of each loss over the window's micro-steps and over ranks (the global batch)."""
        keys = sorted(self.sums)
        sums = dist.sum_over_ranks([self.sums[k] for k in keys] + [float(self.micro_steps)])
        count = max(1.0, sums[-1])
        return {k: v / count for k, v in zip(keys, sums[:-1], strict=True)}

    def samples_per_second(self) -> float:
        return self.samples / max(time.perf_counter() - self.start, 1e-9)


def max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
