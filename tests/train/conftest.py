"""Session fixtures: one tiny synthetic world, sharded once, shared by every trainer test."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from train_runs import BIN, REPO, TWO_RANKS, clean_env, describe, run_train

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed picks an accelerator in-process

TINY_WORLD = ["synth.image_size=64", "synth.num_detection=32", "synth.num_grounding=16",
              "synth.num_image_text=32", "synth.num_eval=8"]  # fmt: skip


def data_config(world: Path) -> str:
    """configs/data/synthetic.yaml with ``root`` at ``world`` and 16 samples per shard."""
    text = (REPO / "configs" / "data" / "synthetic.yaml").read_text()
    lines = [f"root: {world}" if line.startswith("root:") else line for line in text.splitlines()]
    lines = ["samples_per_shard: 16" if line.startswith("samples_per_shard:") else line for line in lines]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-world")
    world, shards, config = root / "world", root / "shards", root / "data.yaml"
    env = clean_env()
    subprocess.run(
        [str(BIN / "ovdet"), "synth", "--out", str(world), *TINY_WORLD],
        env=env,
        check=True,
        capture_output=True,
    )
    config.write_text(data_config(world))
    subprocess.run([str(BIN / "ovdet"), "shard", "--config", str(config), "--out", str(shards)], env=env, check=True,
                   capture_output=True)  # fmt: skip
    return shards


@pytest.fixture(scope="session")
def uninterrupted_run(tiny_shards, tmp_path_factory) -> Path:
    """One rank, 8 steps, a checkpoint every 2: the reference for resume and preemption tests."""
    out = tmp_path_factory.mktemp("uninterrupted") / "train"
    result = run_train(out, tiny_shards)
    assert result.returncode == 0, describe(result)
    return out


@pytest.fixture(scope="session")
def two_rank_run(tiny_shards, tmp_path_factory) -> Path:
    """Two deepspeed ranks on one node (ZeRO-2, ``TWO_RANKS``), 8 steps: the reference of the
    two-rank resume and the multi-node tests."""
    out = tmp_path_factory.mktemp("two-rank") / "train"
    result = run_train(out, tiny_shards, "deepspeed", **TWO_RANKS)
    assert result.returncode == 0, describe(result)
    return out


@pytest.fixture
def in_process():
    """Run ``run_training`` in this process; launcher variables it sets are undone afterwards.

    The gloo process group of the first in-process run stays up and is reused by later ones.
    """
    from train_runs import DEMO_CONFIG, tiny_overrides

    from ovdet.config import load_config
    from ovdet.train.trainer import run_training

    saved = dict(os.environ)

    def train(out: Path, shards: Path, **extra):
        cfg = load_config(str(DEMO_CONFIG), tiny_overrides(shards, **extra))
        return run_training(cfg.train, cfg.model, cfg.loss, cfg.loader, [shards], out, {}, progress=False)

    yield train
    os.environ.clear()
    os.environ.update(saved)
