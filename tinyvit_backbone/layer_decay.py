"""Layer-wise learning-rate decay for TinyViT detectors, segmenters and classifiers.

mmdet's and mmseg's ``LearningRateDecayOptimizerConstructor`` only know ConvNeXt / BEiT / MAE
names and raise ``NotImplementedError`` for anything else, so TinyViT gets its own constructor.

Usage in a config::

    optim_wrapper = dict(
        constructor='TinyViTLayerDecayOptimizerConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(layer_decay_rate=0.8))

Each backbone parameter gets ``lr * rate ** (num_layers + 1 - layer_id)`` where ``layer_id``
comes from :meth:`TinyViT.layer_id` (stem 0, blocks 1..N in order, a patch merging with the
block before it); parameters outside the backbone (neck, heads) keep the base lr. Weight decay
is 0 for ``attention_biases``, every norm and every bias (1-D tensors), as in the official
recipe (``no_weight_decay_keywords``).
"""
from __future__ import annotations

import torch.nn as nn
from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor

NO_DECAY_KEYWORDS = ("attention_biases",)


def find_tinyvit(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The TinyViT inside ``model`` (itself, or ``.backbone``) and its name prefix."""
    model = getattr(model, "module", model)  # DDP wrappers
    if hasattr(model, "layer_id") and hasattr(model, "num_layers"):
        return model, ""
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "layer_id"):
        return backbone, "backbone."
    return None


def layer_decay_param_groups(model: nn.Module, lr: float, weight_decay: float,
                             decay_rate: float) -> list[dict]:
    """Parameter groups with layer-decayed lr and no decay on biases, norms, attention biases.

    Groups carry ``lr`` / ``weight_decay`` ready for any torch optimizer, plus ``lr_scale`` and
    ``layer_id`` for inspection.
    """
    found = find_tinyvit(model)
    if found is None:
        raise TypeError(f"{type(model).__name__} has no TinyViT backbone (a module with "
                        "`layer_id`); use the default optimizer constructor instead")
    backbone, prefix = found
    top = backbone.num_layers + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in getattr(model, "module", model).named_parameters():
        if not param.requires_grad:
            continue
        if prefix and not name.startswith(prefix):
            layer = top
        else:
            layer = backbone.layer_id(name[len(prefix):])
        no_decay = param.ndim <= 1 or any(k in name for k in NO_DECAY_KEYWORDS)
        key = (layer, no_decay)
        if key not in groups:
            scale = decay_rate ** (top - layer)
            groups[key] = dict(params=[], param_names=[], layer_id=layer, lr_scale=scale,
                               lr=lr * scale, weight_decay=0.0 if no_decay else weight_decay)
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


class TinyViTLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """mmengine optimizer-wrapper constructor; ``paramwise_cfg.layer_decay_rate`` (default 1.0,
    i.e. no decay, but still no weight decay on biases / norms / attention biases)."""

    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        rate = float(self.paramwise_cfg.get("layer_decay_rate", 1.0))
        groups = layer_decay_param_groups(module, self.base_lr, self.base_wd or 0.0, rate)
        for group in groups:
            group.pop("param_names")
        params.extend(groups)
        print_log(f"TinyViT layer decay {rate}: {len(groups)} parameter groups, lr scales "
                  f"{min(g['lr_scale'] for g in groups):.3g}..1", logger=MMLogger.get_current_instance())
