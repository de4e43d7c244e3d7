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

More hooks serve whole runs, not only TinyViT: mmengine's checkpoint loader fetches the
model zoo's URLs through :mod:`tinyvit_backbone.weights` (mirror, size and sha256 checks, e.g.
for a Swin-T baseline's ``init_cfg``), ``torch.load(weights_only=True)`` is allowed to read
mmengine's own checkpoints (``resume``), and a Runner built from a config first checks that its
dataset files are there (:mod:`.config_data`). They need torch, and they must be in place
whenever mmengine's runner can run in a process that imported this package, whatever the
model: they are installed right away when mmengine's runner is loaded already (as mmdet's and
mmseg's train scripts have when they read ``custom_imports``), and otherwise the moment
``mmengine.runner`` is imported (a one-shot import hook, :class:`_AfterRunnerImport`), so a run
with no TinyViT in it resumes as well as one with.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

BACKBONE_NAME = "TinyViT"
CONSTRUCTOR_NAME = "TinyViTLayerDecayOptimizerConstructor"


def build_tinyvit_backbone(*args, **kwargs):
    """Build :class:`tinyvit_backbone.backbone.TinyViT` (what ``type='TinyViT'`` calls)."""
    from .backbone import TinyViT

    install_run_hooks()
    return TinyViT(*args, **kwargs)


def build_layer_decay_constructor(*args, **kwargs):
    """Build :class:`tinyvit_backbone.layer_decay.TinyViTLayerDecayOptimizerConstructor`."""
    from .layer_decay import TinyViTLayerDecayOptimizerConstructor

    return TinyViTLayerDecayOptimizerConstructor(*args, **kwargs)


build_tinyvit_backbone.__name__ = BACKBONE_NAME
build_layer_decay_constructor.__name__ = CONSTRUCTOR_NAME


def install_run_hooks() -> None:
    """The zoo's URL scheme in mmengine's checkpoint loader, mmengine's checkpoint types in
    torch's ``weights_only`` allow-list, and the dataset check of ``Runner.from_cfg``
    (:mod:`tinyvit_backbone.config_data`) (idempotent)."""
    from .config_data import install_runner_check
    from .safe_load import register_mmengine_safe_globals
    from .weights import register_mmengine_scheme

    register_mmengine_safe_globals()
    register_mmengine_scheme()
    install_runner_check()


class _AfterRunnerImport(importlib.abc.MetaPathFinder):
    """Calls :func:`install_run_hooks` once ``mmengine.runner`` has been executed, then leaves
    ``sys.meta_path``. It finds the module as the standard path finder does and only wraps
    that loader's ``exec_module``; importing this package stays free of torch."""

    TARGET = "mmengine.runner"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.TARGET:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec  # an unusual installation: build_tinyvit_backbone still installs them
        exec_module = loader.exec_module

        def exec_then_install(module):
            exec_module(module)
            install_run_hooks()

        loader.exec_module = exec_then_install
        return spec


def register_all() -> None:
    """Register both builders in mmengine's root registries (idempotent), and the run hooks
    now when mmengine's runner is loaded already, else when it is (module docstring)."""
    from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

    MODELS.register_module(name=BACKBONE_NAME, module=build_tinyvit_backbone, force=True)
    OPTIM_WRAPPER_CONSTRUCTORS.register_module(name=CONSTRUCTOR_NAME,
                                               module=build_layer_decay_constructor, force=True)
    if "mmengine.runner" in sys.modules:
        install_run_hooks()
    elif not any(isinstance(f, _AfterRunnerImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterRunnerImport())
