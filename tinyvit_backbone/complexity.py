"""The one complexity counter of the project: parameters and multiply-accumulates of a TinyViT.

Counts are of timm's ``TinyVit`` classifier with a ``num_classes`` head (1000 by default, as in
the paper's tables), for one image of ``resolution`` x ``resolution``. The model is built on the
``meta`` device (shapes only: no memory, no arithmetic, milliseconds) and one forward pass runs
under ``torch.utils.flop_counter.FlopCounterMode``, which counts every matmul, convolution and
attention kernel from its shapes; MACs = FLOPs / 2 (one fused multiply-add = one MAC).

Why this counter: a MAC is a multiply-accumulate of a linear, convolution or attention product,
and this counts exactly those, fused attention (``scaled_dot_product_attention``) included.
mmengine's ``FlopAnalyzer`` (fvcore's tracer) has no handle for fused attention (it skips the
attention products unless the model falls back to explicit matmuls) and adds norms and pooling
at one "MAC" per element, which are not multiply-accumulates: for the official 5M / 21M it read
1.270 / 4.276 G against 1.255 / 4.250 G here. The paper rounds to 1.3 / 4.3 G; the counts here
for 5M / 11M / 21M at 224 and 21M at 384 / 512 are 1.26 / 2.02 / 4.25 / 13.70 / 26.88 G
(published: 1.3 / 2.0 / 4.3 / 13.8 / 27.0).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

METHOD = ("timm TinyVit with its 1000-class head, counted on the meta device with "
          "torch.utils.flop_counter (MACs = FLOPs / 2, batch 1)")


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def window_sizes_for(input_size: int) -> list[int] | None:
    """The official window sizes of the 384 / 512 fine-tuned checkpoints; None = the arch's."""
    from .backbone import WINDOW_SIZES_384, WINDOW_SIZES_512
    return {384: list(WINDOW_SIZES_384), 512: list(WINDOW_SIZES_512)}.get(input_size)


def _key(arch) -> str:
    import json
    return arch if isinstance(arch, str) else json.dumps(arch, sort_keys=True)


def complexity(arch, resolution: int = 224, num_classes: int = 1000,
               window_sizes=None) -> Complexity:
    """Params and MACs of the classifier for ``arch`` (a variant name, dict or arch JSON file).
    ``window_sizes`` overrides the arch's (e.g. :func:`window_sizes_for` the resolution)."""
    ws = None if window_sizes is None else tuple(window_sizes)
    return _complexity(_key(arch), int(resolution), int(num_classes), ws)


@functools.lru_cache(maxsize=256)
def _complexity(arch_key: str, resolution: int, num_classes: int, window_sizes) -> Complexity:
    import json

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .backbone import build_timm_tinyvit

    arch = arch_key if not arch_key.startswith("{") else json.loads(arch_key)
    kwargs = {} if window_sizes is None else {"window_sizes": list(window_sizes)}
    with torch.device("meta"):
        model = build_timm_tinyvit(arch, num_classes=num_classes, **kwargs).eval()
        x = torch.empty(1, 3, resolution, resolution)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(int(params), int(counter.get_total_flops() // 2))


def count_params(arch, num_classes: int = 1000) -> int:
    """Parameters of the classifier (head included)."""
    return complexity(arch, 224, num_classes).params


def count_macs(arch, resolution: int = 224, num_classes: int = 1000) -> int:
    """MACs of one forward pass at ``resolution``."""
    return complexity(arch, resolution, num_classes).macs


def classifier_complexity(arch: str, input_size: int) -> Complexity:
    """An official variant at one of its published input sizes (224 / 384 / 512 windows)."""
    return complexity(arch, input_size, 1000, window_sizes_for(input_size))
