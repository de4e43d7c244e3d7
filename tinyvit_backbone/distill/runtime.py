"""Where the distillation tools run: device, mixed precision and torchrun process groups.

* Device: CUDA if available else CPU (``--device auto``); under torchrun each process takes GPU
  ``LOCAL_RANK``. Asking for CUDA where there is none is an error, not a silent CPU run.
* AMP: on by default on CUDA (bfloat16 where supported, else float16 with a gradient scaler),
  off on CPU; ``--amp`` / ``--no-amp`` override (CPU AMP uses bfloat16).
* Processes: started by torchrun (``WORLD_SIZE`` > 1) the tools join the default process group,
  with NCCL on GPUs and gloo on CPUs. No launcher of our own.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

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
    """``auto``/None -> ``cuda:LOCAL_RANK`` if CUDA is available, else ``cpu``; ``cpu``; ``cuda``
    or ``cuda:N`` (refused when CUDA is unavailable)."""
    env = env or dist_env_from_environ()
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    req = (requested or "auto").strip().lower()
    if req == "auto":
        return torch.device(f"cuda:{env.local_rank}") if has_cuda else torch.device("cpu")
    if req == "cpu":
        return torch.device("cpu")
    if req.startswith("cuda"):
        if not has_cuda:
            raise DistillError(f"--device {requested} asked for CUDA, but torch sees no GPU "
                               f"(torch {torch.__version__}); use --device cpu or auto")
        return torch.device(req if ":" in req else f"cuda:{env.local_rank}")
    raise DistillError(f"--device must be auto, cpu, cuda or cuda:N, got {requested!r}")


def amp_dtype(device: torch.device, amp: bool | None = None,
              bf16_supported: bool | None = None) -> torch.dtype | None:
    """Autocast dtype, or None for full precision. ``amp=None`` means on for CUDA only."""
    enabled = device.type == "cuda" if amp is None else amp
    if not enabled:
        return None
    if device.type != "cuda":
        return torch.bfloat16
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
