"""Overlay that trains and evaluates any det_configs/ or seg_configs/ config on the embedded
scenes on a CPU: small images, BN instead of SyncBN, fp32, a few iterations, random backbone
weights unless asked otherwise.

The recipe parts that define a config (model family, heads, losses, optimizer type, backbone
options) are kept; what only makes sense at COCO / ADE20K scale is replaced:

* datasets -> the embedded scenes (:mod:`tinyvit_backbone.embedded.scenes`, generated on first
  use), 4 classes
  (detection) or 5 with background (segmentation); every ``num_classes`` follows;
* pipelines -> resize to ``image_size`` + flip; evaluation with the real metrics
  (mmdet's CocoMetric through pycocotools, mmseg's IoUMetric);
* schedule -> ``iters`` iterations with a short warmup, evaluation and a checkpoint at the end;
* proposal / detection budgets -> sized for a handful of objects per image;
* SyncBN -> BN, ``AmpOptimWrapper`` -> ``OptimWrapper`` (mmengine's AMP wrapper needs a GPU),
  gloo when there is no GPU, workers 0;
* backbone weights -> ``backbone_checkpoint`` (any weights spec: registry name, URL, hub tag,
  path), the config's own weights (``keep_weights``: fetched through the model zoo like a full
  run, so ``TINYVIT_ZOO_MIRROR`` applies), or random init (``init_cfg`` dropped, the default);
  and an optional smaller TinyViT ``arch`` with the neck / head channels that follow from it.

Use it from Python (:func:`apply_overlay`), through ``tools/train.py CONFIG --embedded``, or as
a standalone config for ``mim``::

    python -m tinyvit_backbone.config_overlay det_configs/cascade_tinyvit21m.py \
        --out work_dirs/embedded/cascade_tinyvit21m.py
    mim train mmdet work_dirs/embedded/cascade_tinyvit21m.py
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from mmengine.config import Config

from .config_task import config_task
from .embedded.scenes import CATEGORIES, DEFAULT_ROOT, SEG_CLASSES, SEG_PALETTE, ensure_scenes
from .files import atomic_write_text

OFFICIAL_SIZES = ("5m", "11m", "21m")


def overlay_name(name: str, arch=None) -> str:
    """A config's name with the TinyViT size swapped for ``arch``, so that a smaller backbone
    never writes under the larger one's name: ``cascade_tinyvit21m`` with '5m' ->
    ``cascade_tinyvit5m``; an arch JSON file gives its stem (``cascade_tinyvit-arch_5.4M``),
    a dict ``custom``; a name without a size gets it appended."""
    if arch is None:
        return name
    if isinstance(arch, str) and arch.lower() in OFFICIAL_SIZES:
        token = arch.lower()
    elif isinstance(arch, str):
        token = "-" + os.path.splitext(os.path.basename(arch))[0]
    else:
        token = "-custom"
    swapped, count = re.subn(r"tinyvit(\d+m)", "tinyvit" + token, name)
    return swapped if count else f"{name}_tinyvit{token}"


def task_of(cfg: Config) -> str:
    """'det' for mmdet configs, 'seg' for mmseg ones (:mod:`tinyvit_backbone.config_task`)."""
    return config_task(cfg)


def _walk(node: Any, fn) -> Any:
    """Apply ``fn`` to every dict in a nested config, depth first."""
    if isinstance(node, dict):
        for value in node.values():
            _walk(value, fn)
        fn(node)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _walk(value, fn)
    return node


def _set_num_classes(model: dict, num_classes: int) -> None:
    _walk(model, lambda d: d.__setitem__("num_classes", num_classes) if "num_classes" in d else None)


def _sync_bn_to_bn(cfg: Config) -> None:
    def fix(d):
        if d.get("type") in ("SyncBN", "MMSyncBN"):
            d["type"] = "BN"
    _walk(cfg._cfg_dict, fix)


def _small_scene_budgets(model: dict) -> None:
    """Proposal and detection budgets for scenes of at most a handful of objects: COCO's 1000
    proposals and 512 sampled RoIs per image would dominate CPU time and teach nothing more."""
    test, train = model.get("test_cfg") or {}, model.get("train_cfg") or {}
    if "rpn" in test:
        test.rpn["nms_pre"] = min(test.rpn.get("nms_pre", 300), 300)
        test.rpn["max_per_img"] = min(test.rpn.get("max_per_img", 100), 100)
    final = test.get("rcnn", test)
    if "max_per_img" in final:
        final["max_per_img"] = min(final["max_per_img"], 20)
    if "nms_pre" in final:
        final["nms_pre"] = min(final["nms_pre"], 300)
    if "rpn_proposal" in train:
        train.rpn_proposal["nms_pre"] = min(train.rpn_proposal.get("nms_pre", 300), 300)
        train.rpn_proposal["max_per_img"] = min(train.rpn_proposal.get("max_per_img", 200), 200)

    def cap_sampler(d):
        if d.get("type") == "RandomSampler" and d.get("num", 0) > 128:
            d["num"] = 128
    _walk(train.get("rcnn") or {}, cap_sampler)


def _has_masks(model: dict) -> bool:
    roi_head = model.get("roi_head") or {}
    return bool(roi_head.get("mask_head"))


def _adapt_backbone(cfg: Config, arch, backbone_checkpoint: str | None, task: str,
                    keep_weights: bool = False) -> None:
    from .backbone import resolve_arch

    backbone = cfg.model.backbone
    if backbone_checkpoint:
        backbone["init_cfg"] = dict(type="Pretrained", checkpoint=backbone_checkpoint)
    elif not keep_weights:
        backbone.pop("init_cfg", None)
        if backbone.get("type") == "SwinTransformer":
            backbone.pop("pretrained", None)
    if backbone.get("with_cp"):
        backbone["with_cp"] = False
    if arch is None:
        return
    if backbone.get("type") != "TinyViT":
        raise ValueError(f"--arch only applies to TinyViT backbones, this config uses "
                         f"{backbone.get('type')}")
    spec = resolve_arch(arch)
    backbone["arch"] = spec
    backbone.pop("window_sizes", None)
    dims = spec["embed_dims"]
    channels = [dims[i] for i in backbone.get("out_indices", (0, 1, 2, 3))]
    if task == "det":
        cfg.model.neck["in_channels"] = channels
    else:
        if cfg.model.get("neck"):
            cfg.model.neck["in_channels"] = channels
        else:
            cfg.model.decode_head["in_channels"] = channels
        aux = cfg.model.get("auxiliary_head")
        if aux:
            aux["in_channels"] = dims[aux.get("in_index", 2)]


def _det_data(cfg: Config, root: str, size: int, batch_size: int, with_mask: bool) -> None:
    meta = dict(classes=CATEGORIES, palette=[tuple(c) for c in SEG_PALETTE[1:]])
    load = dict(type="LoadAnnotations", with_bbox=True, with_mask=with_mask)
    train_pipeline = [dict(type="LoadImageFromFile"), load,
                      dict(type="Resize", scale=(size, size), keep_ratio=True),
                      dict(type="RandomFlip", prob=0.5), dict(type="PackDetInputs")]
    test_pipeline = [dict(type="LoadImageFromFile"),
                     dict(type="Resize", scale=(size, size), keep_ratio=True), load,
                     dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape",
                                                            "img_shape", "scale_factor"))]

    def dataset(split, pipeline, test_mode):
        return dict(type="CocoDataset", data_root=root, metainfo=meta,
                    ann_file=f"annotations/instances_{split}.json",
                    data_prefix=dict(img=f"{split}/"), filter_cfg=dict(filter_empty_gt=True),
                    pipeline=pipeline, test_mode=test_mode)

    cfg.train_dataloader = dict(
        batch_size=batch_size, num_workers=0, persistent_workers=False,
        sampler=dict(type="DefaultSampler", shuffle=True),
        dataset=dataset("train", train_pipeline, False))
    cfg.val_dataloader = cfg.test_dataloader = dict(
        batch_size=1, num_workers=0, persistent_workers=False, drop_last=False,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dataset("val", test_pipeline, True))
    metrics = ["bbox", "segm"] if with_mask else ["bbox"]
    cfg.val_evaluator = cfg.test_evaluator = dict(
        type="CocoMetric", ann_file=os.path.join(root, "annotations/instances_val.json"),
        metric=metrics, format_only=False)


def _seg_data(cfg: Config, root: str, size: int, batch_size: int) -> None:
    meta = dict(classes=SEG_CLASSES, palette=SEG_PALETTE)
    train_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
                      dict(type="Resize", scale=(size, size), keep_ratio=True),
                      dict(type="RandomFlip", prob=0.5), dict(type="PackSegInputs")]
    test_pipeline = [dict(type="LoadImageFromFile"),
                     dict(type="Resize", scale=(size, size), keep_ratio=True),
                     dict(type="LoadAnnotations"), dict(type="PackSegInputs")]

    def dataset(split, pipeline):
        return dict(type="BaseSegDataset", data_root=root, metainfo=meta, img_suffix=".png",
                    seg_map_suffix=".png", reduce_zero_label=False,
                    data_prefix=dict(img_path=split, seg_map_path=f"ann_dir/{split}"),
                    pipeline=pipeline)

    cfg.train_dataloader = dict(
        batch_size=batch_size, num_workers=0, persistent_workers=False,
        sampler=dict(type="InfiniteSampler", shuffle=True), dataset=dataset("train", train_pipeline))
    cfg.val_dataloader = cfg.test_dataloader = dict(
        batch_size=1, num_workers=0, persistent_workers=False,
        sampler=dict(type="DefaultSampler", shuffle=False), dataset=dataset("val", test_pipeline))
    cfg.val_evaluator = cfg.test_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
    cfg.model.data_preprocessor["size"] = (size, size)
    cfg.model["test_cfg"] = dict(mode="whole")


def apply_overlay(
    cfg: Config,
    data_root: str = DEFAULT_ROOT,
    *,
    iters: int = 20,
    image_size: int = 128,
    batch_size: int = 2,
    lr: float | None = None,
    arch=None,
    backbone_checkpoint: str | None = None,
    keep_weights: bool = False,
    work_dir: str | None = None,
    checkpoint_interval: int | None = None,
) -> Config:
    """Return a copy of ``cfg`` set up for the embedded scenes (see the module docstring).

    ``lr`` overrides the optimizer's learning rate (a few CPU iterations learn little at COCO
    learning rates); ``arch`` swaps in a smaller TinyViT (with matching neck / head channels);
    ``backbone_checkpoint`` / ``keep_weights`` choose the backbone's weights (module docstring);
    ``checkpoint_interval`` defaults to ``iters`` (one checkpoint, at the end).

    Checkpoints hold the optimizer state only when there are checkpoints before the last one
    (``checkpoint_interval < iters``: a resume continues training from them). No iteration of
    the run follows the last one, and AdamW's moments would triple its size (Cascade Mask
    R-CNN: 741 MB with them, 247 MB without); a rerun with more ``iters`` resuming from it
    starts a fresh optimizer state. Only the newest checkpoint is kept.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    cfg = Config(cfg.to_dict(), filename=cfg.filename)
    task = task_of(cfg)
    num_classes = len(CATEGORIES) if task == "det" else len(SEG_CLASSES)
    _set_num_classes(cfg.model, num_classes)
    _sync_bn_to_bn(cfg)
    _adapt_backbone(cfg, arch, backbone_checkpoint, task, keep_weights)
    if task == "det":
        _small_scene_budgets(cfg.model)
        _det_data(cfg, data_root, image_size, batch_size, _has_masks(cfg.model))
    else:
        _seg_data(cfg, data_root, image_size, batch_size)

    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters)
    cfg.val_cfg = dict(type="ValLoop")
    cfg.test_cfg = dict(type="TestLoop")
    warmup = max(1, min(10, iters // 4))
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0,
                                end=warmup)]
    wrapper = cfg.optim_wrapper
    if wrapper.get("type") == "AmpOptimWrapper":
        wrapper["type"] = "OptimWrapper"
        wrapper.pop("loss_scale", None)
    if lr is not None:
        wrapper.optimizer["lr"] = lr
    wrapper["clip_grad"] = wrapper.get("clip_grad") or dict(max_norm=10.0, norm_type=2)
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=batch_size)
    interval = checkpoint_interval or iters
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=interval,
                                        max_keep_ckpts=1, save_optimizer=interval < iters)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=max(1, min(10, iters // 5)))
    cfg.default_hooks.pop("visualization", None)
    cfg.log_processor = dict(type="LogProcessor", window_size=5, by_epoch=False)
    cfg.env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                       dist_cfg=dict(backend=_dist_backend()))
    cfg.randomness = dict(seed=0)
    if work_dir:
        cfg.work_dir = work_dir
        # mmengine keeps one visualizer per (class, name) for the whole process: a second
        # Runner in the same process (bench, demo) would otherwise log into the first's folder.
        cfg.visualizer["name"] = f"visualizer:{os.path.abspath(work_dir)}"
    return cfg


def _dist_backend() -> str:
    import torch
    return "nccl" if torch.cuda.is_available() else "gloo"


def add_overlay_options(parser, weights=None) -> None:
    """The overlay's options, as this module's command line and tools/train.py --embedded take
    them: the arguments of :func:`apply_overlay` and the scenes' folder. ``weights``: the group
    that takes --backbone-checkpoint (default: ``parser``)."""
    parser.add_argument("--data-root", default=DEFAULT_ROOT,
                        help=f"the scenes' folder, generated there if missing (default {DEFAULT_ROOT})")
    parser.add_argument("--iters", type=int, default=20,
                        help="training iterations; one evaluation and one checkpoint at the end "
                             "(default 20)")
    parser.add_argument("--image-size", type=int, default=128,
                        help="images are resized to fit this side in pixels (default 128)")
    parser.add_argument("--batch-size", type=int, default=2,
                        help="images per iteration and process (default 2)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the config's)")
    parser.add_argument("--arch", help="a smaller TinyViT backbone: 5m / 11m / 21m or an arch "
                        "JSON file (neck and head channels follow; default: the config's)")
    (weights or parser).add_argument(
        "--backbone-checkpoint", help="backbone weights: a registry name, URL, timm/... hub tag "
                                      "or path (default: random init)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinyvit_backbone.config_overlay",
        description="Write CONFIG with the embedded-scenes CPU overlay as a standalone config "
                    "(for `mim train` / tools/train.py).")
    parser.add_argument("config", help="an mmdet or mmseg config file (det_configs/*.py, "
                        "seg_configs/*.py)")
    parser.add_argument("--out", help="config file to write (default: work_dirs/embedded/NAME.py, "
                        "NAME being the config's, with the TinyViT size of --arch)")
    weights = parser.add_mutually_exclusive_group()
    add_overlay_options(parser, weights)
    weights.add_argument("--keep-weights", action="store_true",
                         help="load the config's own backbone weights (fetched once through the "
                              "model zoo; TINYVIT_ZOO_MIRROR applies)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.config):
        print(f"error: config not found: {args.config}", file=sys.stderr)
        return 2
    # absolute, so the written config runs from any folder (mim changes none, but users may)
    data_root = ensure_scenes(os.path.abspath(args.data_root))
    cfg = apply_overlay(Config.fromfile(args.config), data_root, iters=args.iters,
                        image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
                        arch=args.arch, backbone_checkpoint=args.backbone_checkpoint,
                        keep_weights=args.keep_weights)
    name = overlay_name(os.path.splitext(os.path.basename(args.config))[0], args.arch)
    out = args.out or os.path.join("work_dirs", "embedded", f"{name}.py")
    atomic_write_text(out, cfg.pretty_text)
    print(f"wrote {out}: {name} on the embedded scenes ({args.iters} iterations, "
          f"{args.image_size}px). Train it with: mim train {task_of(cfg).replace('det', 'mmdet').replace('seg', 'mmseg')} {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
