"""Read TinyViT weights in every layout users hold, and map them onto the backbone.

Layouts (all resolved by :func:`backbone_state_dict`):

* **official** — microsoft/Cream ``TinyViT/*.pth``: ``torch.load(f)['model']`` with Cream's names.
* **timm** — ``tiny_vit_*`` weights from timm / the HF hub, ``.pth`` or ``.safetensors``.
* **OpenMMLab** — a full mmdet / mmseg / mmengine checkpoint (``state_dict`` wrapper, backbone
  keys under ``backbone.``) or this project's converter output.

Official -> timm key map (:func:`official_to_timm`; :func:`timm_to_official` is its inverse):

==========================================  ==============================================
official (Cream)                            timm (and this backbone)
==========================================  ==============================================
``patch_embed.seq.0.c.*`` / ``.bn.*``       ``patch_embed.conv1.conv.*`` / ``.bn.*``
``patch_embed.seq.2.c.*`` / ``.bn.*``       ``patch_embed.conv2.conv.*`` / ``.bn.*``
``layers.0.blocks.{j}.conv{1,2,3}.c.*``     ``stages.0.blocks.{j}.conv{1,2,3}.conv.*``
``layers.{i}.blocks.{j}.attn.*``, ``mlp.*`` ``stages.{i}.blocks.{j}.attn.*``, ``mlp.*``
``layers.{i}.blocks.{j}.local_conv.c.*``    ``stages.{i}.blocks.{j}.local_conv.conv.*``
``layers.{i}.downsample.conv{k}.c.*``       ``stages.{i+1}.downsample.conv{k}.conv.*``
``norm_head.*``                             ``head.norm.*``
``head.*``                                  ``head.fc.*``
``*.attention_bias_idxs``                   dropped (timm derives them)
==========================================  ==============================================

Cream's ``Conv2d_BN`` names its children ``c`` / ``bn``; timm's ``ConvNorm`` ``conv`` / ``bn``.
The patch merging sits at the *end* of Cream's layer ``i`` and at the *start* of timm's stage
``i + 1``, hence the index shift.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping

import torch

from .safe_load import torch_load

logger = logging.getLogger(__name__)

CLASSIFIER_PREFIXES = ("head.", "norm_head.")
Log = Callable[[str], None]


class CheckpointError(ValueError):
    """A checkpoint that cannot be mapped onto the model; the message says what to do."""


# --------------------------------------------------------------------------- reading files
def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """Load ``.pth`` / ``.pt`` / ``.bin`` (pickle, read with ``weights_only=True``) or
    ``.safetensors`` into a plain dict, without unwrapping."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"checkpoint file not found: {path!r}. Download the weights first (e.g. the official "
            "TinyViT model zoo or timm's tiny_vit_* files) and point `checkpoint=` at the file.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return dict(load_file(path, device="cpu"))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        return torch_load(path, map_location="cpu")
    except Exception as err:
        raise CheckpointError(
            f"{path}: torch.load could not read it ({type(err).__name__}: {err}). The file is "
            "truncated, not a torch checkpoint, or pickles objects other than tensors and "
            "containers; re-save only its state dict (torch.save(ckpt['model'], f)).") from err


def unwrap_state_dict(ckpt: Mapping, source: str = "checkpoint", log: Log | None = None
                      ) -> dict[str, torch.Tensor]:
    """Return the backbone's tensors from any wrapper: ``state_dict`` (mmengine), ``model``
    (Cream, DeiT-style), ``module.`` (DDP) and ``backbone.`` (mmdet / mmseg detectors)."""
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(ckpt.get(wrapper), Mapping):
            ckpt = ckpt[wrapper]
            break
    sd = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(
            f"{source}: found no tensors (top-level keys: {sorted(ckpt)[:10]}); expected a state "
            "dict, or a dict wrapping one under 'state_dict' or 'model'.")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):
        others = sorted({k.split(".")[0] for k in sd if not k.startswith("backbone.")})
        if others:
            (log or logger.info)(f"{source}: taking the 'backbone.' weights, ignoring {others}")
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


# --------------------------------------------------------------------------- key maps
_OFFICIAL_RULES = [
    (re.compile(r"^patch_embed\.seq\.0\."), "patch_embed.conv1."),
    (re.compile(r"^patch_embed\.seq\.2\."), "patch_embed.conv2."),
    (re.compile(r"^norm_head\."), "head.norm."),
    (re.compile(r"^head\.(weight|bias)$"), r"head.fc.\1"),
]


def is_official_layout(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("layers.") for k in sd)


def official_to_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Cream (official) TinyViT state dict to timm's names (table in module doc)."""
    out = {}
    for key, value in sd.items():
        if key.endswith("attention_bias_idxs"):
            continue
        new = key
        for pattern, repl in _OFFICIAL_RULES:
            new = pattern.sub(repl, new)
        m = re.match(r"^layers\.(\d+)\.(blocks|downsample)\.(.*)$", new)
        if m:
            stage, part, rest = int(m.group(1)), m.group(2), m.group(3)
            if part == "downsample":
                stage += 1
            new = f"stages.{stage}.{part}.{rest}"
        # Conv2d_BN's conv child is `c` in Cream, `conv` in timm.
        new = re.sub(r"\.c\.(weight|bias)$", r".conv.\1", new)
        if new in out:
            raise CheckpointError(f"official key map sent two keys to {new!r}")
        out[new] = value
    return out


def timm_to_official(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`official_to_timm` (``attention_bias_idxs`` buffers are not rebuilt)."""
    out = {}
    for key, value in sd.items():
        new = re.sub(r"\.conv\.(weight|bias)$", r".c.\1", key)
        new = re.sub(r"^patch_embed\.conv1\.", "patch_embed.seq.0.", new)
        new = re.sub(r"^patch_embed\.conv2\.", "patch_embed.seq.2.", new)
        new = re.sub(r"^head\.norm\.", "norm_head.", new)
        new = re.sub(r"^head\.fc\.", "head.", new)
        m = re.match(r"^stages\.(\d+)\.(blocks|downsample)\.(.*)$", new)
        if m:
            stage, part, rest = int(m.group(1)), m.group(2), m.group(3)
            if part == "downsample":
                stage -= 1
            new = f"layers.{stage}.{part}.{rest}"
        out[new] = value
    return out


# --------------------------------------------------------------------------- fitting the model
def resize_attention_biases(bias: torch.Tensor, window: int) -> torch.Tensor:
    """Resize a LeViT-style bias table ``(heads, w0*w0)`` to ``(heads, window*window)``
    (bicubic over the 2-D offset grid, as timm does for 224 -> 384 / 512)."""
    from timm.layers import resize_rel_pos_bias_table_levit
    heads = bias.shape[0]
    return resize_rel_pos_bias_table_levit(bias.T, (window * window, heads)).T.contiguous()


def fit_state_dict(
    sd: Mapping[str, torch.Tensor],
    model_sd: Mapping[str, torch.Tensor],
    optional_prefixes: tuple[str, ...] = (),
    source: str = "checkpoint",
    log: Log | None = None,
) -> dict[str, torch.Tensor]:
    """Make a timm-layout state dict load strictly into a model whose state dict is ``model_sd``.

    Drops the classification head (logged), resizes ``attention_biases`` whose window differs,
    and raises :class:`CheckpointError` naming every other unexpected, missing or mis-shaped key.
    Keys of ``model_sd`` under ``optional_prefixes`` (e.g. output norms the checkpoint never had)
    may be missing; the caller keeps their initial values.
    """
    log = log or logger.info
    out = {}
    head = sorted(k for k in sd if k.startswith(CLASSIFIER_PREFIXES) and k not in model_sd)
    if head:
        log(f"{source}: dropped the classification head ({', '.join(head)})")
    unexpected, mis_shaped, resized = [], [], []
    for key, value in sd.items():
        if key in head or key.endswith("attention_bias_idxs"):
            continue
        if key not in model_sd:
            unexpected.append(key)
            continue
        target = model_sd[key]
        if key.endswith("attention_biases") and value.shape != target.shape:
            window = round(target.shape[1] ** 0.5)
            if value.shape[0] != target.shape[0] or window * window != target.shape[1]:
                mis_shaped.append(f"{key}: {tuple(value.shape)} vs model {tuple(target.shape)}")
                continue
            resized.append(f"{round(value.shape[1] ** 0.5)}->{window}")
            value = resize_attention_biases(value, window)
        elif value.shape != target.shape:
            mis_shaped.append(f"{key}: {tuple(value.shape)} vs model {tuple(target.shape)}")
            continue
        out[key] = value.to(target.dtype)
    if resized:
        log(f"{source}: resized {len(resized)} attention_biases tables (bicubic), windows "
            f"{', '.join(sorted(set(resized)))}")
    missing = [k for k in model_sd if k not in out and not k.startswith(optional_prefixes)
               and not k.endswith("num_batches_tracked")]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_short(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing keys: {_short(missing)}")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} shape mismatches: {_short(mis_shaped)}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit this TinyViT: " + "; ".join(problems) + ". Check that `arch` "
            "matches the weights (5m / 11m / 21m) and that the file is a TinyViT checkpoint.")
    return out


def _short(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def backbone_state_dict(
    path: str | os.PathLike,
    model_sd: Mapping[str, torch.Tensor],
    optional_prefixes: tuple[str, ...] = (),
    log: Log | None = None,
) -> dict[str, torch.Tensor]:
    """Read ``path`` in any supported layout and return a state dict that loads strictly."""
    source = os.fspath(path)
    log = log or logger.info
    sd = unwrap_state_dict(load_checkpoint_file(path), source, log)
    if is_official_layout(sd):
        log(f"{source}: official (Cream) layout, renaming to timm's")
        sd = official_to_timm(sd)
    return fit_state_dict(sd, model_sd, optional_prefixes, source, log)
