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
