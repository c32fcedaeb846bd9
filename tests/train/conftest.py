"""Session fixtures of the trainer tests: reference runs on the tiny world (``tiny_shards``, tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from train_runs import TWO_RANKS, describe, run_train

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed picks an accelerator in-process

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
