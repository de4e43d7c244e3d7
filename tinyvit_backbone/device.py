"""Where every tool of the project computes: one policy, tested on CPU.

* ``auto`` (or None): the GPU of this process when CUDA is available — ``cuda:LOCAL_RANK``
  under torchrun — else the CPU. Asking for CUDA where there is none is an error with the fix,
  never a silent CPU run.
* Mixed precision: on for CUDA (bfloat16 where supported, else float16), off on CPU unless
  asked for (then bfloat16).
"""
from __future__ import annotations

import contextlib
import os

import torch


def select_device(requested: str | torch.device | None = None, *, local_rank: int | None = None,
                  cuda_available: bool | None = None) -> torch.device:
    """``auto`` / None -> ``cuda:LOCAL_RANK`` (or ``cuda``) if CUDA is available, else ``cpu``;
    ``cpu``; ``cuda`` / ``cuda:N`` (refused, with the fix, when there is no such GPU).
    Raises ValueError on a bad request."""
    has_cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if local_rank is None and "LOCAL_RANK" in os.environ:
        local_rank = int(os.environ["LOCAL_RANK"])
    req = str(requested if requested is not None else "auto").strip().lower()
    if req == "auto":
        if not has_cuda:
            return torch.device("cpu")
        return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")
    try:
        device = torch.device(req)
    except RuntimeError:
        raise ValueError(f"--device {requested!r} is not a device name: use auto, cpu, cuda or "
                         "cuda:N") from None
    if device.type == "cuda":
        if not has_cuda:
            raise ValueError(f"--device {requested} asks for CUDA, but torch sees no GPU here (no "
                             "driver, a CPU-only build, or CUDA_VISIBLE_DEVICES is empty); use "
                             "--device cpu, or --device auto to take what there is")
        if device.index is None and local_rank is not None:
            device = torch.device(f"cuda:{local_rank}")
        if cuda_available is None and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s) "
                             "are visible")
    elif device.type != "cpu":
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {requested!r}")
    return device


def amp_dtype(device: torch.device, amp: bool | None = None,
              bf16_supported: bool | None = None) -> torch.dtype | None:
    """Autocast dtype, or None for full precision; ``amp=None`` means on for CUDA only."""
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


@contextlib.contextmanager
def cpu_threads(count: int | None):
    """Run the block with ``count`` torch intra-op threads (None: leave as is). Tiny tensors
    (32-px digits, small probes) run faster on one thread than with threads waiting on each
    other, and much faster when other processes share the cores."""
    if count is None or count == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
