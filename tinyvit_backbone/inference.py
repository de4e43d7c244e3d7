"""Fast inference path for feature extraction and deployment (same outputs within 1e-5).

:func:`fuse_for_inference` rewrites a TinyViT (this project's backbone or timm's ``TinyVit``)
in place, for eval only:

* every ``ConvNorm`` (conv + BatchNorm) becomes one biased conv (timm's ``ConvNorm.fuse``, the
  LeViT / Cream trick): the BatchNorm passes disappear;
* the LayerNorm in front of ``attn.qkv`` and ``mlp.fc1`` loses its affine part, which is folded
  into the following linear layer (``W (g * n + b) + c = (W g) n + (W b + c)``);
* on CPU, attention runs as explicit matmul + bias + softmax (timm's non-fused path) instead of
  ``scaled_dot_product_attention``, whose CPU path with a float mask is slower here;
* the MBConv stem stage runs in ``channels_last`` memory format, where oneDNN's convolutions
  are faster on CPU.

Why not ``torch.compile``: detection inputs change size every batch, and compiling costs
minutes on a laptop CPU; these rewrites need none of that.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.tiny_vit import ConvNorm, NormMlp, TinyVitBlock


def _fuse_convnorms(module: nn.Module) -> int:
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, ConvNorm):
            setattr(module, name, child.fuse())
            count += 1
        else:
            count += _fuse_convnorms(child)
    return count


@torch.no_grad()
def _fold_layernorm(norm: nn.LayerNorm, linear: nn.Linear) -> nn.LayerNorm:
    """Fold ``norm``'s affine into ``linear`` (in place); return an affine-free LayerNorm."""
    weight = linear.weight.double()
    bias = linear.bias.double() if linear.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    new_bias = weight @ norm.bias.double() + bias
    linear.weight.copy_((weight * norm.weight.double()[None, :]).to(linear.weight.dtype))
    if linear.bias is None:
        linear.bias = nn.Parameter(new_bias.to(linear.weight.dtype))
    else:
        linear.bias.copy_(new_bias.to(linear.bias.dtype))
    return nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False,
                        device=norm.weight.device, dtype=norm.weight.dtype)


class _ChannelsLast(nn.Module):
    """Run ``inner`` on a channels_last copy of its input; return the standard layout."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.contiguous(memory_format=torch.channels_last)).contiguous()


def fuse_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """Rewrite ``model`` for fast eval-mode inference; returns it (now in eval mode).

    Training after this is not supported: BatchNorm statistics are frozen into the convs.
    """
    model.eval()
    _fuse_convnorms(model)
    on_cpu = next(model.parameters()).device.type == "cpu"
    for block in model.modules():
        if isinstance(block, TinyVitBlock):
            block.attn.norm = _fold_layernorm(block.attn.norm, block.attn.qkv)
            if on_cpu:
                # torch's CPU scaled_dot_product_attention with a float mask takes its
                # "safe softmax" math path (extra where / all / isneginf passes): measured
                # 1.5-1.8x slower than timm's explicit attention on TinyViT's window shapes.
                block.attn.fused_attn = False
        if isinstance(block, NormMlp) and isinstance(block.norm, nn.LayerNorm):
            block.norm = _fold_layernorm(block.norm, block.fc1)
    if channels_last and hasattr(model, "stages"):
        model.stages[0] = _ChannelsLast(model.stages[0])
    model.is_fused = True
    return model
