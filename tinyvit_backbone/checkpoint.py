"""The one weight loader: resolve, read, unwrap, rename and fit weights onto a model.

:func:`load_pretrained` is what every part of the project calls: the backbone's ``init_cfg`` /
``pretrained``, the probes' ``--weights``, distillation's ``--init`` and teacher, and
``tinyvit-convert`` (through :func:`read_weights`). It takes any spec
:mod:`tinyvit_backbone.weights` resolves (registry name, http(s) URL, ``timm/...`` hub tag,
local path), for TinyViT models (this backbone or timm's ``TinyVit``) and for any other timm
model (a teacher, a probed baseline). Steps: the registry entry's architecture is checked
against the model *before* anything is downloaded; the file is fetched and verified, read
(:func:`load_checkpoint_file`), unwrapped (:func:`unwrap_state_dict`), renamed from the
official layout for TinyViT models (:func:`official_to_timm`), checked again from its tensors
(:func:`tinyvit_arch_of`), and fitted (:func:`fit_state_dict`: classifier policy, attention
bias resize, every bad key named).

TinyViT layouts:

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .safe_load import torch_load
from .weights import (  # noqa: F401  (CheckpointError is re-exported: the loader's one error)
    CheckpointError,
    Spec,
    Weights,
    entry_of,
    resolve_weights,
)
from .zoo import ZooEntry, suggest

logger = logging.getLogger(__name__)

CLASSIFIER_PREFIXES = ("head.", "norm_head.")
CLASSIFIER_POLICIES = ("drop", "strict", "reinit")
Log = Callable[[str], None]

# --------------------------------------------------------------------------- reading files
def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """Load ``.pth`` / ``.pt`` / ``.bin`` (pickle, read with ``weights_only=True``) or
    ``.safetensors`` into a plain dict, without unwrapping."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path!r}")
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


# --------------------------------------------------------------------------- architectures
_BLOCK_KEY = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")


def tinyvit_arch_of(sd: Mapping[str, torch.Tensor]) -> dict | None:
    """The architecture of TinyViT tensors in timm's names, read from their shapes.

    Returns ``embed_dims`` / ``depths`` / ``num_heads`` / ``window_sizes`` (one entry per stage;
    stage 0 is MBConv, so its heads and window are None), or None for anything else.
    """
    if "patch_embed.conv1.conv.weight" not in sd:
        return None
    blocks: dict[int, set[int]] = {}
    for key in sd:
        m = _BLOCK_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        return None
    arch = dict(embed_dims=[], depths=[], num_heads=[], window_sizes=[])
    for stage in range(len(blocks)):
        first = f"stages.{stage}.blocks.0."
        bias, norm = sd.get(first + "attn.attention_biases"), sd.get(first + "attn.norm.weight")
        conv = sd.get(first + "conv3.conv.weight")
        if bias is not None and norm is not None:
            dim, heads, window = norm.shape[0], bias.shape[0], round(bias.shape[1] ** 0.5)
        elif conv is not None:
            dim, heads, window = conv.shape[0], None, None
        else:
            return None
        for name, value in zip(arch, (dim, len(blocks[stage]), heads, window)):
            arch[name].append(None if value is None else int(value))
    return arch


def _comparable(spec: dict) -> dict:
    """A :func:`~tinyvit_backbone.backbone.resolve_arch` dict in :func:`tinyvit_arch_of` form."""
    return dict(embed_dims=list(spec["embed_dims"]), depths=list(spec["depths"]),
                num_heads=[None, *spec["num_heads"][1:]],
                window_sizes=[None, *spec["window_sizes"][1:]])


def _same_body(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("embed_dims", "depths", "num_heads"))


def _variant_of(arch: dict) -> str | None:
    from .backbone import ARCH_SETTINGS  # the official variants (lazy: mmengine)

    return next((name for name, spec in ARCH_SETTINGS.items()
                 if _same_body(_comparable(spec), arch)), None)


def _arch_text(arch: dict) -> str:
    variant = _variant_of(arch)
    return ((f"TinyViT-{variant.upper()}: " if variant else "")
            + f"embed_dims {arch['embed_dims']}, depths {arch['depths']}")


def _windows_text(arch: dict) -> str:
    return "[" + ", ".join("-" if w is None else str(w) for w in arch["window_sizes"]) + "]"


def _check_entry(entry: ZooEntry, model_arch: dict | None, windows: str, what: str) -> None:
    """Refuse a registry checkpoint the model cannot take, before it is downloaded."""
    if model_arch is None:
        if entry.family == "tinyvit":
            raise CheckpointError(f"{entry.name} holds TinyViT weights; {what} is not a TinyViT: "
                                  "build a TinyViT (or timm's tiny_vit_*) to load them")
        return
    if entry.family != "tinyvit":
        raise CheckpointError(f"{entry.name} holds {entry.arch} weights, not TinyViT's: it "
                              f"cannot initialise {what}")
    from .backbone import resolve_arch

    expected = _comparable(resolve_arch(entry.arch, entry.window_sizes))
    if not _same_body(expected, model_arch):
        variant = _variant_of(model_arch)
        alternative = suggest(variant, like=entry) if variant else None
        raise CheckpointError(
            f"{entry.name} does not fit {what}: the checkpoint is {_arch_text(expected)}, the "
            f"model {_arch_text(model_arch)}. Build the model with arch='{entry.arch}'"
            + (f", or load {alternative.name} (the same pretraining for TinyViT-"
               f"{variant.upper()})" if alternative else "") + ".")
    if windows == "error" and expected["window_sizes"][1:] != model_arch["window_sizes"][1:]:
        raise CheckpointError(
            f"{entry.name} was trained at {entry.resolution} px with attention windows "
            f"{list(entry.window_sizes)}; {what} uses {_windows_text(model_arch)}. Build it with "
            f"window_sizes={list(entry.window_sizes)}, or let its attention biases be resized "
            "(windows='resize').")


def _check_tensors(found: dict | None, model_arch: dict, source: str, what: str, windows: str,
                   log: Log) -> None:
    """Compare the file's architecture (from its tensors) with the model's."""
    if found is None or len(found["depths"]) != len(model_arch["depths"]):
        return  # not TinyViT-shaped or partial: fit_state_dict names the keys
    if not _same_body(found, model_arch):
        raise CheckpointError(
            f"{source} does not fit {what}: the file holds {_arch_text(found)}, the model "
            f"{_arch_text(model_arch)}. Check that `arch` matches the weights (5m / 11m / 21m, "
            "or the arch JSON they were trained with).")
    if found["window_sizes"][1:] != model_arch["window_sizes"][1:]:
        text = (f"{source}: trained with attention windows {_windows_text(found)}, the model "
                f"uses {_windows_text(model_arch)}")
        if windows == "error":
            raise CheckpointError(text + ": build the model with the file's window_sizes")
        log(text + ": its attention_biases are resized (bicubic) to the model's windows")


# --------------------------------------------------------------------------- fitting the model
def resize_attention_biases(bias: torch.Tensor, window: int) -> torch.Tensor:
    """Resize a LeViT-style bias table ``(heads, w0*w0)`` to ``(heads, window*window)``
    (bicubic over the 2-D offset grid, as timm does for 224 -> 384 / 512)."""
    from timm.layers import resize_rel_pos_bias_table_levit
    heads = bias.shape[0]
    return resize_rel_pos_bias_table_levit(bias.T, (window * window, heads)).T.contiguous()


@dataclass
class _Fit:
    state: dict[str, torch.Tensor]
    dropped: list[str]
    reinitialised: list[str]
    resized: list[str]


def _fit(sd, model_sd, optional_prefixes, source, log, classifier_prefixes, classifier,
         what) -> _Fit:
    if classifier not in CLASSIFIER_POLICIES:
        raise ValueError(f"classifier must be one of {CLASSIFIER_POLICIES}, got {classifier!r}")

    def is_head(key):
        return key.startswith(classifier_prefixes)

    out = {}
    dropped = [] if classifier == "strict" else sorted(
        k for k in sd if is_head(k) and k not in model_sd)
    if dropped:
        log(f"{source}: dropped the classification head ({', '.join(dropped)})")
    unexpected, mis_shaped, resized, reinitialised = [], [], [], []
    for key, value in sd.items():
        if key in dropped or key.endswith("attention_bias_idxs"):
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
            if classifier == "reinit" and is_head(key):
                reinitialised.append(key)
                continue
            mis_shaped.append(f"{key}: {tuple(value.shape)} vs model {tuple(target.shape)}")
            continue
        out[key] = value.to(target.dtype)
    if resized:
        log(f"{source}: resized {len(resized)} attention_biases tables (bicubic), windows "
            f"{', '.join(sorted(set(resized)))}")
    if reinitialised:
        log(f"{source}: the classifier has another shape than the model's; "
            f"{', '.join(reinitialised)} stay newly initialised")
    missing = [k for k in model_sd if k not in out and k not in reinitialised
               and not k.startswith(optional_prefixes) and not k.endswith("num_batches_tracked")]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_short(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing keys: {_short(missing)}")
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} shape mismatches: {_short(mis_shaped)}")
    if problems:
        hint = (" Check that `arch` matches the weights (5m / 11m / 21m) and that the file is a "
                "TinyViT checkpoint." if tinyvit_arch_of(model_sd) is not None else
                " Check the model name and that the file holds that model's timm-layout state "
                "dict.")
        raise CheckpointError(f"{source} does not fit {what}: " + "; ".join(problems) + "." + hint)
    return _Fit(out, dropped, reinitialised, resized)


def fit_state_dict(
    sd: Mapping[str, torch.Tensor],
    model_sd: Mapping[str, torch.Tensor],
    optional_prefixes: tuple[str, ...] = (),
    source: str = "checkpoint",
    log: Log | None = None,
    *,
    classifier: str = "drop",
    classifier_prefixes: tuple[str, ...] = CLASSIFIER_PREFIXES,
    what: str = "this TinyViT",
) -> dict[str, torch.Tensor]:
    """Make a timm-layout state dict load strictly into a model whose state dict is ``model_sd``.

    Resizes ``attention_biases`` whose window differs and raises :class:`CheckpointError`
    naming every unexpected, missing or mis-shaped key. Keys of ``model_sd`` under
    ``optional_prefixes`` (e.g. output norms the checkpoint never had) may be missing; the
    caller keeps their initial values. ``classifier`` says what happens to the tensors under
    ``classifier_prefixes``: 'drop' (default) drops those the model has no place for (logged);
    'strict' treats them like any other key; 'reinit' also skips those of another shape
    (another number of classes), leaving the model's initial values. ``what`` names the model
    in messages.
    """
    return _fit(sd, model_sd, optional_prefixes, source, log or logger.info,
                classifier_prefixes, classifier, what).state


def _short(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------------- the loader
def read_weights(weights: Spec, *, progress: bool | None = None,
                 log: Log | None = None) -> tuple[dict[str, torch.Tensor], Weights]:
    """Resolve ``weights`` (name / URL / hub tag / path), read and unwrap the file; returns its
    tensors in the file's own names and the resolved :class:`~tinyvit_backbone.weights.Weights`."""
    log = log or logger.info
    resolved = resolve_weights(weights, progress=progress, log=log)
    try:
        ckpt = load_checkpoint_file(resolved.path)
    except CheckpointError as err:
        if resolved.kind == "path":
            raise
        # Downloads are kept only once verified complete: fetching it again cannot help.
        raise CheckpointError(f"{err} It came from {resolved.source} ({resolved.path}, "
                              "verified complete when it was downloaded).") from None
    return unwrap_state_dict(ckpt, resolved.describe(), log), resolved


def to_timm_names(sd: dict[str, torch.Tensor], source: str, log: Log) -> dict[str, torch.Tensor]:
    """TinyViT tensors in timm's names, whatever layout they came in."""
    if is_official_layout(sd):
        log(f"{source}: official (Cream) layout, renaming to timm's")
        return official_to_timm(sd)
    return sd


def _fitted(weights, model_sd, *, classifier, classifier_prefixes, optional_prefixes, windows,
            what, progress, log) -> tuple[_Fit, Weights]:
    if windows not in ("resize", "error"):
        raise ValueError(f"windows must be 'resize' or 'error', got {windows!r}")
    model_arch = tinyvit_arch_of(model_sd)
    entry = entry_of(weights)
    if entry is not None:
        _check_entry(entry, model_arch, windows, what)
    sd, resolved = read_weights(weights, progress=progress, log=log)
    source = resolved.describe()
    if model_arch is not None:
        sd = to_timm_names(sd, source, log)
        _check_tensors(tinyvit_arch_of(sd), model_arch, source, what, windows, log)
    fit = _fit(sd, model_sd, optional_prefixes, source, log, classifier_prefixes, classifier, what)
    return fit, resolved


def backbone_state_dict(
    path: Spec,
    model_sd: Mapping[str, torch.Tensor],
    optional_prefixes: tuple[str, ...] = (),
    log: Log | None = None,
) -> dict[str, torch.Tensor]:
    """TinyViT weights (any spec, any layout) as a state dict that loads strictly into a model
    whose state dict is ``model_sd`` (the classifier dropped where the model has none)."""
    fit, _ = _fitted(path, model_sd, classifier="drop", classifier_prefixes=CLASSIFIER_PREFIXES,
                     optional_prefixes=optional_prefixes, windows="resize", what="this TinyViT",
                     progress=None, log=log or logger.info)
    return fit.state


@dataclass
class LoadResult:
    """What :func:`load_pretrained` did. ``dropped``: file tensors of a classifier the model has
    no place for; ``reinitialised``: classifier tensors of another shape, left as initialised;
    ``newly_initialised``: model tensors under ``optional_prefixes`` the file lacks."""

    weights: Weights
    loaded: int
    dropped: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    newly_initialised: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)


def _classifier_prefixes(model: torch.nn.Module, tinyvit: bool) -> tuple[str, ...]:
    if tinyvit:
        return CLASSIFIER_PREFIXES
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    names = [names] if isinstance(names, str) else list(names)
    return tuple(f"{n}." for n in names)


def load_pretrained(
    model: torch.nn.Module,
    weights: Spec,
    *,
    classifier: str = "drop",
    optional_prefixes: Sequence[str] = (),
    windows: str = "resize",
    progress: bool | None = None,
    log: Log | None = None,
) -> LoadResult:
    """Load ``weights`` (registry name, URL, hub tag or path; official, timm or OpenMMLab
    layout) into ``model``: a TinyViT (this backbone or timm's) or any timm model.

    ``classifier``: see :func:`fit_state_dict` ('drop' for backbones and feature extractors,
    'strict' for a teacher whose head must match, 'reinit' for fine-tuning on other classes).
    ``windows``: 'resize' (default, documented for the backbone: attention biases of another
    window are resized, logged) or 'error'. Raises :class:`CheckpointError` with the fix.
    """
    log = log or logger.info
    model_sd = model.state_dict()
    tinyvit = tinyvit_arch_of(model_sd) is not None
    what = "this TinyViT" if tinyvit else f"timm model {_model_name(model)}"
    fit, resolved = _fitted(weights, model_sd, classifier=classifier,
                            classifier_prefixes=_classifier_prefixes(model, tinyvit),
                            optional_prefixes=tuple(optional_prefixes), windows=windows,
                            what=what, progress=progress, log=log)
    missing, unexpected = model.load_state_dict(fit.state, strict=False)
    assert not unexpected, unexpected  # _fit refuses every key the model lacks
    fresh = sorted(k for k in missing if k not in fit.reinitialised
                   and not k.endswith("num_batches_tracked"))
    return LoadResult(resolved, len(fit.state), fit.dropped, fit.reinitialised, fresh,
                      fit.resized)


def _model_name(model: torch.nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return repr(cfg.get("architecture") or type(model).__name__)
