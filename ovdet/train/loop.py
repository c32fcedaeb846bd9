"""The step loop: forward, agree across ranks (non-finite? preempted?), backward, step, log,
checkpoint, validate. Ranks take every decision together, so none is left waiting in a collective."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from ovdet import dist
from ovdet.config import TrainConfig
from ovdet.errors import OvdetError
from ovdet.runs import TrainPaths
from ovdet.train.checkpoint import save_checkpoint
from ovdet.train.metrics_log import LossWindow, MetricsLog, max_rss_mib
from ovdet.train.signals import PreemptionFlag, requeue_slurm_job
from ovdet.train.state import TrainState

log = logging.getLogger(__name__)

UNBOUNDED_BATCHES = 2**62  # the loop, not the loader, decides when to stop (skipped steps use batches)


class TrainingLoop:
    """Trains ``engine`` on ``loader`` from ``state`` to ``train.steps`` optimizer steps.

    ``run()`` leaves ``stop_reason`` (``"completed"`` or ``"preempted by SIGTERM"``/``SIGUSR1``)
    and ``last_metrics`` (the last logged window). ``resumed_from`` is the step of the checkpoint
    ``state`` came from (-1: a fresh start); it is already saved, so it is not saved again.
    """

    def __init__(
        self,
        engine,
        loader,
        train: TrainConfig,
        out_dir: Path,
        state: TrainState,
        resumed_from: int = -1,
        validate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
        validate_every: int = 0,
        progress: bool = True,
    ):
        self.engine, self.loader, self.train, self.state = engine, loader, train, state
        self.ckpt_dir = TrainPaths(out_dir).checkpoints
        self.validate, self.validate_every = validate, validate_every
        self.metrics = MetricsLog(out_dir)
        self.metrics.truncate_after(state.step)
        self.window = LossWindow()
        self.preemption = PreemptionFlag()
        self.is_preempted = False
        self.progress = progress and dist.is_main()
        self.stop_reason = "completed"
        self.last_metrics: dict[str, float] = {}
        self.last_saved_step = resumed_from
        self.consecutive_nonfinite = 0

    def run(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.train.steps, initial=self.state.step, desc="train", disable=not self.progress)
        try:
            self.train_steps()
            if self.stop_reason == "completed" and self.last_saved_step != self.state.step:
                self.save()
        finally:
            self.bar.close()
            self.metrics.close()
            self.preemption.restore()

    def train_steps(self) -> None:
        batches = self.loader.iterate(UNBOUNDED_BATCHES)
        while self.state.step < self.train.steps:
            batch = next(batches)  # fetched only when needed: the loader position stays exact
            self.engine.module.step = self.state.step  # loss schedules follow the optimizer step
            total, parts = self.engine(batch)
            if not self.agree_is_finite(total):
                self.skip_nonfinite()
                continue
            self.consecutive_nonfinite = 0
            self.engine.backward(total)
            self.engine.step()
            self.window.add(total, parts, len(batch["texts"]))
            self.state.micro_step += 1
            if self.state.micro_step % self.train.grad_accumulation == 0:
                self.after_step()
                if self.is_preempted:
                    self.stop_for_preemption()
                    break
        batches.close()

    def agree_is_finite(self, total: torch.Tensor) -> bool:
        """One all-reduce per micro-step: any rank non-finite -> all skip; any rank signalled ->
        all stop after this optimizer step."""
        is_nonfinite = 0.0 if torch.isfinite(total).all() else 1.0
        nonfinite, preempted = dist.sum_over_ranks([is_nonfinite, 1.0 if self.preemption.is_set else 0.0])
        self.is_preempted = self.is_preempted or preempted > 0
        return nonfinite == 0

    def skip_nonfinite(self) -> None:
        self.consecutive_nonfinite += 1
        self.state.nonfinite_total += 1
        step = self.state.step
        log.warning("non-finite loss at step %d skipped (%d in a row)", step, self.consecutive_nonfinite)
        if self.consecutive_nonfinite >= self.train.max_nonfinite_steps:
            raise OvdetError(
                f"{self.consecutive_nonfinite} consecutive non-finite losses at step {step}: stopping; "
                f"the last good checkpoint is kept in {self.ckpt_dir} (lower train.lr or check the data)"
            )

    def stop_for_preemption(self) -> None:
        if self.last_saved_step != self.state.step:
            self.save()
        self.stop_reason = f"preempted by {self.preemption.signal_name or 'a signal on another rank'}"
        log.warning("stopped at step %d: %s (checkpoint saved)", self.state.step, self.stop_reason)
        # Only Slurm's pre-timeout signal (--signal=USR1@T) asks for a requeue; SIGTERM comes from
        # scancel or from Slurm's own requeue, and requeueing then would undo a user's cancel.
        if self.preemption.signal_name == "SIGUSR1":
            requeue_slurm_job()

    def after_step(self) -> None:
        """Per optimizer step: log, checkpoint, validate."""
        self.state.step += 1
        step = self.state.step
        self.bar.update(1)
        if step % self.train.log_every == 0 or step == self.train.steps:
            self.log_window(step)
        if self.train.checkpoint_every and step % self.train.checkpoint_every == 0:
            self.save()
        if self.validate and self.validate_every and step % self.validate_every == 0:
            self.metrics.write(step, {f"val/{k}": v for k, v in self.validate(self.engine.module.detector, step).items()})

    def log_window(self, step: int) -> None:
        values = self.window.means()
        values["lr"] = float(self.engine.get_lr()[0])
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        values["samples_per_s"] = self.window.samples_per_second()
        values["max_rss_mib"] = max_rss_mib()
        values["nonfinite_total"] = float(self.state.nonfinite_total)
        self.metrics.write(step, values)
        self.last_metrics = values
        self.bar.set_postfix(loss=f"{values.get('loss', float('nan')):.3f}", sps=f"{values['samples_per_s']:.1f}")
        self.window.reset()

    def save(self) -> None:
        train_state = self.state.state_dict()
        save_checkpoint(self.engine, self.ckpt_dir, self.state.step, self.loader.state_dict(), train_state,
                        self.train.keep_checkpoints)
        self.last_saved_step = self.state.step
