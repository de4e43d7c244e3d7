"""Where the distillation tools run: device, mixed precision and torchrun process groups.

* Device: CUDA if available else CPU (``--device auto``); under torchrun each process takes GPU
  ``LOCAL_RANK``. Asking for CUDA where there is none is an error, not a silent CPU run.
* AMP: on by default on CUDA (bfloat16 where supported, else float16 with a gradient scaler),
  off on CPU; ``--amp`` / ``--no-amp`` override (CPU AMP uses bfloat16).
* Processes: started by torchrun (``WORLD_SIZE`` > 1) the tools join the default process group
  through :mod:`tinyvit_backbone.distributed` (NCCL on GPUs, gloo on CPUs).
"""
from __future__ import annotations

import torch

from ..device import amp_dtype, autocast
from ..device import select_device as _select_device
from ..distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    dist_env_from_environ,
    init_distributed,
    shutdown_distributed,
)
from .errors import DistillError


def select_device(requested: str | None = "auto", env: DistEnv | None = None,
                  cuda_available: bool | None = None) -> torch.device:
    """The project's device policy (:mod:`tinyvit_backbone.device`) for this torchrun rank."""
    env = env or dist_env_from_environ()
    try:
        return _select_device(requested, local_rank=env.local_rank, cuda_available=cuda_available)
    except ValueError as err:
        raise DistillError(str(err)) from None


def deterministic_kernels(device: torch.device) -> None:
    """Kernels whose results do not depend on autotuning (store bytes must be reproducible)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


__all__ = ["DistEnv", "all_reduce_sum", "amp_dtype", "autocast", "barrier", "broadcast_flag",
           "deterministic_kernels", "dist_env_from_environ", "init_distributed", "select_device",
           "shutdown_distributed"]
