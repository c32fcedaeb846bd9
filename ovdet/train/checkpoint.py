"""Checkpoints: DeepSpeed state + loader position + RNG states, self-describing, loaded safely.

Layout of ``CKPT_DIR``::

    step-0000200/            DeepSpeed's files (model, optimizer, lr_scheduler, client state with
                             ``dataloader`` and ``train_state``: ``TrainState.state_dict()``),
                             ``train_state.json`` (a readable copy of both) and
                             ``rng-rank-00000.pt`` (one per rank: python, numpy, torch RNGs)
    latest                   the newest complete tag, replaced atomically after every rank's files

A crash mid-save leaves ``latest`` on the previous complete tag; a tag directory that ``latest``
does not name is never loaded by ``resume: latest``. Every load uses
``torch.load(weights_only=True)`` with a short allow-list of DeepSpeed's plain classes, so a
checkpoint can never run code when it is read.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from ovdet import dist
from ovdet.errors import OvdetError
from ovdet.fileio import write_json_atomic, write_text_atomic
from ovdet.runs import CHECKPOINT_STATE

log = logging.getLogger(__name__)


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch engine, but loading never unpickles arbitrary objects."""

    def load(self, path: str, map_location=None):
        return safe_load(path, map_location)


def safe_load(path: str | Path, map_location=None) -> Any:
    """``torch.load(weights_only=True)`` with DeepSpeed's plain state classes allow-listed."""
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def deepspeed_safe_globals() -> list:
    """The plain (data-only) classes DeepSpeed puts in its ZeRO 0/2, fp32/bf16/fp16 state files."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def rng_state() -> dict[str, Any]:
    """Every RNG the step may draw from (dropout, augmentation fallbacks), in weights-only types."""
    version, python_state, gauss_next = random.getstate()
    _, numpy_key, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    state = {
        "python": [version, list(python_state), gauss_next],
        "numpy": [numpy_key.tolist(), int(numpy_pos), int(numpy_has_gauss), float(numpy_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, python_state, gauss_next = state["python"]
    random.setstate((version, tuple(python_state), gauss_next))
    key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def tag_of(step: int) -> str:
    return f"step-{step:07d}"


def step_of(tag: str) -> int:
    return int(tag.removeprefix("step-"))


def rng_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"rng-rank-{rank:05d}.pt"


def save_checkpoint(
    engine, ckpt_dir: Path, step: int, loader_state: dict, train_state: dict, keep: int
) -> Path:
    """Write tag ``step-N`` on every rank, then (rank 0) point ``latest`` at it and prune."""
    tag = tag_of(step)
    tag_dir = ckpt_dir / tag
    client_state = {"dataloader": loader_state, "train_state": train_state}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    torch.save(rng_state(), rng_file(tag_dir, dist.rank()))
    if dist.is_main():
        write_json_atomic(tag_dir / CHECKPOINT_STATE, train_state | {"dataloader": loader_state},
                          indent=None, sort_keys=False)
    dist.barrier()  # every rank's files are on disk before ``latest`` names the tag
    if dist.is_main():
        # Replaced atomically: readers see the old tag or the new one, never a torn file.
        write_text_atomic(ckpt_dir / "latest", tag)
        prune_checkpoints(ckpt_dir, keep, tag)
    dist.barrier()
    return tag_dir


def prune_checkpoints(ckpt_dir: Path, keep: int, current: str) -> None:
    """Keep the ``keep`` newest tags up to ``current``; tags newer than it (left by a run resumed
    from an older tag) are not counted and not deleted."""
    tags = sorted(
        p.name for p in ckpt_dir.glob("step-*") if p.is_dir() and step_of(p.name) <= step_of(current)
    )
    for old in tags[: max(0, len(tags) - max(1, keep))]:
        shutil.rmtree(ckpt_dir / old, ignore_errors=True)


def resolve_resume(ckpt_dir: Path, resume: str) -> tuple[str, str] | None:
    """``latest`` -> (dir, tag) that ``latest`` names (None if there is none yet), ``none`` ->
    None, else a tag directory path."""
    if resume == "none":
        return None
    if resume == "latest":
        latest = ckpt_dir / "latest"
        if not latest.exists():
            return None
        tag = latest.read_text().strip()
        if not (ckpt_dir / tag).is_dir():
            raise OvdetError(
                f"{latest}: names {tag!r}, which does not exist (use train.resume=none to start over)"
            )
        return str(ckpt_dir), tag
    path = Path(resume)
    if not path.is_dir():
        raise OvdetError(
            f"train.resume={resume}: not a checkpoint directory (expected CKPT_DIR/step-NNNNNNN)"
        )
    return str(path.parent), path.name


def load_checkpoint(engine, where: tuple[str, str]) -> dict[str, Any]:
    """Restore engine state and this rank's RNGs from ``(dir, tag)``; returns the client state."""
    load_dir, tag = where
    _, client_state = engine.load_checkpoint(load_dir, tag=tag)
    if client_state is None:
        raise OvdetError(f"{load_dir}/{tag}: cannot load checkpoint")
    rng_path = rng_file(Path(load_dir) / tag, dist.rank())
    if rng_path.exists():
        restore_rng_state(safe_load(rng_path))
    else:
        log.warning(
            "%s missing (saved with another world size?): RNG streams restart from the seed", rng_path
        )
    return client_state
