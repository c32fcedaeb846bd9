"""`ovdet submit` on a real Slurm cluster: Ray sharding, 2-rank CPU training, preemption + resume.

The cluster is one node with 2 CPUs (scripts/slurm-ci/start_slurm.sh, SelectTypeParameters=CR_CPU),
so two 1-CPU training tasks fit. Jobs are tiny (64 px images, 2-layer ViT, a few hundred samples).
The world, its shards (written by a Slurm job) and the 2-rank run are the session's (conftest.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from slurm_jobs import (
    JOB_TIMEOUT_S,
    TINY_TRAINING,
    job_fields,
    job_logs,
    ovdet_submit,
    read_metrics,
    wait_for_job,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def test_shard_job_starts_ray_and_writes_every_source(shards):
    manifest = json.loads((shards / "manifest.json").read_text())
    assert set(manifest["sources"]) == {"synth-detection", "synth-grounding", "synth-image-text"}
    assert len(list(shards.rglob("*.tar"))) == 5  # 32/16 + 16/16 + 32/16
    log = job_logs(shards.parent)
    assert "Ray head on" in log and "written      32" in log


def test_two_cpu_ranks_train_to_the_requested_step(one_node_run):
    run_dir, fields = one_node_run
    assert fields["NumTasks"] == "2"
    train_dir = run_dir / "train"
    assert (train_dir / "final" / "model.safetensors").is_file()
    assert (train_dir / "checkpoints" / "latest").read_text().strip() == "step-0000006"
    assert (train_dir / "checkpoints" / "step-0000004").is_dir()  # keep_checkpoints=2
    assert [row["step"] for row in read_metrics(train_dir)] == [2, 4, 6]
    assert "2 tasks" in job_logs(run_dir)
    assert (run_dir / "slurm" / "run-train.sbatch").is_file()


@pytest.mark.parametrize("preempt", ["scontrol-requeue", "usr1-signal"])
def test_preempted_training_is_requeued_and_resumes_from_its_checkpoint(tiny_world, shards, slurm_job_env, tmp_path, preempt):
    _, run_config = tiny_world
    run_dir = tmp_path / "run"
    steps = 60  # about 15 s of two 1-CPU ranks: the preemption lands while they train
    job_id = ovdet_submit("train", run_config, run_dir, "--ntasks", "2", f"loader.shard_dirs=[{shards}]",
                          *TINY_TRAINING, f"train.steps={steps}", "train.checkpoint_every=5", "train.log_every=5",
                          env=slurm_job_env)
    latest = run_dir / "train" / "checkpoints" / "latest"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not latest.exists():
        assert job_fields(job_id).get("JobState") in {"PENDING", "RUNNING", "CONFIGURING"}, job_logs(run_dir)
        assert time.monotonic() < deadline, f"no checkpoint after {JOB_TIMEOUT_S} s\n{job_logs(run_dir)}"
        time.sleep(0.5)
    preempt_command = (["scontrol", "requeue", job_id] if preempt == "scontrol-requeue"
                       else ["scancel", "--signal=USR1", job_id])  # what --signal=USR1@120 sends at the time limit
    subprocess.run(preempt_command, check=True)

    fields = wait_for_job(job_id, run_dir)
    assert fields["JobState"] == "COMPLETED", job_logs(run_dir)
    assert fields["Restarts"] == "1"
    train_log = (run_dir / "train" / "logs" / "train.log").read_text(errors="replace")
    resumed = [int(k) for k in re.findall(r"resumed from \S+ at step (\d+)", train_log)]
    assert resumed and all(k > 0 for k in resumed), train_log[-3000:]
    assert "(restart 1)" in job_logs(run_dir)
    logged_steps = [row["step"] for row in read_metrics(run_dir / "train")]
    assert logged_steps[-1] == steps
    # The requeued run continues where the checkpoint left off instead of redoing steps from 0.
    assert sorted(set(logged_steps)) == list(range(5, steps + 1, 5))
    assert (run_dir / "train" / "checkpoints" / "latest").read_text().strip() == f"step-{steps:07d}"
