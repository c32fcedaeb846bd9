"""Distributed facts and collectives in one place: rank, world size, local rank (from torch,
DeepSpeed or Slurm), starting the process group, and the few reductions the trainer and the losses need.

No other module reads or writes ``RANK``, ``WORLD_SIZE`` or ``SLURM_*``, nor calls ``torch.distributed``.
"""

from __future__ import annotations

import os
import re
import socket


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


def init_distributed(timeout_s: float = 1800.0) -> None:
    """Start torch.distributed (through DeepSpeed) from launcher or Slurm variables; a process
    started without a launcher becomes a world of one on a free local port. A collective that waits
    longer than ``timeout_s`` raises (gloo; NCCL's watchdog aborts the process)."""
    from datetime import timedelta

    import deepspeed
    import torch

    export_torch_env_from_slurm()
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else None, verbose=False,
                                   timeout=timedelta(seconds=timeout_s))
        _unlink_shm_allreduce_buffer()


SHM_DIR = "/dev/shm"


def shm_allreduce_buffer_path(rank_: int | None = None) -> str:
    """Where DeepSpeed's CPU shared-memory all-reduce keeps this rank's workspace (``shm.cpp``: the
    name is built from the user id, ``MASTER_ADDR``, ``MASTER_PORT`` and the rank)."""
    rank_ = rank() if rank_ is None else rank_
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank_}")
    return os.path.join(SHM_DIR, name)


def _unlink_shm_allreduce_buffer() -> None:
    """DeepSpeed's CPU accelerator maps one ~69 MB shared-memory workspace per rank (when every rank
    is local) and never unlinks it: each run left its files in /dev/shm, which is RAM, until a
    machine ran out of memory. Once every rank has mapped every peer's workspace (they all returned
    from ``init_distributed``: the barrier), each rank unlinks its own name; the mappings stay
    valid until the processes exit, and the memory is freed with the last of them."""
    if world_size() > 1:
        import torch.distributed as torch_dist

        torch_dist.barrier()
    try:
        os.unlink(shm_allreduce_buffer_path())
    except FileNotFoundError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sum over ranks of a few floats, in one float64 all-reduce; the values themselves
    on one rank or without a process group."""
    if world_size() == 1 or not is_initialized():
        return [float(v) for v in values]
    import torch
    import torch.distributed as torch_dist

    device = "cuda" if torch_dist.get_backend() == "nccl" else "cpu"  # NCCL reduces device tensors only
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def from_main(compute):
    """``compute()`` run on rank 0 only, its (picklable) result sent to every rank: one rank reads the
    shared files and the others do not each read them again."""
    if world_size() == 1 or not is_initialized():
        return compute()
    import torch.distributed as torch_dist

    box = [None]
    if is_main():
        try:
            box = [(compute(), None)]
        except Exception as exc:  # sent on, so the other ranks raise it too instead of waiting
            box = [(None, exc)]
    torch_dist.broadcast_object_list(box, src=0)
    value, error = box[0]
    if error is not None:
        raise error
    return value


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if is_initialized():
        import torch.distributed as torch_dist

        torch_dist.barrier()


def slurm_job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID") or None
