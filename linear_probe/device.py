"""Where to compute: CUDA when available, else CPU; mixed precision only on CUDA."""
from __future__ import annotations

import contextlib

import torch


def select_device(requested: str | torch.device | None = None) -> torch.device:
    """``None`` / ``'auto'``: ``cuda`` if available else ``cpu``; otherwise the named device,
    which must exist (a clear error instead of a CUDA traceback later)."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ValueError(f"--device {requested!r} is not a device name (use auto, cpu, cuda or "
                         "cuda:N)") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested} was requested but torch sees no GPU (no "
                             "driver, a CPU-only torch build, or CUDA_VISIBLE_DEVICES is empty); "
                             "use --device cpu, or --device auto to pick what is there.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s) "
                             "are visible")
    return device


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
    """Mixed-precision dtype for extraction: bfloat16 (float16 on GPUs without bf16) on CUDA
    unless ``amp`` is False; always None (full float32) on CPU, where it would only be slower."""
    if device.type != "cuda" or amp is False:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# Below this many multiply-adds per objective evaluation (rows x dim x classes) a CPU fit runs
# on one thread: the matrices are too small to split, and on a shared machine OpenMP threads
# waiting for each other made a digits-size sweep 25x slower.
SINGLE_THREAD_WORK = 50_000_000


@contextlib.contextmanager
def cpu_threads(count: int | None):
    """Run the block with ``count`` torch intra-op threads (None: leave as is)."""
    if count is None or count == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_for(device, work: float) -> int | None:
    return 1 if torch.device(device).type == "cpu" and work < SINGLE_THREAD_WORK else None
