"""Train a classifier (the TinyViT student, or a teacher) on replayed, pair-mixed batches.

Targets, by ``mode``:

* ``store``  — soft labels rebuilt from the logit store (fast distillation, no teacher, no
  ground truth); the augmentation and seed come from the store's manifest.
* ``online`` — the teacher's full softmax on the very same pixels (classic distillation).
* ``labels`` — mixed one-hot labels with label smoothing (supervised; also the fine-tuning step,
  with layer-wise lr decay through timm's optimizer factory).

A plain loop rather than mmengine's Runner: every batch carries seeds, stored records and pair
weights, the epoch must reach the dataset (it picks the store file), and the online teacher runs
inside the step; a Runner would need a custom model wrapper, data preprocessor, loop and hooks
for that — more code than this loop, which keeps timm's optimizer / scheduler / loss and torch's
DDP and AMP. Outputs in ``out_dir``::

    last.pth      resumable checkpoint (model, optimizer, scheduler, scaler, RNG, epoch)
    log.jsonl     one JSON line per epoch (loss, lr, accuracy, seconds, images/s)
    student.pth   final weights: plain timm-layout state dict (``torch.save(model.state_dict())``)
    result.json   settings, accuracies and paths; its presence marks the run finished
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..files import atomic_torch_save, atomic_write_json, read_json
from .datasets import DatasetInfo
from .errors import DistillError
from .replay import (
    AugConfig,
    ReplayDataset,
    epoch_batches,
    mixed_label_targets,
    rank_batches,
    replay_loader,
)
from .runtime import DistEnv, all_reduce_sum, autocast, barrier
from .soft_label import rebuild_soft_labels, soft_target_cross_entropy, sparsify

MODES = ("store", "online", "labels")
RESULT = "result.json"
WEIGHTS = "student.pth"
CHECKPOINT = "last.pth"


@dataclass
class TrainSettings:
    """Optimisation settings (lr is for the global batch: batch_size x processes x accum)."""

    mode: str = "store"
    epochs: int = 30
    batch_size: int = 128  # per process; even (mixup pairs)
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    layer_decay: float | None = None
    accum_steps: int = 1
    clip_grad: float | None = 5.0
    label_smoothing: float = 0.1  # 'labels' mode only
    online_topk: int | None = None  # 'online' mode: sparsify the teacher like the store does
    seed: int = 0  # model init and (for online / labels) the augmentation seeds
    opt: str = "adamw"
    eval_every: int = 1
    bn_eval: bool = False  # freeze BatchNorm statistics (official fine-tuning)

    def __post_init__(self):
        if self.mode not in MODES:
            raise DistillError(f"training mode must be one of {MODES}, got {self.mode!r}")
        if self.epochs < 1 or self.accum_steps < 1:
            raise DistillError(f"epochs and accum_steps must be >= 1, got {self.epochs} / "
                               f"{self.accum_steps}")


def evaluate(model: nn.Module, dataset: Dataset, device: torch.device, *, batch_size: int = 256,
             amp_dtype: torch.dtype | None = None, env: DistEnv | None = None,
             workers: int = 0) -> float:
    """Top-1 accuracy (%) of ``model`` on ``dataset`` of (image tensor, label); ranks share it."""
    env = env or DistEnv()
    shard = Subset(dataset, range(env.rank, len(dataset), env.world_size))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers)
    was_training = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in loader:
            with autocast(device, amp_dtype):
                logits = model(images.to(device))
            correct += int((logits.argmax(-1).cpu() == labels).sum())
            total += len(labels)
    model.train(was_training)
    correct, total = all_reduce_sum([correct, total], env, device)
    return 100.0 * correct / max(total, 1)


def load_weights(model: nn.Module, path: str) -> list[str]:
    """Load classifier weights (registry name, URL, hub tag or file; official, timm or
    OpenMMLab layout) through the one loader; a head whose shape differs (another number of
    classes) is left freshly initialised. Returns the skipped keys."""
    from ..checkpoint import CheckpointError, load_pretrained

    try:
        return load_pretrained(model, path, classifier="reinit").reinitialised
    except CheckpointError as err:
        raise DistillError(str(err)) from None


def train_classifier(
    build_model: Callable[[], nn.Module], base: Dataset, data: DatasetInfo, aug: AugConfig,
    settings: TrainSettings, out_dir: str, *, num_classes: int, store=None,
    teacher: nn.Module | None = None, val_set: Dataset | None = None,
    device: torch.device, amp_dtype: torch.dtype | None = None, env: DistEnv | None = None,
    workers: int = 0, progress: bool = True, fresh: bool = False, extra: dict | None = None,
    weights_name: str = WEIGHTS, log: Callable[[str], None] = print,
) -> dict:
    """Train ``build_model()`` (built after seeding) and return the result dict.

    A finished run in ``out_dir`` (``result.json`` + ``student.pth`` with the same settings) is
    returned as is unless ``fresh``; an interrupted one resumes from ``last.pth``.
    ``extra`` is recorded in the result (e.g. the arch, the teacher, the store path).
    """
    env = env or DistEnv()
    if settings.batch_size % 2:
        raise DistillError(f"--batch-size must be even (mixup pairs), got {settings.batch_size}")
    if settings.mode == "store" and store is None:
        raise DistillError("mode 'store' needs --store")
    if settings.mode == "online" and teacher is None:
        raise DistillError("mode 'online' needs a teacher")
    if settings.mode == "store":
        _check_store_fits(store, data, aug, settings, num_classes)
    config = dict(settings=asdict(settings), aug=aug.to_dict(), dataset=data.to_dict(),
                  num_classes=num_classes, world_size=env.world_size, extra=extra or {})
    result_path, weights_path = os.path.join(out_dir, RESULT), os.path.join(out_dir, weights_name)
    ckpt_path, log_path = os.path.join(out_dir, CHECKPOINT), os.path.join(out_dir, "log.jsonl")
    if not fresh and os.path.exists(result_path) and os.path.exists(weights_path):
        done = read_json(result_path, "training result", DistillError)
        if _canonical(done.get("config")) == _canonical(config):
            log(f"[train] {out_dir}: finished run found, skipped (use fresh to retrain)")
            return done
    if env.is_main:
        os.makedirs(out_dir, exist_ok=True)
        if fresh:
            for name in (result_path, weights_path, ckpt_path, log_path):
                if os.path.exists(name):
                    os.unlink(name)
    barrier(env)

    torch.manual_seed(settings.seed)
    model = build_model().to(device)
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    optimizer = create_optimizer_v2(model, settings.opt, lr=settings.lr,
                                    weight_decay=settings.weight_decay,
                                    layer_decay=settings.layer_decay)
    steps_per_epoch = len(rank_batches(
        epoch_batches(data.num_samples, settings.seed, 0, settings.batch_size), 0, env.world_size,
        equal=True))
    if steps_per_epoch == 0:
        raise DistillError(f"{data.num_samples} samples give no full batch of "
                           f"{settings.batch_size} per each of {env.world_size} processes: "
                           "lower --batch-size")
    updates_per_epoch = math.ceil(steps_per_epoch / settings.accum_steps)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=updates_per_epoch * settings.epochs, lr_min=settings.min_lr,
        warmup_t=round(updates_per_epoch * settings.warmup_epochs),
        warmup_lr_init=settings.lr * 1e-3, t_in_epochs=False)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start_epoch, history = 0, []
    if not fresh and os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if _canonical(ckpt.get("config")) != _canonical(config):
            raise DistillError(f"{ckpt_path} belongs to a run with other settings; pass the same "
                               "settings to resume it, or --fresh / another --out to start over")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"])
        start_epoch, history = ckpt["epoch"] + 1, ckpt["history"]
        log(f"[train] {out_dir}: resumed after epoch {start_epoch}")

    net = model
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    replay = ReplayDataset(base, aug, settings.seed, store if settings.mode == "store" else None)
    num_updates = start_epoch * updates_per_epoch
    for epoch in range(start_epoch, settings.epochs):
        if settings.mode == "store":
            store.require_epoch(epoch)
        batches = rank_batches(epoch_batches(data.num_samples, settings.seed, epoch,
                                             settings.batch_size), env.rank, env.world_size,
                               equal=True)
        loader = replay_loader(replay, epoch, batches, workers=workers,
                               pin_memory=device.type == "cuda")
        net.train()
        if settings.bn_eval:
            for m in net.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        tic, loss_sum, seen = time.time(), 0.0, 0
        bar = tqdm(loader, total=len(batches), unit="batch", leave=False,
                   desc=f"{settings.mode} epoch {epoch + 1}/{settings.epochs}",
                   disable=not (progress and env.is_main))
        for step, batch in enumerate(bar):
            images = batch["image"].to(device, non_blocking=True)
            target = _targets(batch, images, settings, num_classes, teacher, device, amp_dtype)
            update = (step + 1) % settings.accum_steps == 0 or step + 1 == len(batches)
            sync = contextlib.nullcontext() if update or not env.distributed else net.no_sync()
            with sync:
                with autocast(device, amp_dtype):
                    logits = net(images)
                loss = soft_target_cross_entropy(logits, target)
                scaler.scale(loss / settings.accum_steps).backward()
            if update:
                if settings.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                num_updates += 1
                scheduler.step_update(num_updates)
            loss_sum += float(loss.detach()) * len(images)
            seen += len(images)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{optimizer.param_groups[-1]['lr']:.2e}")
        bar.close()
        loss_sum, seen = all_reduce_sum([loss_sum, seen], env, device)
        record = dict(epoch=epoch + 1, train_loss=loss_sum / max(seen, 1),
                      lr=max(g["lr"] for g in optimizer.param_groups),
                      seconds=round(time.time() - tic, 3),
                      images_per_s=round(seen / max(time.time() - tic, 1e-9), 2))
        last = epoch + 1 == settings.epochs
        if val_set is not None and (last or (epoch + 1) % settings.eval_every == 0):
            record["val_top1"] = evaluate(model, val_set, device, amp_dtype=amp_dtype, env=env,
                                          workers=workers)
        history.append(record)
        if env.is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            atomic_torch_save(ckpt_path, dict(
                model=model.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                rng=torch.get_rng_state(), epoch=epoch, history=history, config=config))
            log(f"[train] {settings.mode} epoch {epoch + 1}/{settings.epochs} loss "
                f"{record['train_loss']:.4f}" + (f" val top-1 {record['val_top1']:.2f}%"
                                                 if "val_top1" in record else "")
                + f" ({record['seconds']:.1f}s)")
        barrier(env)

    result = dict(config=config, weights=os.path.abspath(weights_path), history=history,
                  val_top1=history[-1].get("val_top1") if history else None,
                  train_seconds=round(sum(h["seconds"] for h in history), 3))
    if env.is_main:
        atomic_torch_save(weights_path, model.state_dict())
        atomic_write_json(result_path, result)
    barrier(env)
    return result


def _check_store_fits(store, data: DatasetInfo, aug: AugConfig, settings: TrainSettings,
                      num_classes: int) -> None:
    """Refuse, before any training, a store that would give wrong pixels or labels."""
    from .datasets import check_same_dataset

    m = store.manifest
    check_same_dataset(m["dataset"], data, f"store {store.root!r}")
    if _canonical(aug.to_dict()) != _canonical(m["augmentation"]):
        raise DistillError(f"the augmentation differs from store {store.root!r}'s; train with "
                           "AugConfig.from_dict(store.manifest['augmentation'])")
    if settings.seed != int(m["seed"]):
        raise DistillError(f"seed {settings.seed} differs from store {store.root!r}'s "
                           f"({m['seed']}): the seeds decide the pixels; use the store's")
    if num_classes != store.num_classes:
        raise DistillError(f"{num_classes} classes, but store {store.root!r} holds "
                           f"{store.num_classes}-class records")
    for epoch in range(settings.epochs):  # refuse before training, not after hours of it
        store.require_epoch(epoch)


def _targets(batch: dict, images: torch.Tensor, settings: TrainSettings, num_classes: int,
             teacher, device, amp_dtype) -> torch.Tensor:
    if settings.mode == "store":
        return rebuild_soft_labels(batch["topk_indices"], batch["topk_values"],
                                   num_classes).to(device)
    if settings.mode == "online":
        with torch.no_grad(), autocast(device, amp_dtype):
            logits = teacher(images)
        if settings.online_topk:
            return rebuild_soft_labels(*sparsify(logits, settings.online_topk), num_classes)
        return torch.softmax(logits.float(), dim=-1)
    return mixed_label_targets(batch["label"], batch["lam"], num_classes,
                               settings.label_smoothing).to(device)


def _canonical(obj):
    return json.loads(json.dumps(obj)) if obj is not None else None


__all__ = ["MODES", "TrainSettings", "evaluate", "load_weights", "train_classifier"]
