"""Distributed facts in one place: rank, world size, local rank, from torch, DeepSpeed or Slurm.

No other module reads ``RANK``, ``WORLD_SIZE`` or ``SLURM_*`` directly.
"""

from __future__ import annotations

import os
import re


def _env_int(*names: str, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def rank() -> int:
    if is_initialized():
        import torch.distributed as torch_dist

        return torch_dist.get_rank()
    return _env_int("RANK", "SLURM_PROCID", default=0)


def world_size() -> int:
    if is_initialized():
        import torch.distributed as torch_dist

        return torch_dist.get_world_size()
    return _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)


def is_main() -> bool:
    return rank() == 0


def is_initialized() -> bool:
    try:
        import torch.distributed as torch_dist
    except ImportError:
        return False
    return torch_dist.is_available() and torch_dist.is_initialized()


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def slurm_master_address() -> str:
    """First host of ``SLURM_JOB_NODELIST`` (``node[01-04],gpu7`` -> ``node01``)."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST", os.environ.get("SLURM_NODELIST", "localhost"))
    first = re.split(r",(?![^\[]*\])", nodelist)[0]
    match = re.match(r"^(.*?)\[([^\]]+)\]$", first)
    if not match:
        return first
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0]


def export_torch_env_from_slurm(default_port: int = 29500) -> None:
    """Under ``srun`` set the variables torch.distributed reads, derived from Slurm's."""
    if not in_slurm_job() or "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ.get("SLURM_NTASKS", "1")
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    os.environ.setdefault("MASTER_ADDR", slurm_master_address())
    job_port = default_port + int(os.environ.get("SLURM_JOB_ID", "0")) % 1000
    os.environ.setdefault("MASTER_PORT", str(job_port))


def all_reduce_sum(value: float) -> float:
    """Sum a scalar over ranks (identity when not distributed). Used for DETR's num_boxes."""
    if not is_initialized():
        return float(value)
    import torch
    import torch.distributed as torch_dist

    device = "cuda" if torch_dist.get_backend() == "nccl" else "cpu"  # NCCL reduces device tensors only
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    torch_dist.all_reduce(tensor)
    return float(tensor.item())


def slurm_job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID") or None
