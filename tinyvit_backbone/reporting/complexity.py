"""Parameters and multiply-accumulates of the official TinyViT classifiers, counted here.

The model is timm's ``TinyVit`` with its 1000-class head, built on the ``meta`` device (no
memory, no arithmetic); one forward pass under ``torch.utils.flop_counter.FlopCounterMode``
counts the FLOPs of every matmul, convolution and attention kernel from shapes alone, and
MACs = FLOPs / 2. Measured this way TinyViT-5M/11M/21M at 224 and 21M at 384/512 come to
1.26 / 2.02 / 4.25 / 13.70 / 26.88 GMACs against the paper's 1.3 / 2.0 / 4.3 / 13.8 / 27.0.
mmengine.analysis was tried first and undercounts these models (1.17 / 1.89 / 4.06 / 11.94 /
21.23 G): its tracer has no handle for ``aten::scaled_dot_product_attention``, the fused
attention timm uses, so the attention matmuls go uncounted.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

METHOD = ("timm TinyVit with its 1000-class head, counted on the meta device with "
          "torch.utils.flop_counter (MACs = FLOPs / 2, batch 1)")


@dataclass(frozen=True)
class Complexity:
    params_m: float
    gmacs: float


def window_sizes_for(input_size: int) -> list[int] | None:
    """The official window sizes of the 384 / 512 fine-tuned checkpoints; None = the arch's."""
    from ..backbone import WINDOW_SIZES_384, WINDOW_SIZES_512
    return {384: list(WINDOW_SIZES_384), 512: list(WINDOW_SIZES_512)}.get(input_size)


@functools.lru_cache(maxsize=32)
def classifier_complexity(arch: str, input_size: int) -> Complexity:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..backbone import build_timm_tinyvit
    kwargs = {}
    ws = window_sizes_for(input_size)
    if ws is not None:
        kwargs["window_sizes"] = ws
    with torch.device("meta"):
        model = build_timm_tinyvit(arch, num_classes=1000, **kwargs).eval()
        x = torch.empty(1, 3, input_size, input_size)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(params / 1e6, counter.get_total_flops() / 2e9)
