"""The distributed trainer: one DetectionTask wrapped by a DeepSpeed engine.

``run_training(...)`` builds the detector, loader and engine from the config (``engine.py``),
resumes from the latest checkpoint if there is one, runs the step loop (``loop.py``), and exports
``final/model.safetensors`` + ``final/model_spec.json``. It runs as one process, under the
``deepspeed`` launcher, under ``torchrun`` and under Slurm ``srun``; on CPU machines set
``DS_ACCELERATOR=cpu``. The trainer does not import eval: the caller passes ``validate``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ovdet import dist
from ovdet.config import LoaderConfig, LossConfig, ModelConfig, TrainConfig
from ovdet.errors import OvdetError
from ovdet.fileio import write_json_atomic
from ovdet.runs import TrainPaths
from ovdet.train.state import TrainState

log = logging.getLogger(__name__)


def run_training(
    train: TrainConfig,
    model_cfg: ModelConfig,
    loss_cfg: LossConfig,
    loader_cfg: LoaderConfig,
    shard_dirs: list[Path],
    out_dir: Path,
    resolved_config: dict[str, Any],
    validate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
    validate_every: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train to ``train.steps`` optimizer steps (resuming if a checkpoint exists); returns a summary.

    ``summary["stopped"]`` is ``"completed"`` or ``"preempted by SIGTERM"``/``SIGUSR1``; after a
    preemption the weights are checkpointed but not exported (the run is not finished).
    """
    from ovdet.data.loader import TrainLoader
    from ovdet.models.factory import create_detector
    from ovdet.train.engine import build_engine, export_weights
    from ovdet.train.loop import TrainingLoop
    from ovdet.train.task import DetectionTask

    dist.init_distributed(train.collective_timeout_s)
    if train.threads:
        torch.set_num_threads(train.threads)
    seed_everything(train.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_shared_folder(out_dir, train.shared_folder_wait_s)
    paths = TrainPaths(out_dir)
    # the detector's input size is the loader's canvas (a ViT's position embeddings are resampled
    # to it: ovdet.models.posembed, OWL's interpolated); a transformers detector also sets the
    # canvas's resize rule to its processor's
    # the spec records what inference must repeat: the assigner (its default NMS) and softmax scores
    training = {"assigner": loss_cfg.assigner, "no_object": loss_cfg.classification == "softmax"}
    detector = create_detector(model_cfg, input_size=loader_cfg.image_size, training=training)
    loader_cfg = replace(loader_cfg, resize=getattr(detector, "resize", loader_cfg.resize))
    check_input_sizes(detector, loader_cfg)
    spec = detector.spec
    task = DetectionTask(detector, loss_cfg)
    engine = build_engine(task, train, model_cfg, loader_cfg)
    loader = TrainLoader(shard_dirs, loader_cfg, dist.rank(), dist.world_size())
    state = TrainState()
    resumed_from = resume(engine, loader, state, paths.checkpoints, train.resume)
    if dist.is_main():
        write_json_atomic(paths.config, resolved_config, sort_keys=False)
    loop = TrainingLoop(engine, loader, train, out_dir, state, resumed_from, validate, validate_every, progress)
    loop.run()
    if loop.stop_reason == "completed":
        export_weights(engine, paths.final_model, spec, {"step": state.step, "config": resolved_config})
    summary = {"step": state.step, "resumed_from": resumed_from, "stopped": loop.stop_reason}
    return {**summary, "out_dir": str(out_dir), **loop.last_metrics}


def check_input_sizes(detector, loader_cfg) -> None:
    """Multi-scale training needs a detector that takes any input size: a convolutional tower
    (a ViT's position embeddings are fitted to one size, ``ovdet.models.posembed``)."""
    if loader_cfg.multiscale_sizes and not getattr(detector, "accepts_any_input_size", False):
        raise OvdetError(f"loader.multiscale_sizes needs an image tower that takes any input size; "
                         f"{detector.spec.get('name')} is fitted to {loader_cfg.image_size} px (loader.multiscale_sizes=[])")


def check_shared_folder(out_dir: Path, wait_s: float) -> None:
    """Every rank must see what rank 0 writes in the training folder: the ranks write one checkpoint
    together (each its optimizer shard and RNG file), and a resume reads all of it. A folder that is
    node-local on some nodes (same path, another disk) is refused before training, on every rank.
    ``wait_s`` (``train.shared_folder_wait_s``): how long a rank looks for rank 0's marker (shared file
    systems can be slow to show it)."""
    import time
    import uuid

    if dist.world_size() == 1:
        return

    def write_marker() -> str:
        name = f".shared-folder-check-{uuid.uuid4().hex}"
        (out_dir / name).touch()
        return name

    marker = out_dir / dist.from_main(write_marker)
    deadline = time.monotonic() + wait_s
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    blind = int(dist.sum_over_ranks([0.0 if marker.exists() else 1.0])[0])
    if dist.is_main():
        marker.unlink(missing_ok=True)
    if blind:
        raise OvdetError(f"{out_dir}: {blind} of {dist.world_size()} ranks do not see the files rank 0 writes there; "
                         "the training folder (--out) must be on storage every node shares, not a node-local disk")


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resume(engine, loader, state: TrainState, ckpt_dir: Path, resume_from: str) -> int:
    """Load the checkpoint ``resume_from`` names (``train.resume``) into engine, loader, RNGs and
    ``state``; returns the step it was saved at, or -1 when there is none to load."""
    from ovdet.train.checkpoint import load_checkpoint, resolve_resume, step_of

    where = resolve_resume(ckpt_dir, resume_from)
    if where is None:
        return -1
    client = load_checkpoint(engine, where)
    loader.load_state_dict(client["dataloader"])
    state.load_state_dict(client["train_state"])
    if state.step != step_of(where[1]):
        raise OvdetError(f"{where[0]}/{where[1]}: train_state says step {state.step}")
    log.info("resumed from %s/%s at step %d", *where, state.step)
    return state.step
