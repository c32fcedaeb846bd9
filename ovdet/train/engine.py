"""The DeepSpeed engine around one ``DetectionTask``: its config, AdamW parameter groups, the LR
schedule, and the export of the trained detector's weights (consolidated under ZeRO-3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ovdet import dist
from ovdet.config import LoaderConfig, ModelConfig, TrainConfig
from ovdet.errors import OvdetError
from ovdet.fileio import write_json_atomic


def param_groups(detector: torch.nn.Module, train: TrainConfig, model: ModelConfig) -> list[dict[str, Any]]:
    """AdamW groups: per tower (LR multiplier) x (decay, or none for norms and biases)."""
    multipliers = {"text": model.lr_mult_text, "image": model.lr_mult_image, "heads": 1.0}
    groups = []
    for tower, named in detector.parameter_groups_by_tower().items():
        decay = [p for n, p in named if p.ndim > 1 and not n.endswith(".bias")]
        no_decay = [p for n, p in named if not (p.ndim > 1 and not n.endswith(".bias"))]
        for params, weight_decay in ((decay, train.weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "lr": train.lr * multipliers[tower], "weight_decay": weight_decay})
    return groups


def warmup_cosine(train: TrainConfig) -> Callable[[int], float]:
    """LR factor at optimizer step ``step``: linear warmup, then cosine decay to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return train.min_lr_ratio + (1 - train.min_lr_ratio) * cosine

    return factor


def deepspeed_config(train: TrainConfig, loader: LoaderConfig) -> dict[str, Any]:
    if train.precision == "fp16" and not torch.cuda.is_available():
        raise OvdetError("train.precision=fp16 needs a GPU (DeepSpeed's CPU accelerator has fp32 and bf16)")
    return {
        "train_micro_batch_size_per_gpu": loader.batch_size,
        "gradient_accumulation_steps": train.grad_accumulation,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16", "initial_scale_power": 12},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def build_engine(task: torch.nn.Module, train: TrainConfig, model: ModelConfig, loader: LoaderConfig):
    """``deepspeed.initialize`` with AdamW, the warmup-cosine schedule and weights-only loading."""
    import deepspeed

    from ovdet.train.checkpoint import WeightsOnlyCheckpointEngine

    optimizer = torch.optim.AdamW(param_groups(task.detector, train, model), lr=train.lr, betas=(0.9, 0.999))
    schedule = warmup_cosine(train)
    engine, _, _, _ = deepspeed.initialize(
        model=task,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=deepspeed_config(train, loader),
    )
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine()
    return engine


def export_weights(engine, out_dir: Path, spec: dict[str, Any], extra: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` (detector weights) and ``model_spec.json`` (how to rebuild it);
    for a ``transformers`` detector, its ``save_pretrained`` folder (``write_hf_folder``) besides.

    Every rank calls it (under ZeRO-3 gathering the weights is a collective); rank 0 writes.
    """
    from safetensors.torch import save_file

    from ovdet.models.hf.common import write_hf_folder

    state = engine.module.detector.state_dict()
    if engine.zero_optimization_stage() == 3:
        consolidated = engine._zero3_consolidated_16bit_state_dict()  # collective; None on ranks > 0
        state = {k.removeprefix("detector."): v for k, v in (consolidated or {}).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        tensors = {k: v.detach().float().contiguous().clone() for k, v in state.items()}
        if spec["kind"] == "hf":  # a transformers detector's folder is also a save_pretrained folder
            write_hf_folder(out_dir, spec, tensors, engine.module.detector)
        else:
            save_file(tensors, str(out_dir / "model.safetensors"))
        write_json_atomic(out_dir / "model_spec.json", {"spec": spec, **extra}, sort_keys=False)
    return out_dir
