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
    log.jsonl     one JSON line per epoch (loss, lr, accuracy, seconds, images/s, and the
                  samples with bad records left out under ``skip_bad_samples``), appended
                  with :func:`~tinyvit_backbone.files.append_jsonl` (a torn line is repaired)
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

from ..files import append_jsonl, atomic_torch_save, atomic_write_json, read_json
from ..progress import progress_bar
from .datasets import DatasetInfo
from .errors import DistillError, StoreError
from .integrity import repair_command, scan_store
from .record import RecordFormat
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
from .store_fit import check_store_fits

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
    online_value_format: str = "fp16"  # ... and round its top-K like this store value format
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
    workers: int = 0, progress: bool | None = True, fresh: bool = False,
    extra: dict | None = None, weights_name: str = WEIGHTS, skip_bad_samples: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``build_model()`` (built after seeding) and return the result dict.

    A finished run in ``out_dir`` (``result.json`` + ``student.pth`` with the same settings) is
    returned as is unless ``fresh``; an interrupted one resumes from ``last.pth``.
    ``extra`` is recorded in the result (e.g. the arch, the teacher, the store path).
    Mode ``store`` scans the records it will read before the first step and refuses a store
    with bad records (with the repair command) unless ``skip_bad_samples``, which leaves those
    samples out of the loss and counts them in the log.
    """
    env = env or DistEnv()
    _check_inputs(settings, store, teacher)
    if settings.mode == "store":
        check_store_fits(store, aug=aug, seed=settings.seed, num_classes=num_classes,
                         epochs=settings.epochs, data=data)
    config = dict(settings=asdict(settings), aug=aug.to_dict(), dataset=data.to_dict(),
                  num_classes=num_classes, world_size=env.world_size, extra=extra or {})
    run = _RunFiles(out_dir, weights_name, log)
    done = run.finished(config, fresh)
    if done is not None:
        log(f"[train] {out_dir}: finished run found, skipped (use fresh to retrain)")
        return done
    run.prepare(fresh, env)
    ckpt = run.checkpoint(config, fresh)
    start_epoch = ckpt["epoch"] + 1 if ckpt else 0
    if settings.mode == "store":
        check_store_records(store, data.num_samples, settings, range(start_epoch, settings.epochs),
                            env=env, device=device, skip_bad_samples=skip_bad_samples, log=log)

    torch.manual_seed(settings.seed)
    model = build_model().to(device)
    opt = _Optimization(model, data.num_samples, settings, env, amp_dtype, device)
    history = []
    if ckpt:
        history = opt.restore(model, ckpt)
        log(f"[train] {out_dir}: resumed after epoch {start_epoch}")
    net = model
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    replay = ReplayDataset(base, aug, settings.seed, store if settings.mode == "store" else None,
                           skip_bad=skip_bad_samples)
    step = _Step(net, model, opt, settings, num_classes, teacher, device, amp_dtype, env)
    for epoch in range(start_epoch, settings.epochs):
        record = _train_one_epoch(step, replay, data.num_samples, epoch, workers, progress)
        last = epoch + 1 == settings.epochs
        if val_set is not None and (last or (epoch + 1) % settings.eval_every == 0):
            record["val_top1"] = evaluate(model, val_set, device, amp_dtype=amp_dtype, env=env,
                                          workers=workers)
        history.append(record)
        if env.is_main:
            run.save_epoch(record, dict(opt.state(model), epoch=epoch, history=history,
                                        config=config))
            log(f"[train] {settings.mode} epoch {epoch + 1}/{settings.epochs} loss "
                f"{record['train_loss']:.4f}" + (f" val top-1 {record['val_top1']:.2f}%"
                                                 if "val_top1" in record else "")
                + (f", {record['skipped_bad_samples']} samples with bad records skipped"
                   if record.get("skipped_bad_samples") else "")
                + f" ({record['seconds']:.1f}s)")
        barrier(env)
    result = dict(config=config, weights=os.path.abspath(run.weights), history=history,
                  val_top1=history[-1].get("val_top1") if history else None,
                  train_seconds=round(sum(h["seconds"] for h in history), 3),
                  skipped_bad_samples=sum(h.get("skipped_bad_samples", 0) for h in history))
    if env.is_main:
        run.save_result(model, result)
    barrier(env)
    return result


def _check_inputs(settings: TrainSettings, store, teacher) -> None:
    if settings.batch_size % 2:
        raise DistillError(f"--batch-size must be even (mixup pairs), got {settings.batch_size}")
    if settings.mode == "store" and store is None:
        raise DistillError("mode 'store' needs --store")
    if settings.mode == "online" and teacher is None:
        raise DistillError("mode 'online' needs a teacher")


def check_store_records(store, num_samples: int, settings: TrainSettings, epochs, *,
                        env: DistEnv, device: torch.device, skip_bad_samples: bool = False,
                        log: Callable[[str], None] = print):
    """Scan, before the first step, every record this run will read (each process its own
    batches); refuse bad ones with the report and the repair command, or log the count of
    samples ``skip_bad_samples`` will leave out. Returns the integrity report."""
    size = settings.batch_size
    # Training batches are consecutive runs of the store's order: batch b = positions b*size...
    mine = rank_batches(list(range(math.ceil(num_samples / size))), env.rank, env.world_size,
                        equal=True)
    runs = [(b * size, min((b + 1) * size, num_samples)) for b in mine]
    report, _ = scan_store(store, list(epochs), env=env, device=device, runs=lambda _: runs)
    if env.is_main:
        log(f"[train] checked {sum(e.records_checked for e in report.epochs):,} records of "
            f"{len(report.epochs)} epochs at {report.gb_per_s:.2f} GB/s per process: "
            f"{report.bad_records:,} bad")
    if report.bad_records and not skip_bad_samples:
        raise StoreError(
            f"{report.describe()}\nrepair the store first (it rewrites exactly the bad "
            f"records) with:\n  {repair_command(store)}\nor train without those samples: "
            "add --skip-bad-samples (they are counted in the log)")
    if report.bad_records and env.is_main:
        log(f"[train] --skip-bad-samples: {report.bad_records:,} samples with bad records will "
            "be left out of the loss")
    return report


class _RunFiles:
    """The output folder of a training run (see the module docstring)."""

    def __init__(self, out_dir: str, weights_name: str, log: Callable[[str], None] = print):
        self.out_dir = out_dir
        self.say = log
        self.result = os.path.join(out_dir, RESULT)
        self.weights = os.path.join(out_dir, weights_name)
        self.ckpt = os.path.join(out_dir, CHECKPOINT)
        self.log = os.path.join(out_dir, "log.jsonl")

    def finished(self, config: dict, fresh: bool) -> dict | None:
        """The result of a finished run with the same config, if any."""
        if fresh or not (os.path.exists(self.result) and os.path.exists(self.weights)):
            return None
        done = read_json(self.result, "training result", DistillError)
        return done if _canonical(done.get("config")) == _canonical(config) else None

    def prepare(self, fresh: bool, env: DistEnv) -> None:
        if env.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            if fresh:
                for name in (self.result, self.weights, self.ckpt, self.log):
                    if os.path.exists(name):
                        os.unlink(name)
        barrier(env)

    def checkpoint(self, config: dict, fresh: bool) -> dict | None:
        """The interrupted run's checkpoint, refused if it has other settings."""
        if fresh or not os.path.exists(self.ckpt):
            return None
        ckpt = torch.load(self.ckpt, map_location="cpu", weights_only=True)
        if _canonical(ckpt.get("config")) != _canonical(config):
            raise DistillError(f"{self.ckpt} belongs to a run with other settings; pass the same "
                               "settings to resume it, or --fresh / another --out to start over")
        return ckpt

    def save_epoch(self, record: dict, state: dict) -> None:
        # the results files' append: a line torn by a kill or a full disk is repaired (and kept
        # aside in log.jsonl.torn) before the next epoch's line, never glued onto it
        append_jsonl(self.log, [record], log=self.say)
        atomic_torch_save(self.ckpt, state)

    def save_result(self, model: nn.Module, result: dict) -> None:
        atomic_torch_save(self.weights, model.state_dict())
        atomic_write_json(self.result, result)


class _Optimization:
    """Optimizer (timm's, with layer decay), per-update cosine schedule and gradient scaler."""

    def __init__(self, model: nn.Module, num_samples: int, settings: TrainSettings,
                 env: DistEnv, amp_dtype, device: torch.device):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        self.optimizer = create_optimizer_v2(model, settings.opt, lr=settings.lr,
                                             weight_decay=settings.weight_decay,
                                             layer_decay=settings.layer_decay)
        steps = len(rank_batches(epoch_batches(num_samples, settings.seed, 0, settings.batch_size),
                                 0, env.world_size, equal=True))
        if steps == 0:
            raise DistillError(f"{num_samples} samples give no full batch of "
                               f"{settings.batch_size} per each of {env.world_size} processes: "
                               "lower --batch-size")
        self.updates_per_epoch = math.ceil(steps / settings.accum_steps)
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=self.updates_per_epoch * settings.epochs,
            lr_min=settings.min_lr, warmup_t=round(self.updates_per_epoch * settings.warmup_epochs),
            warmup_lr_init=settings.lr * 1e-3, t_in_epochs=False)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.num_updates = 0

    def restore(self, model: nn.Module, ckpt: dict) -> list[dict]:
        """Load an interrupted run's state; returns its history."""
        model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"])
        self.num_updates = (ckpt["epoch"] + 1) * self.updates_per_epoch
        return ckpt["history"]

    def state(self, model: nn.Module) -> dict:
        return dict(model=model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                    rng=torch.get_rng_state())

    @property
    def lr(self) -> float:
        return max(g["lr"] for g in self.optimizer.param_groups)


class _Step:
    """One training step: targets, forward / backward (with accumulation), update."""

    def __init__(self, net, model, opt: _Optimization, settings: TrainSettings, num_classes: int,
                 teacher, device, amp_dtype, env: DistEnv):
        self.net, self.model, self.opt, self.settings = net, model, opt, settings
        self.num_classes, self.teacher, self.device = num_classes, teacher, device
        self.amp_dtype, self.env = amp_dtype, env

    def __call__(self, batch: dict, update: bool) -> float:
        s, opt = self.settings, self.opt
        images = batch["image"].to(self.device, non_blocking=True)
        target = _targets(batch, images, s, self.num_classes, self.teacher, self.device,
                          self.amp_dtype)
        valid = batch.get("valid")
        # Bad records skipped on request weigh 0; a batch without any keeps the plain mean.
        weight = None if valid is None or bool(valid.all()) else valid.to(self.device)
        sync = (contextlib.nullcontext() if update or not self.env.distributed
                else self.net.no_sync())
        with sync:
            with autocast(self.device, self.amp_dtype):
                logits = self.net(images)
            loss = soft_target_cross_entropy(logits, target, weight)
            opt.scaler.scale(loss / s.accum_steps).backward()
        if update:
            if s.clip_grad:
                opt.scaler.unscale_(opt.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), s.clip_grad)
            opt.scaler.step(opt.optimizer)
            opt.scaler.update()
            opt.optimizer.zero_grad(set_to_none=True)
            opt.num_updates += 1
            opt.scheduler.step_update(opt.num_updates)
        return float(loss.detach())


def _train_one_epoch(step: _Step, replay: ReplayDataset, num_samples: int, epoch: int,
                     workers: int, progress) -> dict:
    """One epoch over this process's batches; returns the epoch's log record."""
    settings, env, device = step.settings, step.env, step.device
    size = settings.batch_size
    every = epoch_batches(num_samples, settings.seed, epoch, size)
    ids = rank_batches(list(range(len(every))), env.rank, env.world_size, equal=True)
    batches = [every[b] for b in ids]
    loader = replay_loader(replay, epoch, batches, workers=workers,
                           pin_memory=device.type == "cuda", starts=[b * size for b in ids])
    step.net.train()
    if settings.bn_eval:
        for m in step.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    tic, loss_sum, seen, skipped = time.time(), 0.0, 0, 0
    bar = progress_bar(loader, total=len(batches), unit="batch", leave=False,
                       desc=f"{settings.mode} epoch {epoch + 1}/{settings.epochs}",
                       enabled=progress is not False and env.is_main)
    for k, batch in enumerate(bar):
        update = (k + 1) % settings.accum_steps == 0 or k + 1 == len(batches)
        loss = step(batch, update)
        n = len(batch["image"])
        if "valid" in batch:
            skipped += int((~batch["valid"]).sum())
        loss_sum += loss * n
        seen += n
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{step.opt.lr:.2e}")
    bar.close()
    loss_sum, seen, skipped = all_reduce_sum([loss_sum, seen, skipped], env, device)
    record = dict(epoch=epoch + 1, train_loss=loss_sum / max(seen, 1), lr=step.opt.lr,
                  seconds=round(time.time() - tic, 3),
                  images_per_s=round(seen / max(time.time() - tic, 1e-9), 2))
    if skipped:
        record["skipped_bad_samples"] = int(skipped)
    return record


def _targets(batch: dict, images: torch.Tensor, settings: TrainSettings, num_classes: int,
             teacher, device, amp_dtype) -> torch.Tensor:
    if settings.mode == "store":
        return rebuild_soft_labels(batch["topk_indices"], batch["topk_values"],
                                   num_classes).to(device)
    if settings.mode == "online":
        with torch.no_grad(), autocast(device, amp_dtype):
            logits = teacher(images)
        if settings.online_topk:
            indices, values = sparsify(logits, settings.online_topk)
            fmt = RecordFormat(settings.online_topk, num_classes, settings.online_value_format)
            values = torch.from_numpy(fmt.roundtrip(values.cpu().numpy())).to(values.device)
            return rebuild_soft_labels(indices, values, num_classes)
        return torch.softmax(logits.float(), dim=-1)
    return mixed_label_targets(batch["label"], batch["lam"], num_classes,
                               settings.label_smoothing).to(device)


def _canonical(obj):
    return json.loads(json.dumps(obj)) if obj is not None else None


__all__ = ["MODES", "TrainSettings", "check_store_records", "evaluate", "load_weights",
           "train_classifier"]
