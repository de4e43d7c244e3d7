"""What a run's dumped mmengine config says about it: backbone (and its parameter count),
detector or decoder, dataset, schedule, pretrained weights, and how to tell that training ended.

Backbone parameters are counted, not looked up: TinyViT backbones are built from the config's
own arguments with this project's :class:`~tinyvit_backbone.backbone.TinyViT` on the ``meta``
device (no memory, no weights, milliseconds), so custom archs, window sizes and ``out_norms``
are counted exactly; other backbones (Swin, ResNet, ...) are built through the config's
OpenMMLab registry (mmdet / mmseg), which imports that package once (seconds), on ``meta``
when their ``__init__`` allows it and on the CPU otherwise.
The count is the backbone alone, without any classifier head.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import re
from dataclasses import dataclass

from tinyvit_backbone.config_task import config_task

DATASET_NAMES = {"CocoDataset": "COCO", "ADE20KDataset": "ADE20K",
                 "CityscapesDataset": "Cityscapes", "PascalVOCDataset": "Pascal VOC",
                 "LVISV1Dataset": "LVIS v1"}
DECODER_NAMES = {"UPerHead": "UperNet", "FPNHead": "Semantic FPN", "FCNHead": "FCN",
                 "ASPPHead": "DeepLabV3", "DepthwiseSeparableASPPHead": "DeepLabV3+",
                 "SegformerHead": "SegFormer head"}
DETECTOR_NAMES = {"MaskRCNN": "Mask R-CNN", "FasterRCNN": "Faster R-CNN",
                  "RetinaNet": "RetinaNet", "FCOS": "FCOS", "ATSS": "ATSS", "DETR": "DETR",
                  "DINO": "DINO", "RTMDet": "RTMDet", "HybridTaskCascade": "HTC"}
# mmengine / mmseg / mmdet's generic dataset classes: any folder in their layout, named in a table
# by that folder ("custom (scenes)"), not by the class ("BaseSeg").
GENERIC_DATASETS = ("BaseSegDataset", "BaseDetDataset", "BaseDataset")
SWIN_SIZES = {(96, (2, 2, 6, 2)): "T", (96, (2, 2, 18, 2)): "S", (128, (2, 2, 18, 2)): "B",
              (192, (2, 2, 18, 2)): "L"}
# mmengine's LoggerHook logs a training line every `interval` iterations (default 10).
DEFAULT_LOG_INTERVAL = 10


class ConfigError(ValueError):
    """The dumped config cannot be read or lacks what the tables need."""


@dataclass(frozen=True)
class RunConfig:
    """``loop`` is 'epoch' or 'iter' and ``max_progress`` its max_epochs / max_iters (None when
    the config has no train_cfg, e.g. a test-only run); ``task`` is 'det', 'seg' or None."""

    task: str | None
    backbone: str | None
    backbone_params_m: float | None
    model: str | None
    dataset: str | None
    schedule: str | None
    pretrained: str | None
    loop: str | None
    max_progress: int | None
    log_interval: int
    wants_segm: bool
    params_note: str | None = None


def load_config(path: str) -> dict:
    """The dumped config as plain dicts. mmengine's reader, without importing the config's
    ``custom_imports`` (the tables do not need the registered modules)."""
    from mmengine.config import Config
    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    except Exception as err:  # mmengine raises many types for a bad file; report them all alike
        raise ConfigError(f"cannot read config {path}: {type(err).__name__}: {err}") from None
    return cfg.to_dict()


def _bare_type(cfg: dict | None) -> str:
    """'mmdet.SwinTransformer' -> 'SwinTransformer'."""
    t = (cfg or {}).get("type", "")
    return t.rsplit(".", 1)[-1] if isinstance(t, str) else getattr(t, "__name__", str(t))


def _checkpoint_name(path) -> str | None:
    if not path or not isinstance(path, str):
        return None
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _inner_dataset(cfg: dict) -> dict:
    # ConcatDataset / RepeatDataset / ClassBalancedDataset wrap the real one.
    ds = dict(cfg or {})
    for _ in range(3):
        if "dataset" in ds and isinstance(ds["dataset"], dict):
            ds = ds["dataset"]
        elif "datasets" in ds and ds["datasets"]:
            ds = ds["datasets"][0]
        else:
            break
    return ds


def describe_dataset(cfg: dict) -> str | None:
    loader = cfg.get("test_dataloader") or cfg.get("val_dataloader") or {}
    inner = _inner_dataset(loader.get("dataset", {}))
    t = _bare_type(inner)
    if not t:
        return None
    name = DATASET_NAMES.get(t, t.removesuffix("Dataset") or t)
    if t in GENERIC_DATASETS:
        root = inner.get("data_root")
        folder = os.path.basename(os.path.normpath(root)) if isinstance(root, str) and root else ""
        name = f"custom ({folder})" if folder else "custom"
    ann = inner.get("ann_file")
    if t == "CocoDataset" and isinstance(ann, str) and not re.search(r"val2017|test-dev", ann):
        # CocoDataset reads any COCO-format file; only val2017 / test-dev is "COCO" in a table.
        name = f"COCO-format ({_checkpoint_name(ann)})"
    return name


def describe_schedule(train_cfg: dict | None) -> tuple[str | None, str | None, int | None]:
    """-> (label, loop, max). 12 / 24 / 36 epochs are the detection '1x' / '2x' / '3x'."""
    if not train_cfg:
        return None, None, None
    t = _bare_type(train_cfg)
    by_epoch = train_cfg.get("by_epoch")
    if t == "EpochBasedTrainLoop" or (by_epoch is True and "max_epochs" in train_cfg):
        n = int(train_cfg["max_epochs"])
        label = {12: "1x", 24: "2x", 36: "3x"}.get(n, f"{n} ep")
        return label, "epoch", n
    if t == "IterBasedTrainLoop" or "max_iters" in train_cfg:
        n = int(train_cfg["max_iters"])
        label = f"{n // 1000}k it" if n >= 1000 and n % 1000 == 0 else f"{n} it"
        return label, "iter", n
    return None, None, None


def describe_model(model: dict) -> str | None:
    t = _bare_type(model)
    if t == "CascadeRCNN":
        roi = model.get("roi_head") or {}
        return "Cascade Mask R-CNN" if roi.get("mask_head") else "Cascade R-CNN"
    if t in ("EncoderDecoder", "CascadeEncoderDecoder"):
        head = _bare_type(model.get("decode_head") if isinstance(model.get("decode_head"), dict)
                          else (model.get("decode_head") or [{}])[-1])
        return DECODER_NAMES.get(head, head or t)
    return DETECTOR_NAMES.get(t, t or None)


def _tinyvit_name(backbone: dict) -> str:
    from tinyvit_backbone.backbone import ARCH_SETTINGS, resolve_arch
    try:
        spec = resolve_arch(backbone.get("arch", "21m"))
    except ValueError:
        return "TinyViT (custom)"
    for key, official in ARCH_SETTINGS.items():
        if spec["embed_dims"] == official["embed_dims"] and spec["depths"] == official["depths"]:
            return f"TinyViT-{key.upper()}"
    dims = "-".join(str(d) for d in spec["embed_dims"])
    return f"TinyViT (custom {dims})"


def describe_backbone(backbone: dict) -> str | None:
    t = _bare_type(backbone)
    if t == "TinyViT":
        return _tinyvit_name(backbone)
    if t == "SwinTransformer":
        key = (backbone.get("embed_dims", 96), tuple(backbone.get("depths", (2, 2, 6, 2))))
        return f"Swin-{SWIN_SIZES[key]}" if key in SWIN_SIZES else "Swin"
    if t in ("ResNet", "ResNetV1d", "ResNeXt"):
        return f"{t}-{backbone.get('depth', '?')}"
    return t or None


def _freeze(obj):
    """Hashable view of a config dict, for the params cache."""
    return json.dumps(obj, sort_keys=True, default=str)


@functools.lru_cache(maxsize=64)
def _count_backbone_params(frozen_cfg: str, scope: str) -> int:
    import torch
    cfg = json.loads(frozen_cfg)
    cfg.pop("init_cfg", None)
    cfg.pop("pretrained", None)
    if _bare_type(cfg) == "TinyViT":
        from tinyvit_backbone.backbone import TinyViT
        cfg.pop("type")
        with torch.device("meta"):
            module = TinyViT(**cfg)
    else:
        # Registers the scope's modules; building on `meta` allocates nothing.
        from mmengine.registry import DefaultScope

        importlib.import_module(f"{scope}.utils").register_all_modules(init_default_scope=False)
        registry = importlib.import_module(f"{scope}.registry")
        # The run's own scope, whatever the process's default is (mmdet and mmseg both have a
        # SwinTransformer, with different defaults).
        with DefaultScope.overwrite_default_scope(scope):
            try:
                with torch.device("meta"):
                    module = registry.MODELS.build(cfg)
            except (RuntimeError, NotImplementedError):
                # Some __init__s read tensor values (Swin: drop-path rates via .item()), which the
                # meta device cannot give; build those for real (one backbone, freed at once).
                module = registry.MODELS.build(cfg)
    return sum(p.numel() for p in module.parameters())


def count_backbone_params(backbone: dict, scope: str | None) -> tuple[float | None, str | None]:
    """-> (millions, None) or (None, why not)."""
    if not backbone:
        return None, "config has no model.backbone"
    try:
        n = _count_backbone_params(_freeze(backbone), scope or "mmdet")
    except Exception as err:  # any build failure only costs the params cell
        return None, f"backbone {_bare_type(backbone)} not counted ({type(err).__name__}: {err})"
    return n / 1e6, None


def _wants_segm(cfg: dict) -> bool:
    for key in ("test_evaluator", "val_evaluator"):
        ev = cfg.get(key)
        for one in (ev if isinstance(ev, list) else [ev]):
            if isinstance(one, dict) and _bare_type(one).endswith("CocoMetric"):
                metric = one.get("metric", "bbox")
                return "segm" in (metric if isinstance(metric, (list, tuple)) else [metric])
    return False


def describe_config(cfg: dict) -> RunConfig:
    model = cfg.get("model") or {}
    scope = cfg.get("default_scope")
    task = config_task(cfg, default=None)
    backbone = model.get("backbone") or {}
    params, note = count_backbone_params(backbone, scope)
    label, loop, max_progress = describe_schedule(cfg.get("train_cfg"))
    init = backbone.get("init_cfg") or {}
    pretrained = (_checkpoint_name(init.get("checkpoint")) if isinstance(init, dict) else None)
    pretrained = pretrained or _checkpoint_name(backbone.get("pretrained"))
    pretrained = pretrained or _checkpoint_name(cfg.get("load_from"))
    logger = (cfg.get("default_hooks") or {}).get("logger") or {}
    return RunConfig(
        task=task, backbone=describe_backbone(backbone), backbone_params_m=params,
        model=describe_model(model), dataset=describe_dataset(cfg), schedule=label,
        pretrained=pretrained, loop=loop, max_progress=max_progress,
        log_interval=int(logger.get("interval", DEFAULT_LOG_INTERVAL) or DEFAULT_LOG_INTERVAL),
        wants_segm=_wants_segm(cfg), params_note=note)
