"""Make ``type='TinyViT'`` and ``constructor='TinyViTLayerDecayOptimizerConstructor'`` buildable
by mmengine, mmdet and mmseg, without importing any of their model code.

mmengine's registries are a tree: mmdet's and mmseg's ``MODELS`` (and optimizer-constructor
registries) have mmengine's root registry as parent, and ``Registry.get`` falls back to the
parent when a name is not in a child. One registration in the root therefore serves mmdet,
mmseg and a plain mmengine ``Runner`` alike, and importing this package never loads mmdet or
mmseg.

What is registered are small builder functions (mmengine registries accept functions): they
import the backbone (torch, timm, mmengine.model) only when a config builds one, so
``import tinyvit_backbone`` costs ``mmengine.registry`` (about 0.3 s) instead of the whole
detection stack.
"""
from __future__ import annotations

import sys

BACKBONE_NAME = "TinyViT"
CONSTRUCTOR_NAME = "TinyViTLayerDecayOptimizerConstructor"


def build_tinyvit_backbone(*args, **kwargs):
    """Build :class:`tinyvit_backbone.backbone.TinyViT` (what ``type='TinyViT'`` calls)."""
    from .backbone import TinyViT
    from .safe_load import register_mmengine_safe_globals

    register_mmengine_safe_globals()  # so resuming this run can read mmengine's checkpoints
    return TinyViT(*args, **kwargs)


def build_layer_decay_constructor(*args, **kwargs):
    """Build :class:`tinyvit_backbone.layer_decay.TinyViTLayerDecayOptimizerConstructor`."""
    from .layer_decay import TinyViTLayerDecayOptimizerConstructor

    return TinyViTLayerDecayOptimizerConstructor(*args, **kwargs)


build_tinyvit_backbone.__name__ = BACKBONE_NAME
build_layer_decay_constructor.__name__ = CONSTRUCTOR_NAME


def register_all() -> None:
    """Register both builders in mmengine's root registries (idempotent). When torch is
    already loaded (as under mmdet's and mmseg's train scripts), also allow-list mmengine's
    checkpoint types for ``torch.load(weights_only=True)``, so ``resume`` works for any model
    of the run; otherwise that happens when the first TinyViT is built."""
    from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

    MODELS.register_module(name=BACKBONE_NAME, module=build_tinyvit_backbone, force=True)
    OPTIM_WRAPPER_CONSTRUCTORS.register_module(name=CONSTRUCTOR_NAME,
                                               module=build_layer_decay_constructor, force=True)
    if "torch" in sys.modules:
        from .safe_load import register_mmengine_safe_globals

        register_mmengine_safe_globals()
