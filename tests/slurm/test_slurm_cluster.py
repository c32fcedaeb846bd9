"""`ovdet submit` on a real Slurm cluster: Ray sharding, 2-rank CPU training, preemption + resume.

The cluster is one node with 2 CPUs (scripts/slurm-ci/start_slurm.sh, SelectTypeParameters=CR_CPU),
so two 1-CPU training tasks fit. Jobs are tiny (64 px images, 2-layer ViT, a few hundred samples).
sacct needs slurmdbd, which the CI cluster lacks: job states come from `scontrol show job`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.slurm]

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
    while time.monotonic() < deadline:
        fields = job_fields(job_id)
        if fields.get("JobState") in FINAL_STATES:
            return fields
        release_requeued_job(job_id, fields)
        time.sleep(1)
    subprocess.run(["scancel", job_id], check=False)
    pytest.fail(f"job {job_id} still {fields.get('JobState')} after {timeout_s} s\n{job_logs(run_dir)}")


def release_requeued_job(job_id: str, fields: dict[str, str]) -> None:
    # Slurm holds a requeued job for cred_expire (120 s by default) before it may start again;
    # on a real cluster that is harmless, here it would only slow the test down.
    if fields.get("JobState") == "PENDING" and fields.get("Reason") == "BeginTime":
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


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory, slurm_job_env) -> tuple[Path, Path]:
    """(data config, run config) for a tiny synthetic world written on the submit host."""
    root = tmp_path_factory.mktemp("slurm-world")
    subprocess.run([sys.executable, "-m", "ovdet.cli", "synth", "--out", str(root / "world"), "synth.image_size=64",
                    "synth.num_detection=32", "synth.num_grounding=16", "synth.num_image_text=32", "synth.num_eval=8"],
                   check=True, capture_output=True, cwd=REPO)
    data = yaml.safe_load((REPO / "configs" / "data" / "synthetic.yaml").read_text())
    data.update(root=str(root / "world"), samples_per_shard=16)
    data_config = root / "data.yaml"
    data_config.write_text(yaml.safe_dump(data))
    run_config = root / "run.yaml"
    run_config.write_text(yaml.safe_dump({"run_dir": str(root / "run"), "data": data}))
    return data_config, run_config


@pytest.fixture(scope="module")
def shards(tiny_world, slurm_job_env, tmp_path_factory) -> Path:
    """Shards written by `ovdet submit shard`: a Ray head started by srun inside the job."""
    data_config, _ = tiny_world
    run_dir = tmp_path_factory.mktemp("shard-run")
    job_id = ovdet_submit("shard", data_config, run_dir, "--cpus-per-task", "2", env=slurm_job_env)
    fields = wait_for_job(job_id, run_dir)
    assert fields["JobState"] == "COMPLETED", job_logs(run_dir)
    return run_dir / "shards"


def test_shard_job_starts_ray_and_writes_every_source(shards):
    manifest = json.loads((shards / "manifest.json").read_text())
    assert set(manifest["sources"]) == {"synth-detection", "synth-grounding", "synth-image-text"}
    assert len(list(shards.rglob("*.tar"))) == 5  # 32/16 + 16/16 + 32/16
    log = job_logs(shards.parent)
    assert "Ray head on" in log and "written      32" in log


def read_metrics(train_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_cpu_ranks_train_to_the_requested_step(tiny_world, shards, slurm_job_env, tmp_path):
    _, run_config = tiny_world
    run_dir = tmp_path / "run"
    job_id = ovdet_submit("train", run_config, run_dir, "--nodes", "1", "--gpus-per-node", "0", "--ntasks", "2",
                          f"loader.shard_dirs=[{shards}]", *TINY_TRAINING, "train.steps=4",
                          "train.checkpoint_every=2", "train.log_every=2", env=slurm_job_env)
    fields = wait_for_job(job_id, run_dir)
    assert fields["JobState"] == "COMPLETED", job_logs(run_dir)
    assert fields["NumTasks"] == "2"
    train_dir = run_dir / "train"
    assert (train_dir / "final" / "model.safetensors").is_file()
    assert (train_dir / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    assert (train_dir / "checkpoints" / "step-0000002").is_dir()
    assert [row["step"] for row in read_metrics(train_dir)] == [2, 4]
    assert "2 tasks" in job_logs(run_dir)
    assert (run_dir / "slurm" / "run-train.sbatch").is_file()


@pytest.mark.parametrize("preempt", ["scontrol-requeue", "usr1-signal"])
def test_preempted_training_is_requeued_and_resumes_from_its_checkpoint(tiny_world, shards, slurm_job_env, tmp_path, preempt):
    _, run_config = tiny_world
    run_dir = tmp_path / "run"
    steps = 120
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
