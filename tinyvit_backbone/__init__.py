"""TinyViT for OpenMMLab detection and segmentation, built on timm's TinyVit.

Importing this package registers ``TinyViT`` and ``TinyViTLayerDecayOptimizerConstructor`` in
mmengine's root registries, which mmdet's and mmseg's registries fall back to (see
:mod:`.registration`). Configs pull it in with::

    custom_imports = dict(imports=['tinyvit_backbone'], allow_failed_imports=False)

The import is light: nothing of torch, timm, mmdet or mmseg is loaded until a model is built or
one of the names below is used (they resolve on first access).
"""
from importlib import import_module
from importlib.util import find_spec

from .registration import register_all

# Without mmengine nothing can build from a config, so there is nothing to register; the
# torch-only modules (inference, export, device, files, ...) still import.
if find_spec("mmengine") is not None:
    register_all()

_EXPORTS = {
    "ARCH_SETTINGS": "backbone", "TinyViT": "backbone", "build_timm_tinyvit": "backbone",
    "resolve_arch": "backbone", "CheckpointError": "checkpoint",
    "backbone_state_dict": "checkpoint", "TinyViTLayerDecayOptimizerConstructor": "layer_decay",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
