"""Helpers for the trainer tests: tiny-model overrides, `ovdet train` subprocesses, weight reads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "CROSS_RANK", "CROSS_SIZE", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS")  # fmt: skip


TWO_RANKS = {"train__zero_stage": 2, "loader__batch_size": 2}  # 2 ranks x 2 = the single rank's batch of 4


def tiny_overrides(shards: Path, **extra) -> list[str]:
    """The tiny model on the tiny world, one thread, no workers; ``extra`` as dotted overrides."""
    values = {
        "recipe": "owl",  # the trainer's mechanics are tested on the OWL recipe (the demo trains YOLO-World's)
        "model.name": "tiny-vit-minilm",
        "model.feature_indices": "[1]",
        "loader.image_size": 64,
        "loader.num_workers": 0,
        "loader.batch_size": 4,
        "loader.num_negatives": 8,
        "loader.shard_dirs": f"[{shards}]",
        "loader.sources": "[]",  # all three sources (the demo config trains on two)
        "train.threads": 1,
        "train.steps": 8,
        "train.warmup_steps": 2,
        "train.log_every": 1,
        "train.checkpoint_every": 2,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def clean_env() -> dict[str, str]:
    """The test process's environment without launcher variables (an in-process run sets them)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env["DS_ACCELERATOR"] = "cpu"
    env["GLOO_SOCKET_IFNAME"] = "lo"  # collectives over loopback, whatever the host name resolves to
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_argv(out: Path, shards: Path, launcher: str = "single", **extra) -> list[str]:
    """``ovdet train`` argv for 1 rank, 2 deepspeed ranks ("deepspeed") or 2 torchrun ranks."""
    ovdet = str(BIN / "ovdet")
    tail = ["train", "--config", str(DEMO_CONFIG), "--out", str(out), *tiny_overrides(shards, **extra)]
    if launcher == "deepspeed":
        return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), ovdet, *tail]
    if launcher == "torchrun":
        return [
            str(BIN / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            ovdet,
            *tail,
        ]
    return [ovdet, *tail]


def node_argv(out: Path, shards: Path, node: int, endpoint: str, launcher: str = "torchrun", **extra) -> list[str]:
    """One node's launcher command for a run on 2 nodes of one rank each, meeting at ``endpoint``
    (host:port): ``torchrun`` with a c10d rendezvous, or the ``deepspeed`` launcher's multi-node path
    without ssh (``--no_ssh --node_rank``, the hosts from a hostfile next to ``out``)."""
    train = [str(BIN / "ovdet"), "train", "--config", str(DEMO_CONFIG), "--out", str(out), *tiny_overrides(shards, **extra)]
    if launcher == "torchrun":
        return [str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "ovdet-test",
                "--local_addr", "127.0.0.1", *train]  # fmt: skip
    hostfile = out.parent / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    address, port = endpoint.rsplit(":", 1)
    return [str(BIN / "deepspeed"), "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node),
            "--master_addr", address, "--master_port", port, *train]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_train(
    out: Path, shards: Path, launcher: str = "single", timeout: float = 300, **extra
) -> subprocess.CompletedProcess:
    argv = train_argv(out, shards, launcher, **extra)
    return subprocess.run(argv, env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def start_train(out: Path, shards: Path, launcher: str = "single", **extra) -> subprocess.Popen:
    """Start ``ovdet train`` in its own process group (so a kill reaches every rank)."""
    argv = train_argv(out, shards, launcher, **extra)
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(
        argv, env=clean_env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_until(condition, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"training exited with {process.returncode} before the condition held")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError("timed out waiting for the training run")
        time.sleep(0.05)


def copy_run(source: Path, destination: Path) -> Path:
    """A copy of a finished training folder without its ``final/`` model: resuming it trains again."""
    shutil.copytree(source, destination)
    shutil.rmtree(destination / "final")
    return destination


def rank_processes(out: Path) -> dict[int, int]:
    """rank -> pid of the ``ovdet train --out OUT`` rank processes running now (not their launchers)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item)
        except (OSError, ValueError):
            continue  # not a process, or it exited meanwhile
        script = next((a for a in argv[1:] if not a.startswith(b"-")), b"")
        if script.endswith(b"/ovdet") and str(out).encode() in argv and b"RANK" in environ:
            found[int(environ[b"RANK"])] = int(entry.name)
    return found


def checkpoint_tags(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("step-*") if p.is_dir())


def latest_tag(out: Path) -> str | None:
    path = out / "checkpoints" / "latest"
    return path.read_text().strip() if path.exists() else None


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def describe(result: subprocess.CompletedProcess) -> str:
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"
    )
