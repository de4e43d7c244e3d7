"""TinyViT for OpenMMLab detection and segmentation, built on timm's TinyVit.

Importing this package registers the ``TinyViT`` backbone in mmdet's and mmseg's ``MODELS`` and
``TinyViTLayerDecayOptimizerConstructor`` in their optimizer-constructor registries, and lets
``torch.load(weights_only=True)`` read mmengine's own checkpoints (so ``resume`` works on
torch >= 2.6). Configs pull it in with::

    custom_imports = dict(imports=['tinyvit_backbone'], allow_failed_imports=False)
"""
from .safe_load import register_mmengine_safe_globals

register_mmengine_safe_globals()

from .backbone import ARCH_SETTINGS, TinyViT, build_timm_tinyvit, resolve_arch  # noqa: E402
from .checkpoint import CheckpointError, backbone_state_dict  # noqa: E402
from .layer_decay import TinyViTLayerDecayOptimizerConstructor  # noqa: E402
from .registration import register_all  # noqa: E402

register_all()

__all__ = ["ARCH_SETTINGS", "CheckpointError", "TinyViT", "TinyViTLayerDecayOptimizerConstructor",
           "backbone_state_dict", "build_timm_tinyvit", "resolve_arch"]
