"""The command line's parser and the flag values it turns into settings (no torch or timm import
here: ``--help`` stays instant).

Commands (one job each; each prints one JSON result with the settings that produced it):

  save-logits    run a timm teacher over every augmented epoch, write the logit store
                 (resumable, repairs bad records, torchrun data-parallel)
  verify         report every bad record of a store and re-run the teacher on a sample
  train          train a TinyViT student from a store (or, --mode online / labels, the baselines)
  finetune       fine-tune a student on labels with layer-wise lr decay
  mini-repro     the CPU mini reproduction on the embedded digits (teacher, store, students)
  convert-store  convert a format-1 store in place to the current format

Multi-GPU / multi-process: torchrun --nproc-per-node N -m tinyvit_backbone.distill COMMAND ...
"""
from __future__ import annotations

import argparse

from ..cli import add_runtime_flags, subcommands
from .errors import DistillError
from .record import VALUE_FORMATS

AUG_PRESETS = {
    # Official ImageNet-1k recipe (AugConfig defaults).
    "imagenet": {},
    # Released IN-21k distillation recipe: no Mixup / CutMix.
    "imagenet21k": dict(mixup=0.0, cutmix=0.0),
    # Embedded digits: 32 pixels, no flips (digits are not symmetric), milder crops.
    "digits": dict(image_size=32, hflip=0.0, scale=(0.35, 1.0)),
}
NAMED_STATS = {"imagenet": ("IMAGENET_MEAN", "IMAGENET_STD"), "clip": ("CLIP_MEAN", "CLIP_STD")}
AUG_FLAGS = ("image_size", "scale", "ratio", "hflip", "auto_augment", "color_jitter",
             "force_color_jitter", "re_prob", "re_mode", "re_count", "interpolation", "mean",
             "std", "mixup", "cutmix", "mix_prob", "switch_prob")


# ---------------------------------------------------------------------- flag values
def parse_stats(values: list[str], kind: int) -> tuple[float, ...]:
    """``--mean`` / ``--std`` values: 'imagenet', 'clip' or three numbers (``kind`` 0 = mean,
    1 = std)."""
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
            value = parse_stats(value, 0 if name == "mean" else 1)
        elif name in ("scale", "ratio"):
            value = tuple(value)
        out[name] = value
    return out


def build_aug(args, finetune: bool = False):
    """The AugConfig of a run that has no store to take it from: preset, then the flags."""
    from .replay import AugConfig

    preset = args.aug_preset or ("digits" if args.data == "digits" else "imagenet")
    # The official fine-tuning recipes (22k->1k, higher resolution) turn Mixup / CutMix off.
    base = dict(AUG_PRESETS[preset], **(dict(mixup=0.0, cutmix=0.0) if finetune else {}))
    return AugConfig(**{**base, **aug_overrides(args)})


def block_bytes(args) -> int:
    kib = args.block_kib
    if kib < 4 or kib & (kib - 1):
        raise DistillError(f"--block-kib must be a power of two >= 4, got {kib}")
    return kib * 1024


# ---------------------------------------------------------------------- argument groups
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
    g.add_argument("--force-color-jitter", action=argparse.BooleanOptionalAction, default=None,
                   help="keep color jitter on together with RandAugment (off)")
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


def add_teacher_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("teacher")
    g.add_argument("--teacher", required=required, help="timm model name (e.g. "
                   "vit_large_patch14_clip_224.openai_ft_in12k_in1k, resnet50)")
    g.add_argument("--teacher-checkpoint", required=required,
                   help="teacher weights: a registry name, http(s) URL, timm/ hub tag or file "
                        "(.pth / .safetensors; timm or {'model': ...} layout)")
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


def _save_logits(sub) -> None:
    p = sub.add_parser("save-logits", help="write, resume or repair a logit store",
                       description="Run the teacher over every augmented epoch and store the "
                       "seed + top-K probabilities of each sample. Rerunning the same command "
                       "scans every epoch and rewrites exactly the bad or missing records "
                       "(resume after a kill, repair after damage); --epochs larger than "
                       "before appends epochs.")
    add_teacher_args(p, required=True)
    add_data_args(p)
    p.add_argument("--out", required=True, help="store folder")
    p.add_argument("--epochs", type=int, default=1, help="augmented epochs to store (default %(default)s)")
    p.add_argument("--topk", type=int, default=10, help="probabilities kept per sample (default "
                   "%(default)s; official: 10 for IN-1k, 100 for IN-21k)")
    p.add_argument("--value-format", choices=VALUE_FORMATS, default="fp16",
                   help="fp16: official precision, 4 + 4K + 4 bytes per record; log8: 8-bit "
                        "log-scale probabilities (top-1 kept in fp16) and bit-packed indices, "
                        "299 bytes at K=100 / 21,841 classes (default fp16)")
    p.add_argument("--batch-size", type=int, default=128, help="teacher batch per process, "
                   "even (default %(default)s); part of the store's identity")
    p.add_argument("--seed", type=int, default=0, help="base seed of the augmentation (default %(default)s)")
    p.add_argument("--block-kib", type=int, default=1024, help="file block owned by one "
                   "writer, KiB, a power of two (default %(default)s: no two processes write the "
                   "same aligned MiB); part of the store's identity")
    p.add_argument("--force", action="store_true", help="start even if the free disk space "
                   "cannot hold the rest of the store")
    p.add_argument("--rebuild-manifest", action="store_true", help="write a damaged or lost "
                   "manifest again from these arguments (records that do not match them fail "
                   "their checks and are rewritten)")
    add_aug_args(p)
    add_runtime_flags(p)


def _verify(sub) -> None:
    p = sub.add_parser("verify", help="report every bad record; check the teacher agreement")
    p.add_argument("--store", required=True, help="store folder")
    p.add_argument("--data", required=True, help="the dataset the store was written from")
    p.add_argument("--teacher-checkpoint", help="teacher weights (default: the path in the "
                   "manifest; the SHA-256 must match either way)")
    p.add_argument("--num-records", type=int, default=256, help="records to re-run (default %(default)s)")
    p.add_argument("--epochs", type=int, nargs="+", help="epochs to sample the agreement from "
                   "(default: all; the integrity scan always covers every epoch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the record sample (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="teacher batch of the re-run (default %(default)s)")
    p.add_argument("--max-mean-abs-error", type=float, default=1e-2,
                   help="largest mean |stored - re-run| of the top-K probabilities for which the "
                        "store agrees with the teacher (default %(default)s)")
    p.add_argument("--min-top1-agreement", type=float, default=0.99,
                   help="smallest fraction of re-run records whose top-1 class must match the "
                        "stored one (default %(default)s)")
    add_runtime_flags(p)


def _train(sub, finetune: bool) -> None:
    name = "finetune" if finetune else "train"
    p = sub.add_parser(name, help="fine-tune a student on labels with layer-wise lr decay"
                       if finetune else "train a TinyViT student from a logit store",
                       description=(
                           "Fine-tune a TinyViT on labels (the paper's step after "
                           "distillation; official 22k->1k: 30 epochs, lr 2.5e-4, wd 1e-8, "
                           "layer decay 0.8, BN statistics frozen, no Mixup / CutMix unless "
                           "--mixup / --cutmix are given)." if finetune else
                           "Train a TinyViT from a store: replayed augmentation, soft labels "
                           "rebuilt from the top-K records, no teacher, no ground truth. Every "
                           "record the run will read is checked before the first step. --mode "
                           "online / labels train the same way with a live teacher / labels "
                           "instead (baselines)."))
    add_data_args(p)
    p.add_argument("--val-data", help="ImageFolder root of the validation split (digits: "
                   "the test split is used)")
    p.add_argument("--arch", default="5m", help="TinyViT arch: 5m, 11m, 21m or a JSON file "
                   "of embed_dims / depths / num_heads / window_sizes (default %(default)s)")
    p.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder (checkpoint, logs, "
                   "student.pth, result.json)")
    if finetune:
        p.add_argument("--init", required=True, help="student weights to start from "
                       "(student.pth of `train`, or a registry name, URL, timm/ hub tag); a "
                       "head of another class count is re-made")
    else:
        p.add_argument("--mode", choices=["store", "online", "labels"], default="store",
                       help="store: soft labels from --store (the paper's fast distillation); "
                            "online: from a live --teacher; labels: the dataset's labels "
                            "(default %(default)s)")
        p.add_argument("--store", help="logit store (mode store)")
        p.add_argument("--skip-bad-samples", action="store_true", help="mode store: train "
                       "without the samples whose records fail their check (counted in the "
                       "log) instead of refusing the store")
        p.add_argument("--init", help="optional weights to start from (file, registry "
                       "name, URL or timm/ hub tag)")
        p.add_argument("--online-topk", type=int, help="mode online: keep only the "
                       "teacher's top-K, rebuilt like the store's (default: full softmax)")
        p.add_argument("--online-value-format", choices=VALUE_FORMATS, default="fp16",
                       help="mode online with --online-topk: round the top-K like this store "
                            "value format (default %(default)s)")
        add_teacher_args(p, required=False)
    p.add_argument("--epochs", type=int, default=30 if finetune else None,
                   help="training epochs (default %(default)s)" if finetune else
                   "training epochs (default: the store's complete epochs in mode store, "
                   "else 30)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="images per process, even (default %(default)s)")
    p.add_argument("--lr", type=float, default=2.5e-4 if finetune else 1e-3,
                   help="peak lr for the global batch, no automatic scaling (default "
                        "%(default)s)")
    p.add_argument("--min-lr", type=float, default=1e-5,
                   help="lr at the end of the cosine schedule (default %(default)s)")
    p.add_argument("--warmup-epochs", type=float, default=5.0 if finetune else 1.0,
                   help="linear warmup from lr / 1000, in epochs (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=1e-8 if finetune else 0.05,
                   help="AdamW weight decay (default %(default)s)")
    p.add_argument("--layer-decay", type=float, default=0.8 if finetune else None,
                   help="layer-wise lr decay, timm's, by TinyViT block (default "
                        + ("%(default)s)" if finetune else "off)"))
    p.add_argument("--accum-steps", type=int, default=1,
                   help="gradient accumulation steps (default %(default)s)")
    p.add_argument("--clip-grad", type=float, default=5.0,
                   help="max grad norm; 0 = off (default %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=0.1,
                   help="label smoothing of mode labels (default %(default)s)")
    p.add_argument("--bn-eval", action=argparse.BooleanOptionalAction, default=finetune,
                   help="keep BatchNorm statistics frozen while training (default "
                        + ("on)" if finetune else "off)"))
    p.add_argument("--seed", type=int, help="model init and augmentation seed (mode store: "
                   "the store's)")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (default %(default)s)")
    p.add_argument("--eval-crop-pct", type=float, help="center-crop fraction at evaluation "
                   "(0.875; digits 1.0)")
    p.add_argument("--fresh", action="store_true", help="ignore and replace earlier outputs")
    add_aug_args(p)
    add_runtime_flags(p)


def _mini_repro(sub) -> None:
    p = sub.add_parser("mini-repro", help="mini reproduction on the embedded digits (CPU)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--arch", help="student arch (default: a small TinyViT for 32-pixel digits)")
    p.add_argument("--scale", choices=["smoke", "demo", "repro"], default="repro",
                   help="epochs of teacher / students: smoke 1 / 2 (seconds, for tests), demo "
                        "3 / 8 (about 2.5 minutes on 2 cores, the demo's), repro 6 / 30 (the "
                        "README's figures, a few minutes per student; default)")
    p.add_argument("--image-size", type=int, default=32,
                   help="side in pixels the digit scans are upscaled to (default 32)")
    p.add_argument("--with-online", action=argparse.BooleanOptionalAction, default=True,
                   help="also train with the teacher online (default on)")
    p.add_argument("--value-formats", nargs="+", choices=VALUE_FORMATS, default=["fp16"],
                   help="one store (and student) per value format, same seeds (default fp16)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the inits, augmentations and batches (default 0)")
    p.add_argument("--fresh", action="store_true", help="recompute every stage")
    add_runtime_flags(p)


def _convert_store(sub) -> None:
    p = sub.add_parser("convert-store", help="convert a format-1 store in place",
                       description="Rewrite a store of format 1 (records by sample index) in "
                       "the current format, epoch by epoch (free space for one epoch is "
                       "enough); no teacher runs. Rerun the same command if it is interrupted.")
    p.add_argument("--store", required=True, help="store folder")
    p.add_argument("--block-kib", type=int, default=1024, help="block size of the converted "
                   "store, KiB (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinyvit_backbone.distill", description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = subcommands(parser)
    _save_logits(sub)
    _verify(sub)
    _train(sub, finetune=False)
    _train(sub, finetune=True)
    _mini_repro(sub)
    _convert_store(sub)
    return parser


__all__ = ["AUG_FLAGS", "AUG_PRESETS", "aug_overrides", "block_bytes",
           "build_aug", "build_parser", "parse_stats"]
