"""A real single-node Slurm cluster for the tests marked ``slurm`` (started once per session).

``scripts/slurm-ci/start_slurm.sh`` installs Debian's munge + slurm packages if needed (needs root
and apt) and starts munged, slurmctld and slurmd; ``stop_slurm.sh`` stops exactly those daemons at
the end of the session. Without root or apt the fixture fails, it does not skip: CI runs as root
and a skipped cluster test would hide a broken sbatch template.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_jobs import job_logs, ovdet_submit, submit_and_wait, wait_for_job

REPO = Path(__file__).resolve().parents[2]
CI_SCRIPTS = REPO / "scripts" / "slurm-ci"


def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: needs a real Slurm cluster (started by scripts/slurm-ci, root only)")


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the cluster (idempotent), yield, stop it; fail with the script's output when it cannot start."""
    if os.geteuid() != 0:
        pytest.fail("the Slurm tests start a real cluster with scripts/slurm-ci/start_slurm.sh, which must run "
                    "as root (CI does); run them as root or deselect them with -m 'not slurm'")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.fail("the Slurm tests need Debian's slurm packages: no slurmctld installed and no apt-get to install it")
    started = time.perf_counter()
    result = subprocess.run(["bash", str(CI_SCRIPTS / "start_slurm.sh")], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"start_slurm.sh failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    print(f"\n[slurm] cluster up in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    yield
    subprocess.run(["bash", str(CI_SCRIPTS / "stop_slurm.sh")], check=False, timeout=120)


@pytest.fixture(scope="session")
def slurm_job_env(slurm_cluster) -> dict[str, str]:
    """The environment to submit jobs from (sbatch exports it into them), DeepSpeed's CPU ops prebuilt.

    DeepSpeed JIT-compiles its CPU shared-memory comm op on first use (about a minute per file on
    2 cores). It is built here, once, into a folder of its own, so neither the first job's run time
    nor a concurrent rebuild by other processes sharing ~/.cache/torch_extensions lands in a job.
    """
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "ovdet-slurm-ci" / "torch_extensions")}
    prebuild_deepspeed_cpu_ops(env)
    return env


def prebuild_deepspeed_cpu_ops(env: dict[str, str]) -> None:
    code = "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
    env = {**env, "DS_ACCELERATOR": "cpu"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=900)
    print(f"[slurm] DeepSpeed CPU ops ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def shards(tiny_world, slurm_job_env, tmp_path_factory) -> Path:
    """Shards written by `ovdet submit shard`: a Ray head started by srun inside the job."""
    data_config, _ = tiny_world
    run_dir = tmp_path_factory.mktemp("shard-run")
    job_id = ovdet_submit("shard", data_config, run_dir, "--cpus-per-task", "2", env=slurm_job_env)
    fields = wait_for_job(job_id, run_dir)
    assert fields["JobState"] == "COMPLETED", job_logs(run_dir)
    return run_dir / "shards"


@pytest.fixture(scope="session")
def one_node_run(tiny_world, shards, slurm_job_env, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(run folder, `scontrol show job` fields) of 6 steps with 2 ranks on one node, on the one-node
    cluster: tested in test_slurm_cluster.py, the reference of the two-node run."""
    _, run_config = tiny_world
    run_dir = tmp_path_factory.mktemp("one-node") / "run"
    fields = submit_and_wait(run_config, run_dir, ["--nodes", "1", "--gpus-per-node", "0", "--ntasks", "2"], shards,
                             6, slurm_job_env)  # fmt: skip
    return run_dir, fields


TWO_NODES = ("ci-node1", "ci-node2")


@pytest.fixture(scope="module")
def slurm_two_node_cluster(slurm_cluster) -> tuple[str, ...]:
    """The session's cluster as two nodes for one module; the one-node cluster is back afterwards.

    ``start_slurm.sh`` with ``SLURM_CI_NODES=2`` rewrites slurm.conf and restarts slurmctld with one
    slurmd per node (ci-node1, ci-node2: 1 CPU each, bound to 127.0.0.1); the same script without it
    restores the one-node cluster the other modules use. Jobs still queued are cancelled first: a
    restarted slurmctld would forget the nodes they run on and leave their processes behind.
    """
    switch_slurm_cluster(nodes=2)
    try:
        yield TWO_NODES
    finally:
        cancel_all_jobs()
        switch_slurm_cluster(nodes=1)


def switch_slurm_cluster(nodes: int) -> None:
    env = {**os.environ, "SLURM_CI_NODES": str(nodes)}
    result = subprocess.run(["bash", str(CI_SCRIPTS / "start_slurm.sh")], capture_output=True, text=True,
                            env=env, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"start_slurm.sh (SLURM_CI_NODES={nodes}) failed (exit {result.returncode}):\n"
                    f"{result.stdout}\n{result.stderr}")


def cancel_all_jobs(timeout_s: float = 30) -> None:
    subprocess.run(["scancel", "--partition=debug"], check=False, capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30)
        if queue.returncode == 0 and not queue.stdout.strip():
            return
        time.sleep(0.5)
