"""torchrun process groups for every tool of the project: one set-up, NCCL on GPUs, gloo on CPUs.

No launcher of our own: processes are started by ``torchrun`` (or mmengine's launchers), which
set ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; the tools only join the default group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (one process: rank 0 of 1)."""

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


def init_distributed(device: torch.device, always: bool = False) -> DistEnv:
    """Join torchrun's process group (NCCL for CUDA, gloo for CPU) when ``WORLD_SIZE`` > 1,
    or with ``always`` even for one process (a launcher that expects a group, e.g. mmengine's
    ``pytorch`` launcher)."""
    env = dist_env_from_environ()
    if (env.distributed or always) and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
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
