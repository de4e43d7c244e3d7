"""TinyViT as an OpenMMLab backbone, built from timm's ``TinyVit`` blocks.

The backbone owns timm's ``patch_embed`` and ``stages`` modules directly (the classifier head is
discarded), so its parameter names are exactly timm's: timm checkpoints, mmdet/mmseg checkpoints
(``backbone.`` + timm names) and timm's own tooling (``group_matcher``) all line up without a
rename. Official Cream checkpoints are renamed by :mod:`tinyvit_backbone.checkpoint`.

Unlike mmpretrain's TinyViT, any input size works (timm pads windows) and the four outputs are
at strides 4 / 8 / 16 / 32, which is what FPN / UperNet expect.
"""
from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.logging import MMLogger, print_log
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d
from timm.models.tiny_vit import TinyVit

from .checkpoint import load_pretrained as _load_pretrained

# Official variants (Wu et al. 2022, Table 1; microsoft/Cream). Window sizes are for 224 inputs;
# stage 0 is MBConv, so its window is unused (kept for a uniform 4-entry list).
ARCH_SETTINGS: dict[str, dict[str, list[int]]] = {
    "5m": dict(embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
               window_sizes=[7, 7, 14, 7]),
    "11m": dict(embed_dims=[64, 128, 256, 448], depths=[2, 2, 6, 2], num_heads=[2, 4, 8, 14],
                window_sizes=[7, 7, 14, 7]),
    "21m": dict(embed_dims=[96, 192, 384, 576], depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 18],
                window_sizes=[7, 7, 14, 7]),
}
# Window sizes of the official 384 / 512 fine-tuned 21M checkpoints.
WINDOW_SIZES_384 = [12, 12, 24, 12]
WINDOW_SIZES_512 = [16, 16, 32, 16]
HEAD_DIM = 32


def _read_arch_file(path: str) -> dict:
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"arch file not found: {path!r}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"arch file {path!r} is not valid JSON ({err})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"arch file {path!r} must hold a JSON object, found {type(spec).__name__}")
    return spec


def resolve_arch(arch: str | dict, window_sizes: Sequence[int] | None = None) -> dict:
    """Return a full architecture dict (embed_dims, depths, num_heads, window_sizes).

    ``arch`` is a variant name, a dict, or the path of a JSON file holding that dict (as
    written by the model-shrinking search); a dict may omit ``num_heads`` (then dim / 32, the
    official head dimension) and ``window_sizes`` (then 7, 7, 14, 7).
    """
    if isinstance(arch, (str, os.PathLike)) and str(arch).endswith(".json"):
        arch = _read_arch_file(os.fspath(arch))
    if isinstance(arch, str):
        key = arch.lower().removeprefix("tinyvit-").removeprefix("tiny_vit_")
        if key not in ARCH_SETTINGS:
            raise ValueError(f"unknown TinyViT arch {arch!r}: use one of {sorted(ARCH_SETTINGS)} "
                             "or a dict with embed_dims / depths / num_heads / window_sizes")
        spec = copy.deepcopy(ARCH_SETTINGS[key])
    else:
        spec = {k: list(v) for k, v in dict(arch).items()}
        unknown = set(spec) - {"embed_dims", "depths", "num_heads", "window_sizes"}
        if unknown or not {"embed_dims", "depths"} <= set(spec):
            raise ValueError(f"arch dict needs embed_dims and depths (optional num_heads, "
                             f"window_sizes); got keys {sorted(spec)}")
        spec.setdefault("num_heads", [max(1, d // HEAD_DIM) for d in spec["embed_dims"]])
        spec.setdefault("window_sizes", [7, 7, 14, 7][: len(spec["depths"])])
    if window_sizes is not None:
        spec["window_sizes"] = list(window_sizes)
    n = len(spec["depths"])
    for name in ("embed_dims", "num_heads", "window_sizes"):
        if len(spec[name]) != n:
            raise ValueError(f"arch: {name} has {len(spec[name])} entries, depths has {n}")
    for dim, heads in zip(spec["embed_dims"][1:], spec["num_heads"][1:]):
        if dim % heads:
            raise ValueError(f"arch: embed dim {dim} is not divisible by {heads} heads")
    return spec


def build_timm_tinyvit(arch: str | dict = "21m", num_classes: int = 1000, **kwargs) -> TinyVit:
    """A timm ``TinyVit`` classifier for ``arch`` (used by distillation and the probes)."""
    spec = resolve_arch(arch, kwargs.pop("window_sizes", None))
    kwargs.setdefault("drop_path_rate", 0.0)
    return TinyVit(num_classes=num_classes, **spec, **kwargs)


class TinyViT(BaseModule):
    """TinyViT backbone for mmdet / mmseg.

    Args:
        arch: '5m', '11m', '21m', or a dict of embed_dims / depths / num_heads / window_sizes.
        window_sizes: per-stage attention windows, overriding the arch's (e.g. 16,16,32,16 for
            512 inputs). Pretrained ``attention_biases`` are resized to them when loading.
        out_indices: stages whose outputs are returned (strides 4, 8, 16, 32).
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and stages 0..k-1 (no grads,
            eval mode, re-applied on every ``train()``).
        norm_eval: keep BatchNorm layers in eval mode while training (small-batch detection).
        with_cp: activation checkpointing per stage (saves memory, costs a recompute).
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        out_norms: add a LayerNorm on each returned map (like Swin's ``norm{i}``); new
            parameters, initialised to identity, named ``norm{i}``.
        pretrained: weights to load (shorthand for ``init_cfg=dict(type='Pretrained', ...)``).
        init_cfg: ``dict(type='Pretrained', checkpoint=SPEC)``: a registry name (e.g.
            ``'tiny_vit_21m_22kto1k_distill'``), an http(s) URL, a ``timm/...`` hub tag or a
            path, in the official, timm or OpenMMLab layout (see
            :mod:`tinyvit_backbone.checkpoint`). A registry checkpoint of another arch is
            refused before it is downloaded.
    """

    def __init__(
        self,
        arch: str | dict = "21m",
        window_sizes: Sequence[int] | None = None,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        drop_path_rate: float = 0.0,
        out_norms: bool = False,
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        in_channels: int = 3,
        pretrained: str | None = None,
        init_cfg: dict | list | None = None,
    ):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError("give either `pretrained` or `init_cfg`, not both")
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)
        self.arch = resolve_arch(arch, window_sizes)
        num_stages = len(self.arch["depths"])
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(not 0 <= i < num_stages for i in self.out_indices):
            raise ValueError(f"out_indices {self.out_indices} must be within 0..{num_stages - 1}")
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"frozen_stages must be in -1..{num_stages}, got {frozen_stages}")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        body = TinyVit(in_chans=in_channels, num_classes=0, drop_path_rate=drop_path_rate,
                       mlp_ratio=mlp_ratio, mbconv_expand_ratio=mbconv_expand_ratio, **self.arch)
        # Adopt timm's modules so parameter names equal timm's; its head is not needed.
        self.patch_embed = body.patch_embed
        self.stages = body.stages
        self.out_channels = [self.arch["embed_dims"][i] for i in self.out_indices]
        self.strides = [4 * 2 ** i for i in self.out_indices]
        self.out_norms = out_norms
        if out_norms:
            for i in self.out_indices:
                self.add_module(f"norm{i}", LayerNorm2d(self.arch["embed_dims"][i], eps=1e-5))
        self._freeze_stages()

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.patch_embed(x)
        outs = []
        last = max(self.out_indices)
        for i, stage in enumerate(self.stages):
            if self.with_cp and self.training and torch.is_grad_enabled():
                x = cp.checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x) if self.out_norms else x)
            if i == last:
                break
        return tuple(outs)

    # ------------------------------------------------------------------ train / freeze
    def _freeze_stages(self) -> None:
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        frozen += [self.stages[i] for i in range(self.frozen_stages)]
        frozen += [getattr(self, f"norm{i}") for i in range(self.frozen_stages)
                   if self.out_norms and i in self.out_indices]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> TinyViT:
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        """timm's initialisation ran at construction; a ``Pretrained`` init_cfg loads weights
        from any spec (registry name, URL, hub tag, path) in any layout (official / timm /
        OpenMMLab), resizing attention biases to this model's windows."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
            self.load_pretrained(cfg["checkpoint"])
            self._is_init = True
        else:
            super().init_weights()

    def load_pretrained(self, weights: str) -> None:
        """Load ``weights`` through :func:`tinyvit_backbone.checkpoint.load_pretrained` (the
        output norms ``norm{i}`` may be absent: they keep their identity init)."""
        logger = MMLogger.get_current_instance()
        result = _load_pretrained(self, weights, optional_prefixes=("norm",),
                                  log=lambda msg: print_log(msg, logger=logger))
        fresh = sorted({k.rsplit(".", 1)[0] for k in result.newly_initialised})
        print_log(f"TinyViT: loaded {result.loaded} tensors from {result.weights.describe()}"
                  + (f"; newly initialised: {fresh}" if fresh else ""), logger=logger)

    # ------------------------------------------------------------------ timm-style hooks
    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"attention_biases"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's matcher (our names are timm's), for timm.optim layer-decay groups."""
        return TinyVit.group_matcher(self, coarse)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.with_cp = enable

    @property
    def num_layers(self) -> int:
        """Blocks in all stages: the layer count for layer-wise learning-rate decay."""
        return sum(self.arch["depths"])

    def layer_id(self, name: str) -> int:
        """Layer-decay index of the backbone parameter ``name`` (no ``backbone.`` prefix).

        0 = stem; block k of all stages (1-based) = k; a stage's patch merging shares the id of
        the block before it (as in the official code); output norms = num_layers + 1.
        """
        if name.startswith("patch_embed."):
            return 0
        parts = name.split(".")
        if parts[0] == "stages":
            stage, part = int(parts[1]), parts[2]
            before = sum(self.arch["depths"][:stage])
            return before + int(parts[3]) + 1 if part == "blocks" else before
        return self.num_layers + 1
