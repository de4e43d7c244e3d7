"""Where the probes compute (the project policy of :mod:`tinyvit_backbone.device`; no mixed
precision on CPU) and how many CPU threads a fit uses."""
from __future__ import annotations

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
    """Mixed-precision dtype for extraction: the project's CUDA default unless ``amp`` is False;
    always None (full float32) on CPU, where it would only be slower."""
    return amp_dtype(device, amp) if device.type == "cuda" else None


# Below this many multiply-adds per objective evaluation (rows x dim x classes) a CPU fit runs
# on one thread: the matrices are too small to split, and on a shared machine OpenMP threads
# waiting for each other made a digits-size sweep 25x slower.
SINGLE_THREAD_WORK = 50_000_000


def threads_for(device, work: float) -> int | None:
    return 1 if torch.device(device).type == "cpu" and work < SINGLE_THREAD_WORK else None
