"""Where the probes compute (the project policy of :mod:`tinyvit_backbone.device`), in which
precision, how many CPU threads a fit uses and how much memory is free.

Precision: the probes run in float32 unless ``--amp`` asks otherwise, on every device. The
paper's protocols are MoCo v3's ``main_lincls.py`` and cdfsl's ``finetune.py``, and both train
and evaluate in float32; a bfloat16 forward moves features by about 1e-2 relative, which moves
a top-1 by a measurable amount (the README gives the figure on the digits), so mixed precision
is an opt-in that the records name (``amp``), never a silent default. With ``--amp``: bfloat16
(float16 on GPUs without bfloat16), on CPU too."""
from __future__ import annotations

import os

import torch

from tinyvit_backbone.device import amp_dtype, cpu_threads  # noqa: F401  (re-exported)
from tinyvit_backbone.device import select_device as _select_device


def select_device(requested: str | torch.device | None = None) -> torch.device:
    """The project's device policy (:mod:`tinyvit_backbone.device`)."""
    return _select_device(requested)


def same_device(a, b) -> bool:
    """``cuda`` and ``cuda:0`` (the current GPU) are the same place; torch.device's == says not."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


def autocast_dtype(device: torch.device, amp: bool | None = None) -> torch.dtype | None:
    """The autocast dtype of the probes' forward passes: None (float32, as the original
    protocols) unless ``amp`` is True, then bfloat16 (float16 on a GPU without bfloat16)."""
    return amp_dtype(torch.device(device), True) if amp else None


def available_memory(device) -> int:
    """Bytes free for new tensors: the GPU's free memory on CUDA, the system's available
    memory (``MemAvailable``; else free pages) on a CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30  # unknown: assume a small machine


# Below this many multiply-adds per objective evaluation (rows x dim x classes) a CPU fit runs
# on one thread: the matrices are too small to split, and on a shared machine OpenMP threads
# waiting for each other made a digits-size sweep 25x slower.
SINGLE_THREAD_WORK = 50_000_000


def threads_for(device, work: float) -> int | None:
    return 1 if torch.device(device).type == "cpu" and work < SINGLE_THREAD_WORK else None
