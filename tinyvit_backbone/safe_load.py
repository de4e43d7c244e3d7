"""Safe ``torch.load`` for mmengine checkpoints on torch >= 2.6.

torch 2.6 switched ``torch.load`` to ``weights_only=True``; mmengine 0.10.7 still calls it
without arguments, and its checkpoints pickle a few non-tensor objects (the message hub's
``HistoryBuffer`` with NumPy arrays, NumPy scalars in the runtime info), so ``resume=True``
fails with an ``UnpicklingError``. Instead of switching the safety check off, this module adds
exactly those types to torch's allow-list (and a ``getattr`` that only resolves
``HistoryBuffer`` methods), which keeps arbitrary code out of checkpoints.
"""
from __future__ import annotations

import pickle

import torch


def _numpy_globals() -> list:
    import numpy as np
    # NumPy arrays and scalars pickle through these reconstructors and dtype classes.
    try:
        from numpy.core.multiarray import _reconstruct, scalar
    except ImportError:  # NumPy >= 2 moved them
        from numpy._core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(t)) for t in
                     (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                      np.uint8, np.bool_)]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def _history_buffer_method(owner, name: str):
    """Stands in for ``getattr`` while unpickling, for one purpose only.

    ``HistoryBuffer.__getstate__`` stores its statistics methods (``min``, ``max``, ``mean``,
    ``current`` and user-registered ones), which pickle as ``getattr(HistoryBuffer, 'min')``.
    Allowing the real ``getattr`` would let a checkpoint reach any attribute of any allowed
    object; this substitute resolves only methods of ``HistoryBuffer`` and refuses the rest.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    if owner is HistoryBuffer and not name.startswith("_") and callable(getattr(owner, name, None)):
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f"refusing getattr({owner!r}, {name!r}) while loading with weights_only=True: only "
        "HistoryBuffer statistics methods are allowed (tinyvit_backbone.safe_load)")


def register_mmengine_safe_globals() -> None:
    """Allow-list the types mmengine stores in its checkpoints (idempotent)."""
    if not hasattr(torch.serialization, "add_safe_globals"):
        return  # torch < 2.4 does not default to weights_only
    allowed = _numpy_globals()
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
    except ImportError:
        pass
    else:
        allowed += [HistoryBuffer, (_history_buffer_method, "builtins.getattr")]
    torch.serialization.add_safe_globals(allowed)


def torch_load(path, map_location="cpu"):
    """``torch.load`` with ``weights_only=True`` and mmengine's types allowed."""
    register_mmengine_safe_globals()
    return torch.load(path, map_location=map_location, weights_only=True)
