"""Command line of the fast-distillation tools: ``python -m tinyvit_backbone.distill <command>``.

Commands (one job each; each prints one JSON result with the settings that produced it):

  save-logits  run a timm teacher over every augmented epoch, write the logit store (resumable,
               torchrun data-parallel)
  verify       check every record of a store and re-run the teacher on a random sample
  train        train a TinyViT student from a store (or, --mode online / labels, the baselines)
  finetune     fine-tune a student on labels with layer-wise lr decay
  mini-repro   the CPU mini reproduction on the embedded digits (teacher, store, three students)

Multi-GPU / multi-process: ``torchrun --nproc-per-node N -m tinyvit_backbone.distill ...``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import DistillError

AUG_PRESETS = {
    # Official ImageNet-1k recipe (AugConfig defaults).
    "imagenet": {},
    # Released IN-21k distillation recipe: no Mixup / CutMix.
    "imagenet21k": dict(mixup=0.0, cutmix=0.0),
    # Embedded digits: 32 pixels, no flips (digits are not symmetric), milder crops.
    "digits": dict(image_size=32, hflip=0.0, scale=(0.35, 1.0)),
}
NAMED_STATS = {"imagenet": ("IMAGENET_MEAN", "IMAGENET_STD"), "clip": ("CLIP_MEAN", "CLIP_STD")}


# ---------------------------------------------------------------------- argument groups
def _stats(kind: int):
    def parse(values: list[str]) -> tuple[float, ...]:
        from . import replay

        if len(values) == 1 and values[0].lower() in NAMED_STATS:
            return getattr(replay, NAMED_STATS[values[0].lower()][kind])
        try:
            out = tuple(float(v) for v in values)
        except ValueError:
            out = ()
        if len(out) != 3:
            raise DistillError(f"mean / std take 'imagenet', 'clip' or three numbers (RGB), got "
                               f"{' '.join(values)!r}")
        return out
    return parse


def add_aug_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("augmentation (replayed exactly from each sample's seed; stored in "
                             "the store's manifest)")
    g.add_argument("--aug-preset", choices=sorted(AUG_PRESETS),
                   help="starting values: imagenet (official IN-1k recipe), imagenet21k (no "
                        "mixup/cutmix), digits; default digits for --data digits, else imagenet")
    g.add_argument("--image-size", type=int, help="training resolution in pixels (224)")
    g.add_argument("--scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="RandomResizedCrop area range (0.08 1.0)")
    g.add_argument("--ratio", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="RandomResizedCrop aspect range (0.75 1.333)")
    g.add_argument("--hflip", type=float, help="horizontal flip probability (0.5)")
    g.add_argument("--auto-augment", help="timm auto-augment string (rand-m9-mstd0.5-inc1); none = off")
    g.add_argument("--color-jitter", type=float, help="color jitter strength (0.4; timm turns it "
                   "off while RandAugment is on unless --force-color-jitter)")
    g.add_argument("--force-color-jitter", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--re-prob", type=float, help="random erasing probability (0.25)")
    g.add_argument("--re-mode", choices=["const", "rand", "pixel"], help="random erasing fill (pixel)")
    g.add_argument("--re-count", type=int, help="random erasing regions (1)")
    g.add_argument("--interpolation", help="resize interpolation (bicubic)")
    g.add_argument("--mean", nargs="+", metavar="M", help="input normalisation mean: imagenet, "
                   "clip or three numbers (imagenet)")
    g.add_argument("--std", nargs="+", metavar="S", help="input normalisation std (imagenet)")
    g.add_argument("--mixup", type=float, help="Mixup alpha, by sample pairs (0.8); 0 = off")
    g.add_argument("--cutmix", type=float, help="CutMix alpha, by sample pairs (1.0); 0 = off")
    g.add_argument("--mix-prob", type=float, help="probability a pair is mixed (1.0)")
    g.add_argument("--switch-prob", type=float, help="probability of CutMix over Mixup (0.5)")


AUG_FLAGS = ("image_size", "scale", "ratio", "hflip", "auto_augment", "color_jitter",
             "force_color_jitter", "re_prob", "re_mode", "re_count", "interpolation", "mean",
             "std", "mixup", "cutmix", "mix_prob", "switch_prob")


def aug_overrides(args) -> dict:
    """The augmentation flags the user actually gave (None = not given)."""
    out = {}
    for name in AUG_FLAGS:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name == "auto_augment" and value.lower() == "none":
            value = None
        elif name in ("mean", "std"):
            value = _stats(0 if name == "mean" else 1)(value)
        elif name in ("scale", "ratio"):
            value = tuple(value)
        out[name] = value
    return out


def build_aug(args, finetune: bool = False):
    from .replay import AugConfig

    preset = args.aug_preset or ("digits" if args.data == "digits" else "imagenet")
    # The official fine-tuning recipes (22k->1k, higher resolution) turn Mixup / CutMix off.
    base = dict(AUG_PRESETS[preset], **(dict(mixup=0.0, cutmix=0.0) if finetune else {}))
    return AugConfig(**{**base, **aug_overrides(args)})


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, "
                   "cuda or cuda:N (default auto; torchrun: cuda:LOCAL_RANK)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA, off for CPU)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_teacher_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("teacher")
    g.add_argument("--teacher", required=required, help="timm model name (e.g. "
                   "vit_large_patch14_clip_224.openai_ft_in12k_in1k, resnet50)")
    g.add_argument("--teacher-checkpoint", required=required,
                   help="local weights file (.pth / .safetensors; timm or {'model': ...} layout)")
    g.add_argument("--teacher-kwargs", help="JSON of extra timm.create_model arguments, e.g. "
                   "'{\"img_size\": 32}'")
    g.add_argument("--teacher-mean", nargs="+", metavar="M",
                   help="the teacher's input mean: imagenet, clip or three numbers (default: "
                        "the data's --mean); inputs are re-normalised for it")
    g.add_argument("--teacher-std", nargs="+", metavar="S", help="the teacher's input std")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="'digits' (embedded) or an ImageFolder root "
                   "(root/<class>/<image>) of the training split")
    g.add_argument("--num-classes", type=int, help="classes of the teacher / student (default: "
                   "the dataset's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinyvit_backbone.distill", description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("save-logits", help="write (or resume) a logit store",
                       description="Run the teacher over every augmented epoch and store the "
                       "seed + top-K probabilities of each sample. Rerunning the same command "
                       "resumes; --epochs larger than before appends epochs.")
    add_teacher_args(p, required=True)
    add_data_args(p)
    p.add_argument("--out", required=True, help="store folder")
    p.add_argument("--epochs", type=int, default=1, help="augmented epochs to store (1)")
    p.add_argument("--topk", type=int, default=10, help="probabilities kept per sample (10; "
                   "official: 10 for IN-1k, 100 for IN-21k)")
    p.add_argument("--batch-size", type=int, default=128, help="teacher batch per process, "
                   "even (128); part of the store's identity")
    p.add_argument("--seed", type=int, default=0, help="base seed of the augmentation (0)")
    add_aug_args(p)
    add_runtime_args(p)

    p = sub.add_parser("verify", help="check a store's records and its teacher agreement")
    p.add_argument("--store", required=True, help="store folder")
    p.add_argument("--data", required=True, help="the dataset the store was written from")
    p.add_argument("--teacher-checkpoint", help="teacher weights (default: the path in the "
                   "manifest; the SHA-256 must match either way)")
    p.add_argument("--num-records", type=int, default=256, help="records to re-run (256)")
    p.add_argument("--epochs", type=int, nargs="+", help="epochs to sample (default: all complete)")
    p.add_argument("--seed", type=int, default=0, help="seed of the record sample (0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-mean-abs-error", type=float, default=1e-2)
    p.add_argument("--min-top1-agreement", type=float, default=0.99)
    add_runtime_args(p)

    for name in ("train", "finetune"):
        finetune = name == "finetune"
        p = sub.add_parser(name, help="fine-tune a student on labels with layer-wise lr decay"
                           if finetune else "train a TinyViT student from a logit store",
                           description=(
                               "Fine-tune a TinyViT on labels (the paper's step after "
                               "distillation; official 22k->1k: 30 epochs, lr 2.5e-4, wd 1e-8, "
                               "layer decay 0.8, BN statistics frozen, no Mixup / CutMix unless "
                               "--mixup / --cutmix are given)." if finetune else
                               "Train a TinyViT from a store: replayed augmentation, soft "
                               "labels rebuilt from the top-K records, no teacher, no ground "
                               "truth. --mode online / labels train the same way with a live "
                               "teacher / labels instead (baselines)."))
        add_data_args(p)
        p.add_argument("--val-data", help="ImageFolder root of the validation split (digits: "
                       "the test split is used)")
        p.add_argument("--arch", default="5m", help="TinyViT arch: 5m, 11m, 21m or a JSON file "
                       "of embed_dims / depths / num_heads / window_sizes (5m)")
        p.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate (0)")
        p.add_argument("--out", required=True, help="output folder (checkpoint, logs, "
                       "student.pth, result.json)")
        if finetune:
            p.add_argument("--init", required=True, help="student weights to start from "
                           "(student.pth of `train`); a head of another class count is re-made")
        else:
            p.add_argument("--mode", choices=["store", "online", "labels"], default="store")
            p.add_argument("--store", help="logit store (mode store)")
            p.add_argument("--init", help="optional weights to start from")
            p.add_argument("--online-topk", type=int, help="mode online: keep only the "
                           "teacher's top-K, rebuilt like the store's (default: full softmax)")
            add_teacher_args(p, required=False)
        p.add_argument("--epochs", type=int, default=30 if finetune else None,
                       help="default 30" if finetune else "default: the store's complete epochs "
                       "(mode store) or 30")
        p.add_argument("--batch-size", type=int, default=128, help="per process, even (128)")
        p.add_argument("--lr", type=float, default=2.5e-4 if finetune else 1e-3,
                       help="peak lr for the global batch (no automatic scaling)")
        p.add_argument("--min-lr", type=float, default=1e-5)
        p.add_argument("--warmup-epochs", type=float, default=5.0 if finetune else 1.0)
        p.add_argument("--weight-decay", type=float, default=1e-8 if finetune else 0.05)
        p.add_argument("--layer-decay", type=float, default=0.8 if finetune else None,
                       help="layer-wise lr decay (timm's, by TinyViT block)")
        p.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation steps")
        p.add_argument("--clip-grad", type=float, default=5.0, help="max grad norm; 0 = off")
        p.add_argument("--label-smoothing", type=float, default=0.1, help="labels mode (0.1)")
        p.add_argument("--bn-eval", action=argparse.BooleanOptionalAction, default=finetune,
                       help="keep BatchNorm statistics frozen while training")
        p.add_argument("--seed", type=int, help="model init and augmentation seed (mode store: "
                       "the store's)")
        p.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs")
        p.add_argument("--eval-crop-pct", type=float, help="center-crop fraction at evaluation "
                       "(0.875; digits 1.0)")
        p.add_argument("--fresh", action="store_true", help="ignore and replace earlier outputs")
        add_aug_args(p)
        add_runtime_args(p)

    p = sub.add_parser("mini-repro", help="mini reproduction on the embedded digits (CPU)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--arch", help="student arch (default: a small TinyViT for 32-pixel digits)")
    p.add_argument("--scale", choices=["smoke", "demo", "repro"], default="repro")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--with-online", action=argparse.BooleanOptionalAction, default=True,
                   help="also train with the teacher online (default on)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="recompute every stage")
    add_runtime_args(p)
    return parser


# ---------------------------------------------------------------------- commands
def _runtime(args):
    from .runtime import amp_dtype, init_distributed, select_device

    device = select_device(args.device)
    env = init_distributed(device)
    return device, env, amp_dtype(device, args.amp)


def _num_classes(args, info) -> int:
    return args.num_classes or info.num_classes


def _teacher_from_args(args, aug, num_classes):
    from .teacher import load_teacher, parse_model_kwargs

    mean = _stats(0)(args.teacher_mean) if args.teacher_mean else None
    std = _stats(1)(args.teacher_std) if args.teacher_std else None
    return load_teacher(args.teacher, args.teacher_checkpoint, num_classes,
                        model_kwargs=parse_model_kwargs(args.teacher_kwargs),
                        data_mean=aug.mean, data_std=aug.std, mean=mean, std=std)


def cmd_save_logits(args) -> dict:
    from .datasets import open_dataset
    from .save_logits import SaveSettings, save_logits

    aug = build_aug(args)
    device, env, amp = _runtime(args)
    dataset, info = open_dataset(args.data, "train", aug.image_size)
    teacher, teacher_info = _teacher_from_args(args, aug, _num_classes(args, info))
    settings = SaveSettings(topk=args.topk, epochs=args.epochs, batch_size=args.batch_size,
                            seed=args.seed)
    return save_logits(args.out, teacher, teacher_info, dataset, info, aug, settings,
                       device=device, amp_dtype=amp, env=env, workers=args.workers,
                       progress=not args.no_progress, log=_log(env))


def cmd_verify(args) -> dict:
    import torch

    from .datasets import open_dataset
    from .replay import AugConfig
    from .runtime import select_device
    from .store import LogitStore
    from .teacher import load_teacher
    from .verify import verify_store

    store = LogitStore.open(args.store)
    aug = AugConfig.from_dict(store.manifest["augmentation"])
    t = store.manifest["teacher"]
    device = select_device(args.device)
    if args.amp is None:
        amp = getattr(torch, t["amp"]) if t.get("amp") else None
        amp = None if amp is torch.float16 and device.type != "cuda" else amp
    else:
        from .runtime import amp_dtype
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


def cmd_train(args, finetune: bool = False) -> dict:
    from ..backbone import build_timm_tinyvit, resolve_arch
    from .datasets import TransformedDataset, check_same_dataset, open_dataset
    from .replay import AugConfig, build_eval_transform
    from .store import LogitStore
    from .train import TrainSettings, load_weights, train_classifier

    mode = "labels" if finetune else args.mode
    store = teacher = None
    if mode == "store":
        if not args.store:
            raise DistillError("train --mode store needs --store (the folder save-logits wrote)")
        store = LogitStore.open(args.store)
        aug = AugConfig.from_dict(store.manifest["augmentation"])
        given = aug_overrides(args)
        clash = {k: (v, getattr(aug, k)) for k, v in given.items() if v != getattr(aug, k)}
        if clash:
            raise DistillError(
                f"augmentation flags disagree with store {args.store!r}: " + ", ".join(
                    f"--{k.replace('_', '-')} {v[0]} (store: {v[1]})" for k, v in clash.items())
                + "; the student must replay the store's augmentation: drop these flags")
        seed = int(store.manifest["seed"])
        if args.seed is not None and args.seed != seed:
            raise DistillError(f"--seed {args.seed} disagrees with store {args.store!r} (seed "
                               f"{seed}): the seeds decide the pixels; drop --seed")
        num_classes = store.num_classes
        if args.num_classes and args.num_classes != num_classes:
            raise DistillError(f"--num-classes {args.num_classes} disagrees with store "
                               f"{args.store!r} ({num_classes} classes): drop --num-classes")
        epochs = args.epochs or len(store.epochs_complete)
        if epochs < 1:
            raise DistillError(f"store {args.store!r} has no complete epoch yet")
        for e in range(epochs):
            store.require_epoch(e)
    else:
        aug = build_aug(args, finetune=finetune)
        seed = 0 if args.seed is None else args.seed
        epochs = args.epochs or 30
    try:
        resolve_arch(args.arch)
    except ValueError as err:
        raise DistillError(f"--arch: {err}") from None
    device, env, amp = _runtime(args)
    dataset, info = open_dataset(args.data, "train", aug.image_size)
    if store is not None:
        check_same_dataset(store.manifest["dataset"], info, f"store {args.store!r}")
    else:
        num_classes = _num_classes(args, info)
    if mode == "online":
        if not (args.teacher and args.teacher_checkpoint):
            raise DistillError("train --mode online needs --teacher and --teacher-checkpoint")
        teacher, _ = _teacher_from_args(args, aug, num_classes)
    val_set = None
    crop = args.eval_crop_pct or (1.0 if args.data == "digits" else 0.875)
    tf = build_eval_transform(aug.image_size, aug.mean, aug.std, aug.interpolation, crop)
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
        online_topk=None if finetune else args.online_topk)
    extra = dict(arch=args.arch, drop_path=args.drop_path, init=init,
                 store=os.path.abspath(args.store) if store is not None else None,
                 teacher=getattr(args, "teacher", None), eval_crop_pct=crop)
    return train_classifier(build, dataset, info, aug, settings, args.out,
                            num_classes=num_classes, store=store, teacher=teacher,
                            val_set=val_set, device=device, amp_dtype=amp, env=env,
                            workers=args.workers, progress=not args.no_progress,
                            fresh=args.fresh, extra=extra, log=_log(env))


def cmd_mini_repro(args) -> dict:
    from .reproduce import run_pipeline
    from .runtime import DistEnv

    return run_pipeline(args.out, args.arch, image_size=args.image_size, scale=args.scale,
                        with_online=args.with_online, device=args.device, fresh=args.fresh,
                        seed=args.seed, workers=args.workers, progress=not args.no_progress,
                        log=_log(DistEnv()))


def _log(env):
    def log(msg: str) -> None:
        if env.is_main:
            print(msg, file=sys.stderr, flush=True)
    return log


def main(argv: list[str] | None = None) -> int:
    from ..checkpoint import CheckpointError
    from .runtime import dist_env_from_environ, shutdown_distributed

    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"save-logits": cmd_save_logits, "verify": cmd_verify, "train": cmd_train,
                "finetune": lambda a: cmd_train(a, finetune=True), "mini-repro": cmd_mini_repro}
    try:
        result = commands[args.command](args)
    except (DistillError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed()
    if dist_env_from_environ().rank == 0:
        print(json.dumps(result, indent=2, default=str))
    if args.command == "verify" and not result.get("ok"):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
