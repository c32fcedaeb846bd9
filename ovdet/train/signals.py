"""Preemption: SIGTERM / SIGUSR1 (Slurm's ``--signal=USR1@120``) ask the loop to save and stop;
only SIGUSR1 also requeues the Slurm job (SIGTERM is what scancel sends)."""

from __future__ import annotations

import logging
import signal
import subprocess

from ovdet import dist

log = logging.getLogger(__name__)


class PreemptionFlag:
    """Set by a signal handler; the training loop checks it every micro-step and, once any rank
    has it, all ranks finish the current optimizer step, save and stop together."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)):
        self.signal_name: str | None = None
        self.previous = {sig: signal.signal(sig, self.handle) for sig in signals}

    def restore(self) -> None:
        """Put back the handlers that were installed before (in-process callers, tests)."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        log.warning("received %s: finishing the current step, saving, exiting", self.signal_name)

    @property
    def is_set(self) -> bool:
        return self.signal_name is not None


def requeue_slurm_job() -> bool:
    """Under Slurm, requeue this job (rank 0 only) so it restarts and resumes; True if requeued."""
    job_id = dist.slurm_job_id()
    if job_id is None or not dist.is_main():
        return False
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        log.error("scontrol requeue %s failed: %s", job_id, result.stderr.strip())
        return False
    log.warning("requeued Slurm job %s", job_id)
    return True
