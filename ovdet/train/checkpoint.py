"""Checkpoints: DeepSpeed state + loader position + RNG states, self-describing, loaded safely.

Layout: ``CKPT_DIR/step-000200/`` (DeepSpeed's files plus ``train_state.json``), and DeepSpeed's
``latest`` file naming the newest complete tag (written after the tag's files, so a crash
mid-save leaves ``latest`` on the previous good one). Loads use ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from ovdet import dist

log = logging.getLogger(__name__)


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch engine, but loading never unpickles arbitrary objects."""

    def load(self, path: str, map_location=None):
        allow_deepspeed_globals()
        return torch.load(path, map_location=map_location, weights_only=True)


def allow_deepspeed_globals() -> None:
    """The few plain classes DeepSpeed puts in its state files, allow-listed for weights_only loads."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    torch.serialization.add_safe_globals([LossScaler, ZeroStageEnum, fragment_address])


def rng_state() -> dict[str, Any]:
    return {
        "python": list(random.getstate()[1]),
        "numpy": np.random.get_state()[1].tolist(),
        "torch": torch.get_rng_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    torch.set_rng_state(state["torch"])


def tag_of(step: int) -> str:
    return f"step-{step:07d}"


def save_checkpoint(engine, ckpt_dir: Path, step: int, loader_state: dict, train_state: dict, keep: int) -> Path:
    tag = tag_of(step)
    client_state = {"dataloader": loader_state, "train_state": train_state, "rng": rng_state()}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=True)
    if dist.is_main():
        (ckpt_dir / tag / "train_state.json").write_text(json.dumps(train_state | {"dataloader": loader_state}))
        prune_checkpoints(ckpt_dir, keep)
    return ckpt_dir / tag


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    tags = sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir())
    for old in tags[: max(0, len(tags) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_resume(ckpt_dir: Path, resume: str) -> tuple[str, str] | None:
    """``latest`` -> (dir, tag) of the newest complete checkpoint, ``none`` -> None, else a path."""
    if resume == "none":
        return None
    if resume == "latest":
        latest = ckpt_dir / "latest"
        if not latest.exists():
            return None
        return str(ckpt_dir), latest.read_text().strip()
    path = Path(resume)
    return str(path.parent), path.name


def load_checkpoint(engine, where: tuple[str, str]) -> dict[str, Any]:
    """Restore engine state from ``(dir, tag)``; returns DeepSpeed's client state."""
    load_dir, tag = where
    _, client_state = engine.load_checkpoint(load_dir, tag=tag)
    if client_state is None:
        from ovdet.errors import OvdetError

        raise OvdetError(f"{load_dir}/{tag}: cannot load checkpoint")
    restore_rng_state(client_state["rng"])
    return client_state
