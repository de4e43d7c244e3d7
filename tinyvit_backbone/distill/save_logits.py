"""Run the teacher once over every augmented epoch and keep its top-K probabilities in a store.

For each epoch the sample order is cut into fixed batches (:func:`~.replay.epoch_batches`); rank
``r`` of ``w`` (torchrun) takes batches ``r, r + w, ...``, replays their augmentation from the
per-sample seeds, mixes pairs, runs the teacher in eval mode and writes the records of those
samples in place. The teacher always sees the same batches, whatever the number of processes or
DataLoader workers and however often the run was interrupted, so the bytes of a finished store
do not depend on any of these (same hardware, software and thread count). A resumed run skips
the batches whose records are all valid and recomputes the others whole.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .datasets import DatasetInfo
from .errors import StoreError
from .replay import AugConfig, ReplayDataset, epoch_batches, rank_batches, replay_loader
from .runtime import DistEnv, autocast, barrier, deterministic_kernels
from .soft_label import sparsify
from .store import FORMAT, FORMAT_VERSION, LogitStore, describe_record_layout
from .teacher import Teacher


@dataclass
class SaveSettings:
    """What decides the store's bytes besides the teacher and the data."""

    topk: int = 10
    epochs: int = 1
    batch_size: int = 128
    seed: int = 0
    amp: str | None = None  # autocast dtype name, None = full precision


def build_manifest(teacher_info: dict, data: DatasetInfo, aug: AugConfig,
                   settings: SaveSettings) -> dict:
    """The manifest of a store (see :mod:`.store`); identity sections come first."""
    import timm

    num_classes = int(teacher_info["num_classes"])
    return dict(
        format=FORMAT, format_version=FORMAT_VERSION,
        record=describe_record_layout(settings.topk, num_classes),
        teacher=dict(teacher_info, amp=settings.amp),
        dataset=data.to_dict(),
        augmentation=aug.to_dict(),
        seed=settings.seed,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        software=dict(torch=torch.__version__, timm=timm.__version__),
    )


@torch.no_grad()
def save_logits(store_dir: str, teacher: Teacher, teacher_info: dict, dataset: Dataset,
                data: DatasetInfo, aug: AugConfig, settings: SaveSettings, *,
                device: torch.device, amp_dtype: torch.dtype | None = None,
                env: DistEnv | None = None, workers: int = 0, progress: bool = True,
                log: Callable[[str], None] = print) -> dict:
    """Write (or resume) the store at ``store_dir``; returns a summary dict.

    Args:
        teacher / teacher_info: from :func:`~.teacher.load_teacher` (its ``num_classes`` sets C).
        dataset / data: from :func:`~.datasets.open_dataset` (no transform of its own).
        aug: the training augmentation the student will replay.
        settings: top-K, number of epochs, teacher batch size (even), base seed, AMP name.
        env: this process's rank / world size (torchrun); ranks must all call this.
    """
    env = env or DistEnv()
    settings = replace(settings, amp=str(amp_dtype).removeprefix("torch.") if amp_dtype else None)
    manifest = build_manifest(teacher_info, data, aug, settings)
    if env.is_main:
        store = LogitStore.create(store_dir, manifest)
    barrier(env)
    if not env.is_main:
        store = LogitStore.create(store_dir, manifest, writer=False)
    deterministic_kernels(device)
    teacher = teacher.to(device).eval()
    replay = ReplayDataset(dataset, aug, settings.seed)
    start, written, hits, seen, resumed_epochs = time.time(), 0, 0.0, 0, 0
    for epoch in range(settings.epochs):
        store.reload_manifest()
        if epoch in store.epochs_complete:
            continue
        resumed_epochs += 1
        if env.is_main:
            store.allocate_epoch(epoch)
        barrier(env)
        batches = rank_batches(epoch_batches(data.num_samples, settings.seed, epoch,
                                             settings.batch_size), env.rank, env.world_size)
        todo = [b for b in batches if not store.valid_mask(epoch, b).all()]
        loader = replay_loader(replay, epoch, todo, workers=workers,
                               pin_memory=device.type == "cuda")
        bar = tqdm(loader, total=len(todo), desc=f"save-logits epoch {epoch + 1}/{settings.epochs}",
                   unit="batch", disable=not (progress and env.is_main), leave=False)
        for batch in bar:
            images = batch["image"].to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                logits = teacher(images)
            indices, values = sparsify(logits, settings.topk)
            store.write(epoch, batch["index"].numpy(), batch["seed"].numpy(),
                        indices.cpu().numpy(), values.cpu().numpy())
            written += len(images)
            # Teacher accuracy against the dominant label of each (mixed) image: a sanity check.
            labels = batch["label"].clone()
            minor = batch["lam"] < 0.5
            partner = (torch.arange(len(labels)) ^ 1).clamp(max=len(labels) - 1)
            labels[minor] = batch["label"][partner][minor]
            hits += float((indices[:, 0].cpu() == labels).sum())
            seen += len(labels)
        store.flush()
        barrier(env)
        if env.is_main:
            bad = int((~store.valid_mask(epoch)).sum())
            if bad:
                raise StoreError(f"epoch {epoch} of {store_dir!r} still has {bad} invalid records "
                                 "after writing: the disk is failing or another process writes "
                                 "the same store; check it and rerun save-logits")
            store.mark_complete(epoch)
            log(f"[save-logits] epoch {epoch + 1}/{settings.epochs} complete "
                f"({data.num_samples} records, {store.dtype.itemsize} bytes each)")
        barrier(env)
    store.reload_manifest()
    store.close()
    if resumed_epochs == 0:
        log(f"[save-logits] {store_dir}: all {settings.epochs} epochs already stored, reused")
    return dict(store=store_dir, epochs_complete=store.epochs_complete, records_written=written,
                record_bytes=store.dtype.itemsize, seconds=round(time.time() - start, 3),
                teacher_top1_on_augmented=hits / seen if seen else None)


__all__ = ["SaveSettings", "build_manifest", "save_logits"]
