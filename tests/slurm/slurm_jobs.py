"""Helpers of the Slurm tests: submit with `ovdet submit` as a user does, poll `scontrol show job`
until a final state (sacct needs slurmdbd, which the CI cluster lacks), read the job's logs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}
JOB_TIMEOUT_S = 420
TINY_TRAINING = ["model.name=tiny-vit-minilm", "model.feature_indices=[1]", "loader.image_size=64",
                 "loader.num_workers=0", "loader.batch_size=4", "train.threads=1", "train.warmup_steps=2"]


def job_fields(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def job_logs(run_dir: Path) -> str:
    parts = []
    for path in sorted((run_dir / "slurm").glob("*.out")) + sorted((run_dir / "slurm").glob("*.err")):
        parts.append(f"---- {path.name}\n{path.read_text(errors='replace')[-3000:]}")  # a killed task may cut a UTF-8 tqdm bar
    return "\n".join(parts)


def wait_for_job(job_id: str, run_dir: Path, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, str]:
    """Poll until the job reaches a final state; a requeued job waiting out its BeginTime is released."""
    deadline = time.monotonic() + timeout_s
    fields: dict[str, str] = {}
    held_since = None
    while time.monotonic() < deadline:
        fields = job_fields(job_id)
        if fields.get("JobState") in FINAL_STATES:
            return fields
        held = fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime"
        held_since = (held_since or time.monotonic()) if held else None
        if held and time.monotonic() - held_since >= RELEASE_AFTER_S:
            release_requeued_job(job_id)
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], check=False)
    pytest.fail(f"job {job_id} still {fields.get('JobState')} after {timeout_s} s\n{job_logs(run_dir)}")


# Slurm holds a requeued job for cred_expire (120 s by default) before it may start again; on a real
# cluster that is harmless, here it would only slow the tests down, so the job is released early. Not
# at once: credentials have one-second times, and a restart's credential issued in the second the
# requeue revoked the old one is refused as revoked ("Killing non-startable batch JobId=N: Job
# credential revoked"), which fails the job.
RELEASE_AFTER_S = 2.0


def release_requeued_job(job_id: str) -> None:
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False, capture_output=True)


def ovdet_submit(stage: str, config: Path, run_dir: Path, *args: str, env: dict[str, str]) -> str:
    """`ovdet submit STAGE ...` as a user types it; returns the job id it prints."""
    command = [sys.executable, "-m", "ovdet.submit", stage, "--config", str(config), "--run-dir", str(run_dir),
               "--time", "00:10:00", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert job_id.isdigit(), result.stdout
    return job_id


def read_metrics(train_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]


def training_args(shards: Path, steps: int) -> list[str]:
    """6 steps of the tiny model at a constant LR after warmup, a checkpoint and a log line every 2."""
    return [f"loader.shard_dirs=[{shards}]", *TINY_TRAINING, "train.min_lr_ratio=1.0", f"train.steps={steps}",
            "train.checkpoint_every=2", "train.log_every=2"]


def submit_and_wait(run_config: Path, run_dir: Path, resources: list[str], shards: Path, steps: int,
                    env: dict[str, str]) -> dict[str, str]:
    job_id = ovdet_submit("train", run_config, run_dir, *resources, *training_args(shards, steps), env=env)
    fields = wait_for_job(job_id, run_dir)
    assert fields["JobState"] == "COMPLETED", job_logs(run_dir)
    return fields
