"""Put the backbone and the layer-decay constructor into every OpenMMLab registry that
builds them: mmengine's root (plain Runner), mmdet's and mmseg's (their default scopes); and let
mmengine's checkpoint loader fetch the model zoo's URLs through :mod:`tinyvit_backbone.weights`."""
import importlib

from .backbone import TinyViT
from .layer_decay import TinyViTLayerDecayOptimizerConstructor
from .weights import register_mmengine_scheme

_SCOPES = ("mmengine", "mmdet", "mmseg")


def register_all() -> list[str]:
    """Register in each installed scope; returns the scopes registered (idempotent)."""
    register_mmengine_scheme()
    done = []
    for scope in _SCOPES:
        try:
            registry = importlib.import_module(f"{scope}.registry")
        except ImportError:
            continue
        registry.MODELS.register_module(module=TinyViT, force=True)
        registry.OPTIM_WRAPPER_CONSTRUCTORS.register_module(
            module=TinyViTLayerDecayOptimizerConstructor, force=True)
        done.append(scope)
    return done
