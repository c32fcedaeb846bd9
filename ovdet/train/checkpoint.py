"""Checkpoints: DeepSpeed state + loader position + RNG states, self-describing, loaded safely.

Layout of ``CKPT_DIR``::

    step-0000200/            DeepSpeed's files (model, optimizer, lr_scheduler, client state with
                             ``dataloader`` and ``train_state``: ``TrainState.state_dict()``),
                             ``train_state.json`` (a readable copy of both),
                             ``rng-rank-00000.pt`` (one per rank: python, numpy, torch RNGs) and
                             ``checksums.json`` (size and SHA-256 of every other file, written last)
    latest                   the newest complete tag, replaced atomically after its checksums

A crash mid-save leaves ``latest`` on the previous complete tag; a tag directory that ``latest``
does not name is never loaded by ``resume: latest``. A disk that fills mid-save is one
``OvdetError`` naming the tag; the partial tag is removed and ``latest`` is untouched. Resuming
checks the tag against its checksums first (rank 0 reads, every rank gets the verdict): a tag
truncated or corrupted after it was saved (a node dying mid-flush, a bad disk) is skipped with a
one-line warning and the newest older tag that checks out is loaded instead. Every load uses
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
from ovdet.fileio import read_json, sha256_file, write_json_atomic, write_text_atomic
from ovdet.runs import CHECKPOINT_STATE

log = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"


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
    """Write tag ``step-N`` on every rank, then (rank 0) its checksums, point ``latest`` at it and prune.

    Raises:
        OvdetError: a write failed (disk full, quota, I/O error); the partial tag is removed unless
            ``latest`` names it, and ``latest`` still names the previous complete tag.
    """
    tag = tag_of(step)
    tag_dir = ckpt_dir / tag
    if dist.is_main() and tag_dir.exists() and latest_tag_name(ckpt_dir) != tag:
        shutil.rmtree(tag_dir)  # left by an earlier failed save or a run resumed from an older tag
    dist.barrier()
    client_state = {"dataloader": loader_state, "train_state": train_state}
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        torch.save(rng_state(), rng_file(tag_dir, dist.rank()))
        if dist.is_main():
            write_json_atomic(tag_dir / CHECKPOINT_STATE, train_state | {"dataloader": loader_state},
                              indent=None, sort_keys=False)
        dist.barrier()  # every rank's files are on disk before the checksums and ``latest`` name the tag
        if dist.is_main():
            write_checksums(tag_dir)
            # Replaced atomically: readers see the old tag or the new one, never a torn file.
            write_text_atomic(ckpt_dir / "latest", tag, durable=True)
    except OSError as exc:
        raise failed_save(ckpt_dir, tag_dir, exc.strerror or str(exc)) from None
    except RuntimeError as exc:
        if not is_write_failure(exc):
            raise  # a bug, not the disk: keep its traceback
        raise failed_save(ckpt_dir, tag_dir, str(exc).strip().splitlines()[-1]) from None
    if dist.is_main():
        prune_checkpoints(ckpt_dir, keep, tag)
    dist.barrier()
    return tag_dir


def failed_save(ckpt_dir: Path, tag_dir: Path, reason: str) -> OvdetError:
    """The one-line error of a save that could not write; removes the partial tag to free its space."""
    free = free_space(ckpt_dir)
    if latest_tag_name(ckpt_dir) != tag_dir.name:
        shutil.rmtree(tag_dir, ignore_errors=True)
    previous = latest_tag_name(ckpt_dir)
    kept = f"`latest` still names {previous}" if previous else "no earlier checkpoint exists"
    return OvdetError(f"{tag_dir}: checkpoint save failed: {reason} "
                      f"({free} free); partial tag removed, {kept}")


def is_write_failure(exc: RuntimeError) -> bool:
    """torch.save reports a failed write (disk full, quota, I/O error) as a RuntimeError from its zip writer."""
    text = str(exc).lower()
    return "write" in text or "no space left" in text


def free_space(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB"
    except OSError:
        return "unknown space"


def latest_tag_name(ckpt_dir: Path) -> str | None:
    latest = ckpt_dir / "latest"
    return latest.read_text().strip() if latest.exists() else None


def write_checksums(tag_dir: Path) -> None:
    """``checksums.json``: size and SHA-256 of every file of the tag, each fsynced on the way (the
    checksums never describe bytes still only in the page cache)."""
    files = {}
    for path in sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS):
        files[path.relative_to(tag_dir).as_posix()] = {"size": path.stat().st_size, "sha256": sha256_file(path, sync=True)}
    write_json_atomic(tag_dir / CHECKSUMS, {"algorithm": "sha256", "files": files}, durable=True)


def checkpoint_problem(tag_dir: Path) -> str | None:
    """Why the tag cannot be trusted (missing, no checksums, a file missing, truncated or changed), or None."""
    if not tag_dir.is_dir():
        return "does not exist"
    if not (tag_dir / CHECKSUMS).exists():
        return f"has no {CHECKSUMS} (its save did not finish)"
    try:
        files = read_json(tag_dir / CHECKSUMS, expected=dict)["files"]
    except (OvdetError, KeyError) as exc:
        return f"{CHECKSUMS} is unreadable: {exc}"
    for name, expected in files.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['size']} were saved"
        if sha256_file(path) != expected["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def prune_checkpoints(ckpt_dir: Path, keep: int, current: str) -> None:
    """Keep the ``keep`` newest tags up to ``current``; tags newer than it (left by a run resumed
    from an older tag) are not counted and not deleted."""
    tags = sorted(
        p.name for p in ckpt_dir.glob("step-*") if p.is_dir() and step_of(p.name) <= step_of(current)
    )
    for old in tags[: max(0, len(tags) - max(1, keep))]:
        shutil.rmtree(ckpt_dir / old, ignore_errors=True)


def resolve_resume(ckpt_dir: Path, resume: str) -> tuple[str, str] | None:
    """``latest`` -> (dir, tag): the tag ``latest`` names, or the newest older one that checks out
    (None if there is none yet); ``none`` -> None; else a tag directory path, checked.

    Rank 0 reads the files; every rank gets the same answer."""
    if resume == "none":
        return None
    return dist.from_main(lambda: checked_resume(ckpt_dir, resume))


def checked_resume(ckpt_dir: Path, resume: str) -> tuple[str, str] | None:
    if resume == "latest":
        tag = latest_tag_name(ckpt_dir)
        return None if tag is None else (str(ckpt_dir), intact_tag(ckpt_dir, tag))
    path = Path(resume)
    if not path.is_dir():
        raise OvdetError(
            f"train.resume={resume}: not a checkpoint directory (expected CKPT_DIR/step-NNNNNNN)"
        )
    if not (path / CHECKSUMS).exists():
        log.warning("%s: %s; loading it unchecked because train.resume names it", path, checkpoint_problem(path))
    elif problem := checkpoint_problem(path):
        raise OvdetError(f"{path}: {problem}")
    return str(path.parent), path.name


def intact_tag(ckpt_dir: Path, latest: str) -> str:
    """``latest`` if it checks out, else the newest older tag that does, warning once per skipped tag."""
    candidates = [latest] + sorted(
        (p.name for p in ckpt_dir.glob("step-*") if p.is_dir() and p.name != latest and step_of(p.name) < step_of(latest)),
        key=step_of, reverse=True,
    )
    for tag in candidates:
        problem = checkpoint_problem(ckpt_dir / tag)
        if problem is None:
            return tag
        log.warning("checkpoint %s %s: trying the previous one", ckpt_dir / tag, problem)
    raise OvdetError(f"{ckpt_dir}: no intact checkpoint (`latest` names {latest}; "
                     f"train.resume=none starts over)")


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
