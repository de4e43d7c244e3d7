"""What each command does with its parsed arguments: settings, device, data, then the job.

One function per command of :mod:`.arguments`; each returns the run's JSON result. Checks of the
flags against a store live in :mod:`.store_fit`, the jobs themselves in :mod:`.save_logits`,
:mod:`.verify`, :mod:`.train`, :mod:`.reproduce` and :mod:`.legacy`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .arguments import aug_overrides, block_bytes, build_aug, parse_stats
from .errors import DistillError


def runtime(args):
    """(device, torchrun env, autocast dtype) of this process."""
    from .runtime import amp_dtype, init_distributed, select_device

    device = select_device(args.device)
    env = init_distributed(device)
    return device, env, amp_dtype(device, args.amp)


def main_log(env) -> Callable[[str], None]:
    """Log lines on stderr, from rank 0 only."""
    def log(msg: str) -> None:
        if env.is_main:
            print(msg, file=sys.stderr, flush=True)
    return log


def teacher_from_args(args, aug, num_classes: int):
    from .teacher import load_teacher, parse_model_kwargs

    mean = parse_stats(args.teacher_mean, 0) if args.teacher_mean else None
    std = parse_stats(args.teacher_std, 1) if args.teacher_std else None
    return load_teacher(args.teacher, args.teacher_checkpoint, num_classes,
                        model_kwargs=parse_model_kwargs(args.teacher_kwargs),
                        data_mean=aug.mean, data_std=aug.std, mean=mean, std=std)


def save_logits_command(args) -> dict:
    from .datasets import open_dataset
    from .save_logits import SaveSettings, save_logits

    aug = build_aug(args)
    settings = SaveSettings(topk=args.topk, epochs=args.epochs, batch_size=args.batch_size,
                            seed=args.seed, value_format=args.value_format,
                            block_bytes=block_bytes(args))
    device, env, amp = runtime(args)
    dataset, info = open_dataset(args.data, "train", aug.image_size)
    teacher, teacher_info = teacher_from_args(args, aug, args.num_classes or info.num_classes)
    return save_logits(args.out, teacher, teacher_info, dataset, info, aug, settings,
                       device=device, amp_dtype=amp, env=env, workers=args.workers,
                       progress=args.progress, log=main_log(env), force=args.force,
                       rebuild_manifest=args.rebuild_manifest)


def verify_command(args) -> dict:
    import torch

    from .datasets import open_dataset
    from .replay import AugConfig
    from .runtime import amp_dtype, select_device
    from .store import LogitStore
    from .teacher import load_teacher
    from .verify import verify_store

    store = LogitStore.open(args.store)
    aug = AugConfig.from_dict(store.manifest["augmentation"])
    t = store.manifest["teacher"]
    device = select_device(args.device)
    if args.amp is None:  # the writer's precision, where this device has it
        amp = getattr(torch, t["amp"]) if t.get("amp") else None
        amp = None if amp is torch.float16 and device.type != "cuda" else amp
    else:
        amp = amp_dtype(device, args.amp)
    dataset, info = open_dataset(args.data, "train", aug.image_size)
    teacher, _ = load_teacher(t["model"], args.teacher_checkpoint or t["checkpoint"],
                              int(t["num_classes"]), model_kwargs=t.get("model_kwargs"),
                              data_mean=aug.mean, data_std=aug.std, mean=t["mean"], std=t["std"],
                              expected_sha256=t["checkpoint_sha256"])
    return verify_store(store, dataset, info, teacher, num_records=args.num_records,
                        epochs=args.epochs, seed=args.seed, batch_size=args.batch_size,
                        device=device, amp_dtype=amp, workers=args.workers,
                        max_mean_abs_error=args.max_mean_abs_error,
                        min_top1_agreement=args.min_top1_agreement)


def _store_run(args):
    """Mode store: the store and the settings it decides, checked before any data is read."""
    from .integrity import repair_command
    from .store import LogitStore
    from .store_fit import check_store_fits, store_augmentation

    if not args.store:
        raise DistillError("train --mode store needs --store (the folder save-logits wrote)")
    store = LogitStore.open(args.store)
    aug = store_augmentation(store, aug_overrides(args))
    seed = store.base_seed if args.seed is None else args.seed
    num_classes = args.num_classes or store.num_classes
    epochs = args.epochs or len(store.epochs_complete)
    if epochs < 1:
        raise DistillError(f"store {args.store!r} has no complete epoch yet: finish it with\n  "
                           f"{repair_command(store)}")
    check_store_fits(store, aug=aug, seed=seed, num_classes=num_classes, epochs=epochs)
    return store, aug, seed, num_classes, epochs


def train_command(args, finetune: bool = False) -> dict:
    from ..backbone import build_timm_tinyvit, resolve_arch
    from .datasets import TransformedDataset, open_dataset
    from .replay import build_eval_transform
    from .train import TrainSettings, load_weights, train_classifier

    mode = "labels" if finetune else args.mode
    store = teacher = None
    if mode == "store":
        store, aug, seed, num_classes, epochs = _store_run(args)
    else:
        aug = build_aug(args, finetune=finetune)
        seed = 0 if args.seed is None else args.seed
        epochs = args.epochs or 30
    try:
        resolve_arch(args.arch)
    except ValueError as err:
        raise DistillError(f"--arch: {err}") from None
    device, env, amp = runtime(args)
    dataset, info = open_dataset(args.data, "train", aug.image_size)
    if store is None:
        num_classes = args.num_classes or info.num_classes
    if mode == "online":
        if not (args.teacher and args.teacher_checkpoint):
            raise DistillError("train --mode online needs --teacher and --teacher-checkpoint")
        teacher, _ = teacher_from_args(args, aug, num_classes)
    crop = args.eval_crop_pct or (1.0 if args.data == "digits" else 0.875)
    tf = build_eval_transform(aug.image_size, aug.mean, aug.std, aug.interpolation, crop)
    val_set = None
    if args.data == "digits":
        val_set = TransformedDataset(open_dataset("digits", "test", aug.image_size)[0], tf)
    elif args.val_data:
        val_set = TransformedDataset(open_dataset(args.val_data, "val")[0], tf)
    init = args.init

    def build():
        model = build_timm_tinyvit(args.arch, num_classes, drop_path_rate=args.drop_path)
        if init:
            load_weights(model, init)
        return model

    settings = TrainSettings(
        mode=mode, epochs=epochs, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay,
        layer_decay=args.layer_decay, accum_steps=args.accum_steps,
        clip_grad=args.clip_grad or None, label_smoothing=args.label_smoothing, seed=seed,
        eval_every=args.eval_every, bn_eval=args.bn_eval,
        online_topk=None if finetune else args.online_topk,
        online_value_format="fp16" if finetune else args.online_value_format)
    extra = dict(arch=args.arch, drop_path=args.drop_path, init=init,
                 store=os.path.abspath(args.store) if store is not None else None,
                 teacher=getattr(args, "teacher", None), eval_crop_pct=crop)
    return train_classifier(build, dataset, info, aug, settings, args.out,
                            num_classes=num_classes, store=store, teacher=teacher,
                            val_set=val_set, device=device, amp_dtype=amp, env=env,
                            workers=args.workers, progress=args.progress, fresh=args.fresh,
                            extra=extra, log=main_log(env),
                            skip_bad_samples=getattr(args, "skip_bad_samples", False))


def finetune_command(args) -> dict:
    return train_command(args, finetune=True)


def mini_repro_command(args) -> dict:
    from .reproduce import run_pipeline
    from .runtime import DistEnv

    return run_pipeline(args.out, args.arch, image_size=args.image_size, scale=args.scale,
                        with_online=args.with_online, device=args.device, fresh=args.fresh,
                        seed=args.seed, workers=args.workers, progress=args.progress,
                        value_formats=tuple(args.value_formats), log=main_log(DistEnv()))


def convert_store_command(args) -> dict:
    from .legacy import convert_store

    return convert_store(args.store, block_bytes=block_bytes(args),
                         log=lambda msg: print(msg, file=sys.stderr, flush=True))


COMMANDS = {"save-logits": save_logits_command, "verify": verify_command,
            "train": train_command, "finetune": finetune_command,
            "mini-repro": mini_repro_command, "convert-store": convert_store_command}

__all__ = ["COMMANDS", "main_log", "runtime", "teacher_from_args"]
