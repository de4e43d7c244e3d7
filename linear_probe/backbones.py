"""Frozen backbones as feature extractors: the project's TinyViT or any timm model by name.

Model specs (:class:`ModelSpec`, CLI ``--model`` / ``--arch`` / ``--weights``):

* ``tinyvit`` + ``arch`` ('5m' | '11m' | '21m' | a JSON file or dict with embed_dims / depths
  / num_heads / window_sizes) + optional ``weights`` in any layout
  :func:`tinyvit_backbone.checkpoint.backbone_state_dict` reads (official Cream, timm .pth /
  .safetensors, OpenMMLab). Built as timm's ``TinyVit`` through
  :func:`tinyvit_backbone.backbone.build_timm_tinyvit` and sped up with
  :func:`tinyvit_backbone.inference.fuse_for_inference` (same features within 1e-5).
* ``timm:<name>`` + optional ``weights`` (a timm-layout state dict; classifier keys dropped).

Without weights the model is randomly initialised from ``init_seed`` (deterministic, digest
``'random'``); nothing is ever downloaded.

Feature layers (``--feature-layer``):

* ``pooled`` (default): timm's pre-logits features — global average pool of the final stage
  followed by the head's norm where the model has one (TinyViT: LayerNorm; its learned
  affine comes from the checkpoint's ``norm_head`` / ``head.norm``).
* ``stage<i>``: global average pool of ``forward_intermediates`` output ``i`` (stages for
  hierarchical models such as TinyViT: 0..3; blocks for plain ViTs), no norm.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn

_DIGESTS: dict[tuple, str] = {}
TINYVIT_DATA_CFG = "tiny_vit_21m_224.dist_in22k_ft_in1k"  # timm's eval preprocessing for TinyViT


def file_digest(path: str, length: int = 16) -> str:
    """sha256 of a file's bytes, first ``length`` hex digits (memoised per path, size, mtime)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        from tinyvit_backbone.files import sha256_file
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key][:length]


@dataclass
class ModelSpec:
    """Which frozen backbone to evaluate (see the module docstring)."""

    model: str = "tinyvit"
    arch: str | dict | None = "21m"
    weights: str | None = None
    label: str | None = None
    init_seed: int = 0
    pretraining: str | None = None  # one of linear_probe.results.PRETRAININGS, recorded as is
    _arch_cache: dict | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.model.startswith("tinyvit-"):
            self.model, self.arch = "tinyvit", self.model[len("tinyvit-"):]
        if self.model != "tinyvit" and not self.model.startswith("timm:"):
            raise ValueError(f"--model must be 'tinyvit' or 'timm:<name>' (e.g. timm:resnet50), "
                             f"got {self.model!r}")
        if self.model == "tinyvit" and self.arch is None:
            self.arch = "21m"
        from .results import PRETRAININGS
        if self.pretraining is not None and self.pretraining not in PRETRAININGS:
            raise ValueError(f"--pretraining must be one of {', '.join(PRETRAININGS)}, got "
                             f"{self.pretraining!r}")
        if self.weights is not None:
            # A registry name, URL or hub tag becomes its verified file in the caches (fetched
            # once), so the digest and the loader below see a local file.
            from tinyvit_backbone.weights import WeightsNotFoundError, resolve_weights
            try:
                self.weights = resolve_weights(self.weights).path
            except WeightsNotFoundError:
                raise FileNotFoundError(
                    f"--weights {self.weights!r}: no such file. Give a checkpoint file (.pth / "
                    ".safetensors), a registry name (python -m tinyvit_backbone.weights list), "
                    "an http(s) URL or a timm/... hub tag, or leave --weights out for a "
                    "randomly initialised model.") from None

    @property
    def kind(self) -> str:
        return "tinyvit" if self.model == "tinyvit" else "timm"

    @property
    def timm_name(self) -> str:
        return self.model[len("timm:"):]

    def arch_spec(self) -> dict | None:
        """The full TinyViT architecture dict (None for timm models)."""
        if self.kind != "tinyvit":
            return None
        if self._arch_cache is None:
            from tinyvit_backbone.backbone import resolve_arch
            self._arch_cache = resolve_arch(self.arch)
        return self._arch_cache

    def arch_field(self):
        """``arch`` as recorded in results: the variant name, JSON path, dict, or timm name."""
        return self.arch if self.kind == "tinyvit" else self.timm_name

    def display_label(self) -> str:
        if self.label:
            return self.label
        if self.kind == "timm":
            return self.timm_name
        if isinstance(self.arch, str):
            stem = os.path.splitext(os.path.basename(self.arch))[0]
            return f"tinyvit-{stem.lower().removeprefix('tinyvit-')}"
        return "tinyvit-custom"

    def weights_digest(self) -> str:
        return file_digest(self.weights) if self.weights else "random"

    def key_parts(self) -> dict:
        """Everything about the model that changes its features (for the feature-cache key)."""
        import timm
        parts = {"kind": self.kind, "weights_digest": self.weights_digest(),
                 "timm": timm.__version__}
        if self.kind == "tinyvit":
            parts["arch"] = self.arch_spec()
        else:
            parts["name"] = self.timm_name
        if not self.weights:
            parts["init_seed"] = self.init_seed
        return parts

    def data_config(self, image_size: int | None = None) -> dict:
        """timm's eval preprocessing (input size, crop, interpolation, mean, std)."""
        from timm.data import resolve_data_config
        from timm.models import get_pretrained_cfg
        name = TINYVIT_DATA_CFG if self.kind == "tinyvit" else self.timm_name
        cfg = get_pretrained_cfg(name)
        config = resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg else {})
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
        if image_size:
            config["input_size"] = [3, int(image_size), int(image_size)]
        return config


# --------------------------------------------------------------------------- building
def _load_timm_weights(net: nn.Module, path: str) -> None:
    from tinyvit_backbone.checkpoint import load_pretrained
    load_pretrained(net, path, classifier="drop")


def build_network(spec: ModelSpec) -> nn.Module:
    """The timm network with weights loaded (or seeded random init), classifier removed,
    eval mode, no gradients."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        if spec.kind == "tinyvit":
            from tinyvit_backbone.backbone import build_timm_tinyvit
            net = build_timm_tinyvit(spec.arch_spec(), num_classes=0)
        else:
            import timm
            try:
                net = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
            except RuntimeError as err:
                raise ValueError(f"timm has no model {spec.timm_name!r} ({err}); list names with "
                                 "python -c \"import timm; print(timm.list_models('*vit*'))\"") from err
    if spec.weights:
        if spec.kind == "tinyvit":
            from tinyvit_backbone.checkpoint import backbone_state_dict
            # head.norm is part of the pooled features; a backbone-only (mmdet) checkpoint lacks
            # it and keeps the identity init.
            state = backbone_state_dict(spec.weights, net.state_dict(), optional_prefixes=("head.",))
            net.load_state_dict(state, strict=False)
        else:
            _load_timm_weights(net, spec.weights)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def num_stages(net: nn.Module) -> int:
    if hasattr(net, "stages"):
        return len(net.stages)
    info = getattr(net, "feature_info", None)
    return len(info) if info is not None else 0


class FeatureExtractor(nn.Module):
    """Images (B, 3, H, W) -> features (B, D) float32 at ``layer`` (see module docstring)."""

    def __init__(self, net: nn.Module, layer: str = "pooled"):
        super().__init__()
        self.net = net
        self.layer = layer
        if layer == "pooled":
            self.index = None
        else:
            if not layer.startswith("stage") or not layer[5:].lstrip("-").isdigit():
                raise ValueError(f"--feature-layer must be 'pooled' or 'stage<i>', got {layer!r}")
            if not hasattr(net, "forward_intermediates"):
                raise ValueError(f"{type(net).__name__} has no forward_intermediates; only "
                                 "--feature-layer pooled works for it")
            count = num_stages(net)
            index = int(layer[5:])
            if count and not -count <= index < count:
                raise ValueError(f"--feature-layer {layer}: this model has stages 0..{count - 1}")
            self.index = index % count if count else index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            feats = self.net.forward_head(self.net.forward_features(x), pre_logits=True)
        else:
            out = self.net.forward_intermediates(x, indices=[self.index], intermediates_only=True,
                                                 stop_early=True)[0]
            feats = out.mean(dim=(-2, -1)) if out.dim() == 4 else out.mean(dim=1)
        return feats.flatten(1).float()


def build_extractor(spec: ModelSpec, layer: str = "pooled", device=None,
                    fuse: bool = True, backend: str = "torch", image_size: int = 224):
    """The frozen feature extractor on ``device``; TinyViT is fused for inference.

    ``backend='onnxruntime'`` (TinyViT on the CPU): that extractor exported to ONNX, checked
    against it at ``image_size`` and run by ONNX Runtime; called the same way. The torch
    TinyViT extractor runs over the CPU's cores in the faster of two ways, measured on its first
    batches (:class:`~tinyvit_backbone.inference.BatchParallel`)."""
    net = build_network(spec)
    if fuse and spec.kind == "tinyvit":
        from tinyvit_backbone.inference import fuse_for_inference
        net = fuse_for_inference(net)
    extractor = FeatureExtractor(net, layer).eval()
    if backend == "onnxruntime":
        from tinyvit_backbone.export import onnxruntime_module
        return onnxruntime_module(extractor, "features", (image_size, image_size))
    if fuse and spec.kind == "tinyvit":
        from tinyvit_backbone.inference import BatchParallel
        extractor = BatchParallel(extractor)  # over the CPU's cores; a no-op elsewhere
    return extractor.to(device) if device is not None else extractor

