"""Where the distillation tools run: device, mixed precision and torchrun process groups.

* Device: CUDA if available else CPU (``--device auto``); under torchrun each process takes GPU
  ``LOCAL_RANK``. Asking for CUDA where there is none is an error, not a silent CPU run.
* AMP: on by default on CUDA (bfloat16 where supported, else float16 with a gradient scaler),
  off on CPU; ``--amp`` / ``--no-amp`` override (CPU AMP uses bfloat16).
* Processes: started by torchrun (``WORLD_SIZE`` > 1) the tools join the default process group,
  with NCCL on GPUs and gloo on CPUs. No launcher of our own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..device import amp_dtype, autocast
from ..device import select_device as _select_device
from .errors import DistillError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env_from_environ() -> DistEnv:
    """Rank / world size / local rank as torchrun sets them (defaults: one process)."""
    return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def select_device(requested: str | None = "auto", env: DistEnv | None = None,
                  cuda_available: bool | None = None) -> torch.device:
    """The project's device policy (:mod:`tinyvit_backbone.device`) for this torchrun rank."""
    env = env or dist_env_from_environ()
    try:
        return _select_device(requested, local_rank=env.local_rank, cuda_available=cuda_available)
    except ValueError as err:
        raise DistillError(str(err)) from None


def init_distributed(device: torch.device) -> DistEnv:
    """Join torchrun's process group (NCCL for CUDA, gloo for CPU) when ``WORLD_SIZE`` > 1."""
    env = dist_env_from_environ()
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return env


def barrier(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity for one process)."""
    if not (env.distributed and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_flag(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every process."""
    if not (env.distributed and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def deterministic_kernels(device: torch.device) -> None:
    """Kernels whose results do not depend on autotuning (store bytes must be reproducible)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


__all__ = ["DistEnv", "all_reduce_sum", "amp_dtype", "autocast", "barrier", "broadcast_flag",
           "deterministic_kernels", "dist_env_from_environ", "init_distributed", "select_device",
           "shutdown_distributed"]
