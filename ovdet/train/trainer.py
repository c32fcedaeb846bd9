"""The distributed trainer: one DetectionTask wrapped by a DeepSpeed engine.

``run_training(...)`` builds the detector, loader, optimizer and engine from the config, resumes
from the latest checkpoint if there is one, trains, logs, checkpoints, and exports
``final/model.safetensors`` + ``final/model_spec.json``. It runs as one process, under the
``deepspeed`` launcher, under ``torchrun`` and under Slurm ``srun``; on CPU machines set
``DS_ACCELERATOR=cpu``. The trainer does not import eval: the caller passes ``validate``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ovdet import dist
from ovdet.config import LoaderConfig, LossConfig, ModelConfig, TrainConfig
from ovdet.errors import OvdetError

log = logging.getLogger(__name__)


def init_distributed() -> None:
    """Start torch.distributed from launcher/Slurm variables (single process: a world of one)."""
    import deepspeed

    dist.export_torch_env_from_slurm()
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else None, verbose=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def param_groups(detector: torch.nn.Module, train: TrainConfig, model: ModelConfig) -> list[dict[str, Any]]:
    """AdamW groups: per tower (LR multiplier) x (decay, or none for norms and biases)."""
    multipliers = {"text": model.lr_mult_text, "image": model.lr_mult_image, "heads": 1.0}
    groups = []
    for tower, named in detector.parameter_groups_by_tower().items():
        decay = [p for n, p in named if p.ndim > 1 and not n.endswith(".bias")]
        no_decay = [p for n, p in named if not (p.ndim > 1 and not n.endswith(".bias"))]
        for params, weight_decay in ((decay, train.weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "lr": train.lr * multipliers[tower], "weight_decay": weight_decay})
    return groups


def warmup_cosine(train: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return train.min_lr_ratio + (1 - train.min_lr_ratio) * cosine

    return factor


def deepspeed_config(train: TrainConfig, loader: LoaderConfig) -> dict[str, Any]:
    if train.precision == "fp16" and not torch.cuda.is_available():
        raise OvdetError("train.precision=fp16 needs a GPU (DeepSpeed's CPU accelerator has fp32 and bf16)")
    return {
        "train_micro_batch_size_per_gpu": loader.batch_size,
        "gradient_accumulation_steps": train.grad_accumulation,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16", "initial_scale_power": 12},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(task: torch.nn.Module, train: TrainConfig, model: ModelConfig, loader: LoaderConfig):
    import deepspeed

    from ovdet.train.checkpoint import WeightsOnlyCheckpointEngine

    optimizer = torch.optim.AdamW(param_groups(task.detector, train, model), lr=train.lr, betas=(0.9, 0.999))
    schedule = warmup_cosine(train)
    engine, _, _, _ = deepspeed.initialize(
        model=task,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=deepspeed_config(train, loader),
    )
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine()
    return engine


class MetricsLog:
    """Rank 0 writes metrics to ``metrics.jsonl`` and TensorBoard; other ranks write nothing."""

    def __init__(self, out_dir: Path):
        self.enabled = dist.is_main()
        self.path = out_dir / "metrics.jsonl"
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
            self.path.write_text("".join(kept))

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


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks of a small float64 vector (on the engine's device, so it also
    works with NCCL); identity on one rank."""
    if dist.world_size() > 1 and dist.is_initialized():
        import torch.distributed as torch_dist

        torch_dist.all_reduce(values)
    return values


def export_weights(engine, out_dir: Path, spec: dict[str, Any], extra: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` (detector weights) and ``model_spec.json`` (how to rebuild it)."""
    from safetensors.torch import save_file

    state = engine.module.detector.state_dict()
    if engine.zero_optimization_stage() == 3:
        consolidated = engine._zero3_consolidated_16bit_state_dict()  # collective; None on ranks > 0
        state = {k.removeprefix("detector."): v for k, v in (consolidated or {}).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        tensors = {k: v.detach().float().contiguous().clone() for k, v in state.items()}
        save_file(tensors, str(out_dir / "model.safetensors"))
        (out_dir / "model_spec.json").write_text(json.dumps({"spec": spec, **extra}, indent=1))
    return out_dir


def run_training(
    train: TrainConfig,
    model_cfg: ModelConfig,
    loss_cfg: LossConfig,
    loader_cfg: LoaderConfig,
    shard_dirs: list[Path],
    out_dir: Path,
    resolved_config: dict[str, Any],
    validate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
    validate_every: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train to ``train.steps`` optimizer steps (resuming if a checkpoint exists); returns a summary.

    ``summary["stopped"]`` is ``"completed"`` or ``"preempted by SIGTERM"``/``SIGUSR1``; after a
    preemption the weights are checkpointed but not exported (the run is not finished).
    """
    from ovdet.data.loader import TrainLoader
    from ovdet.models.factory import create_detector, resolve_model_spec
    from ovdet.train.task import DetectionTask

    init_distributed()
    if train.threads:
        torch.set_num_threads(train.threads)
    seed_everything(train.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = resolve_model_spec(model_cfg)
    task = DetectionTask(create_detector(model_cfg), loss_cfg)
    engine = build_engine(task, train, model_cfg, loader_cfg)
    loader = TrainLoader(shard_dirs, loader_cfg, dist.rank(), dist.world_size())
    state = resume_state(engine, loader, out_dir / "checkpoints", train.resume)
    if dist.is_main():
        (out_dir / "config.json").write_text(json.dumps(resolved_config, indent=1))
    loop = TrainingLoop(engine, loader, train, out_dir, state, validate, validate_every, progress)
    loop.run()
    if loop.stop_reason == "completed":
        export_weights(engine, out_dir / "final", spec, {"step": state["step"], "config": resolved_config})
    summary = {"step": state["step"], "resumed_from": state["resumed_from"], "stopped": loop.stop_reason}
    return {**summary, "out_dir": str(out_dir), **loop.last_metrics}


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resume_state(engine, loader, ckpt_dir: Path, resume: str) -> dict[str, int]:
    """Load the checkpoint ``resume`` names into engine, loader and RNGs; returns the train state."""
    from ovdet.train.checkpoint import load_checkpoint, resolve_resume, step_of

    state = {"step": 0, "micro_step": 0, "nonfinite_total": 0, "resumed_from": -1}
    where = resolve_resume(ckpt_dir, resume)
    if where is None:
        return state
    client = load_checkpoint(engine, where)
    loader.load_state_dict(client["dataloader"])
    state.update(client["train_state"])
    if state["step"] != step_of(where[1]):
        raise OvdetError(f"{where[0]}/{where[1]}: train_state says step {state['step']}")
    state["resumed_from"] = state["step"]
    log.info("resumed from %s/%s at step %d", *where, state["step"])
    return state


UNBOUNDED_BATCHES = 2**62  # the loop, not the loader, decides when to stop (skipped steps use batches)


class TrainingLoop:
    """The step loop: forward, agree across ranks (non-finite? preempted?), backward, step, log,
    checkpoint. Ranks take every decision together, so none is left waiting in a collective."""

    def __init__(self, engine, loader, train: TrainConfig, out_dir: Path, state: dict, validate, validate_every, progress):
        from ovdet.train.signals import PreemptionFlag

        self.engine, self.loader, self.train, self.state = engine, loader, train, state
        self.ckpt_dir = out_dir / "checkpoints"
        self.validate, self.validate_every = validate, validate_every
        self.metrics = MetricsLog(out_dir)
        self.metrics.truncate_after(state["step"])
        self.preemption = PreemptionFlag()
        self.is_preempted = False
        self.progress = progress and dist.is_main()
        self.stop_reason = "completed"
        self.last_metrics: dict[str, float] = {}
        self.last_saved_step = state["resumed_from"]
        self.consecutive_nonfinite = 0
        self.window_start, self.window_samples = time.perf_counter(), 0
        self.sums: dict[str, float] = {}

    def run(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.train.steps, initial=self.state["step"], desc="train", disable=not self.progress)
        try:
            self.train_steps()
            if self.stop_reason == "completed" and self.last_saved_step != self.state["step"]:
                self.save()
        finally:
            self.bar.close()
            self.metrics.close()
            self.preemption.restore()

    def train_steps(self) -> None:
        batches = self.loader.iterate(UNBOUNDED_BATCHES)
        while self.state["step"] < self.train.steps:
            batch = next(batches)  # fetched only when needed: the loader position stays exact
            self.engine.module.step = self.state["step"]  # loss schedules follow the optimizer step
            total, parts = self.engine(batch)
            if not self.agree_is_finite(total):
                self.skip_nonfinite()
                continue
            self.consecutive_nonfinite = 0
            self.engine.backward(total)
            self.engine.step()
            self.accumulate(total, parts, len(batch["texts"]))
            self.state["micro_step"] += 1
            if self.state["micro_step"] % self.train.grad_accumulation == 0:
                self.after_step()
                if self.is_preempted:
                    self.stop_for_preemption()
                    break
        batches.close()

    def agree_is_finite(self, total: torch.Tensor) -> bool:
        """One all-reduce per micro-step: any rank non-finite -> all skip; any rank signalled ->
        all stop after this optimizer step."""
        flags = torch.tensor(
            [0.0 if torch.isfinite(total).all() else 1.0, 1.0 if self.preemption.is_set else 0.0],
            dtype=torch.float64,
            device=total.device,
        )
        nonfinite, preempted = sum_across_ranks(flags).tolist()
        self.is_preempted = self.is_preempted or preempted > 0
        return nonfinite == 0

    def skip_nonfinite(self) -> None:
        self.consecutive_nonfinite += 1
        self.state["nonfinite_total"] += 1
        step = self.state["step"]
        log.warning("non-finite loss at step %d skipped (%d in a row)", step, self.consecutive_nonfinite)
        if self.consecutive_nonfinite >= self.train.max_nonfinite_steps:
            raise OvdetError(
                f"{self.consecutive_nonfinite} consecutive non-finite losses at step {step}: stopping; "
                f"the last good checkpoint is kept in {self.ckpt_dir} (lower train.lr or check the data)"
            )

    def stop_for_preemption(self) -> None:
        from ovdet.train.signals import requeue_slurm_job

        if self.last_saved_step != self.state["step"]:
            self.save()
        self.stop_reason = f"preempted by {self.preemption.signal_name or 'a signal on another rank'}"
        log.warning("stopped at step %d: %s (checkpoint saved)", self.state["step"], self.stop_reason)
        # Only Slurm's pre-timeout signal (--signal=USR1@T) asks for a requeue; SIGTERM comes from
        # scancel or from Slurm's own requeue, and requeueing then would undo a user's cancel.
        if self.preemption.signal_name == "SIGUSR1":
            requeue_slurm_job()

    def accumulate(self, total, parts, batch_size: int) -> None:
        self.sums["loss"] = self.sums.get("loss", 0.0) + float(total.detach())
        for key, value in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value.detach())
        self.sums["_count"] = self.sums.get("_count", 0.0) + 1
        self.window_samples += batch_size * dist.world_size()

    def after_step(self) -> None:
        """Per optimizer step: log, checkpoint, validate."""
        step = self.state["step"] = self.state["step"] + 1
        self.bar.update(1)
        if step % self.train.log_every == 0 or step == self.train.steps:
            self.log_window(step)
        if self.train.checkpoint_every and step % self.train.checkpoint_every == 0:
            self.save()
        if self.validate and self.validate_every and step % self.validate_every == 0:
            self.metrics.write(step, {f"val/{k}": v for k, v in self.validate(self.engine.module.detector, step).items()})

    def window_means(self) -> dict[str, float]:
        """Mean of each loss over the window's micro-steps and over ranks (the global batch)."""
        keys = sorted(k for k in self.sums if k != "_count")
        sums = torch.tensor([self.sums[k] for k in keys] + [self.sums.get("_count", 0.0)], dtype=torch.float64)
        sums = sum_across_ranks(sums.to(self.engine.device)).cpu().tolist()
        count = max(1.0, sums[-1])
        return {k: v / count for k, v in zip(keys, sums[:-1], strict=True)}

    def log_window(self, step: int) -> None:
        values = self.window_means()
        elapsed = time.perf_counter() - self.window_start
        values["lr"] = float(self.engine.get_lr()[0])
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        values["samples_per_s"] = self.window_samples / max(elapsed, 1e-9)
        values["max_rss_mib"] = max_rss_mib()
        values["nonfinite_total"] = float(self.state["nonfinite_total"])
        self.metrics.write(step, values)
        self.last_metrics = values
        self.bar.set_postfix(loss=f"{values.get('loss', float('nan')):.3f}", sps=f"{values['samples_per_s']:.1f}")
        self.sums, self.window_samples, self.window_start = {}, 0, time.perf_counter()

    def save(self) -> None:
        from ovdet.train.checkpoint import save_checkpoint

        train_state = {k: self.state[k] for k in ("step", "micro_step", "nonfinite_total")}
        save_checkpoint(self.engine, self.ckpt_dir, self.state["step"], self.loader.state_dict(), train_state, self.train.keep_checkpoints)
        self.last_saved_step = self.state["step"]


def max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
