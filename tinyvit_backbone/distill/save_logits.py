"""Run the teacher once over every augmented epoch and keep its top-K probabilities in a store.

Every epoch, complete or not, is first scanned (:mod:`.integrity`: each process checks its share
of the blocks, the counts are summed and logged with the scan's throughput). Only bad records are
rewritten, so a rerun of the same command resumes a killed run, finishes a short file and repairs
damage, leaving every good byte untouched; a sound epoch costs one read.

The epoch's sample order is cut into fixed teacher batches (:func:`~.replay.epoch_batches`).
The blocks holding bad records are split into one contiguous, equally loaded range per process
(:func:`~.layout.assign_blocks`); a process replays and runs the batches that hold its bad
records and writes only those records, inside its own blocks. The teacher always sees the same
batches, whatever the number of processes or DataLoader workers and however often the run was
interrupted, so the finished bytes do not depend on any of these (same hardware, software and
thread count).

Before the first batch rank 0 takes the store's writer lock (:mod:`.lock`) and prints what the
store will weigh against the free space of its file system, refusing to start when it cannot fit
(``force`` overrides).
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from ..files import read_json
from ..progress import progress_bar
from .datasets import DatasetInfo, matches_legacy
from .errors import StoreError
from .integrity import bad_positions, human_bytes, scan_store
from .layout import BLOCK_BYTES, assign_blocks
from .lock import WriterLock
from .manifest import MANIFEST, describe_store_format
from .record import DEFAULT_VALUE_FORMAT, RecordFormat
from .replay import AugConfig, ReplayDataset, epoch_batches, replay_loader
from .runtime import (
    DistEnv,
    all_reduce_sum,
    autocast,
    barrier,
    broadcast_flag,
    deterministic_kernels,
)
from .soft_label import sparsify
from .store import LogitStore
from .teacher import Teacher


@dataclass
class SaveSettings:
    """What decides the store's bytes besides the teacher and the data."""

    topk: int = 10
    epochs: int = 1
    batch_size: int = 128
    seed: int = 0
    amp: str | None = None  # autocast dtype name, None = full precision
    value_format: str = DEFAULT_VALUE_FORMAT
    block_bytes: int = BLOCK_BYTES


def build_manifest(teacher_info: dict, data: DatasetInfo, aug: AugConfig,
                   settings: SaveSettings) -> dict:
    """The manifest of a store (see :mod:`.store`); identity sections come first."""
    import timm

    record = RecordFormat(settings.topk, int(teacher_info["num_classes"]), settings.value_format)
    return dict(
        **describe_store_format(record, settings.block_bytes),
        teacher=dict(teacher_info, amp=settings.amp),
        dataset=data.to_dict(),
        augmentation=aug.to_dict(),
        seed=settings.seed,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        software=dict(torch=torch.__version__, timm=timm.__version__),
    )


def disk_budget(store: LogitStore, epochs: int) -> dict:
    """Size of the store's first ``epochs`` epochs when complete, what is on disk already, and
    the free space of its file system (bytes)."""
    full = store.layout.file_bytes
    on_disk = to_write = 0
    for epoch in range(epochs):
        try:
            allocated = os.stat(store.epoch_path(epoch)).st_blocks * 512
        except FileNotFoundError:
            allocated = 0
        on_disk += allocated
        to_write += full - min(allocated, full)
    manifest = os.path.getsize(store.manifest_path)
    return dict(final_bytes=epochs * full + manifest, on_disk_bytes=on_disk + manifest,
                to_write_bytes=to_write, free_bytes=shutil.disk_usage(store.root).free)


def check_disk_budget(store: LogitStore, epochs: int, force: bool,
                      log: Callable[[str], None]) -> dict:
    """Log the budget; refuse (StoreError) when the rest cannot fit, unless ``force``."""
    b = disk_budget(store, epochs)
    log(f"[save-logits] store {store.root}: {epochs} epochs x {store.num_samples:,} records "
        f"x {store.record.size} B = {human_bytes(b['final_bytes'])} when complete; "
        f"{human_bytes(b['on_disk_bytes'])} on disk now, {human_bytes(b['to_write_bytes'])} to "
        f"write; {human_bytes(b['free_bytes'])} free on its file system")
    if b["to_write_bytes"] > b["free_bytes"]:
        if not force:
            raise StoreError(
                f"store {store.root!r} needs {human_bytes(b['to_write_bytes'])} more but its file "
                f"system has {human_bytes(b['free_bytes'])} free: free space, choose another "
                "--out, fewer --epochs, a smaller --topk or --value-format log8, or pass --force "
                "to start anyway (a full disk stops the run with a clear error, and rerunning "
                "continues once space is freed)")
        log("[save-logits] the store does not fit the free space: starting anyway (--force)")
    return b


def _on_main(env: DistEnv, device: torch.device, fn: Callable[[], object]):
    """Run ``fn`` on rank 0 and make every rank fail if it failed (no rank waits forever)."""
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except StoreError as err:
            error = err
    ok = broadcast_flag(error is None, env, device)
    if error is not None:
        raise error
    if not ok:
        raise StoreError("rank 0 refused to write the store: see its error message")
    return result


@torch.no_grad()
def _older_fingerprint(store_dir: str, data: DatasetInfo, log: Callable[[str], None]) -> DatasetInfo:
    """``data`` with the size-only fingerprint when it resumes a store written before file
    modification times were hashed, on the same files (so the store keeps its identity)."""
    try:
        stored = read_json(os.path.join(store_dir, MANIFEST), "store manifest").get("dataset")
    except (ValueError, AttributeError):
        return data
    if not isinstance(stored, dict) or not matches_legacy(stored, data):
        return data
    log(f"store {store_dir!r} records the older size-only dataset fingerprint, which these "
        "files match: resuming it (an image replaced by another of the same size would go "
        "unnoticed for this store)")
    return replace(data, fingerprint=data.legacy_fingerprint)


def save_logits(store_dir: str, teacher: Teacher, teacher_info: dict, dataset: Dataset,
                data: DatasetInfo, aug: AugConfig, settings: SaveSettings, *,
                device: torch.device, amp_dtype: torch.dtype | None = None,
                env: DistEnv | None = None, workers: int = 0, progress: bool | None = True,
                log: Callable[[str], None] = print, force: bool = False,
                rebuild_manifest: bool = False) -> dict:
    """Write, resume or repair the store at ``store_dir``; returns a summary dict.

    Args:
        teacher / teacher_info: from :func:`~.teacher.load_teacher` (its ``num_classes`` sets C).
        dataset / data: from :func:`~.datasets.open_dataset` (no transform of its own).
        aug: the training augmentation the student will replay.
        settings: top-K, epochs, teacher batch size (even), base seed, AMP name, value format,
            block size.
        env: this process's rank / world size (torchrun); ranks must all call this.
        force: start even when the free space cannot hold the rest of the store.
        rebuild_manifest: replace a damaged or missing manifest with this run's settings.
    """
    env = env or DistEnv()
    settings = replace(settings, amp=str(amp_dtype).removeprefix("torch.") if amp_dtype else None)
    log = log if env.is_main else (lambda _: None)
    data = _older_fingerprint(store_dir, data, log)
    manifest = build_manifest(teacher_info, data, aug, settings)
    lock = WriterLock(store_dir)
    _on_main(env, device, lock.acquire)
    try:
        store = _on_main(env, device, lambda: LogitStore.create(
            store_dir, manifest, rebuild_manifest=rebuild_manifest))
        if not env.is_main:
            store = LogitStore.create(store_dir, manifest, writer=False)
        budget = _on_main(env, device, lambda: check_disk_budget(
            store, settings.epochs, force, log))
        deterministic_kernels(device)
        writer = _EpochWriter(store, teacher.to(device).eval(), ReplayDataset(
            dataset, aug, settings.seed), settings, device, amp_dtype, env, workers, progress, log)
        summary = [writer.run(epoch) for epoch in range(settings.epochs)]
        store.reload_manifest()
        store.close()
    finally:
        if env.is_main:
            lock.release()
    written = sum(s["written"] for s in summary)
    if written == 0:
        log(f"[save-logits] {store_dir}: all {settings.epochs} epochs sound, nothing to write")
    hits, seen = sum(s["hits"] for s in summary), sum(s["seen"] for s in summary)
    return dict(store=store_dir, epochs_complete=store.epochs_complete, records_written=written,
                records_repaired=sum(s["bad"] for s in summary if s["was_complete"]),
                record_bytes=store.record.size, value_format=store.record.values,
                scan_gb_per_s=[s["gb_per_s"] for s in summary], disk=budget,
                seconds=round(sum(s["seconds"] for s in summary), 3),
                teacher_top1_on_augmented=hits / seen if seen else None)


class _EpochWriter:
    """Scan one epoch, then compute and write this process's share of its bad records."""

    def __init__(self, store: LogitStore, teacher: Teacher, replay: ReplayDataset,
                 settings: SaveSettings, device, amp_dtype, env: DistEnv, workers: int,
                 progress, log):
        self.store, self.teacher, self.replay, self.settings = store, teacher, replay, settings
        self.device, self.amp_dtype, self.env, self.workers = device, amp_dtype, env, workers
        self.progress, self.log = progress, log

    def run(self, epoch: int) -> dict:
        store, env, s = self.store, self.env, self.settings
        tic = time.time()
        store.reload_manifest()
        was_complete = epoch in store.epochs_complete
        report, local_bad = scan_store(store, [epoch], env=env, device=self.device)
        scan = report.epochs[0]
        self.log(f"[save-logits] epoch {epoch + 1}/{s.epochs}: scanned "
                 f"{human_bytes(report.bytes_read)} at {report.gb_per_s:.2f} GB/s per process: "
                 + scan.findings())
        out = dict(written=0, bad=scan.bad_records, was_complete=was_complete, hits=0.0, seen=0,
                   gb_per_s=round(report.gb_per_s, 3))
        if scan.sound:
            if not was_complete and env.is_main:
                store.mark_complete(epoch)
            barrier(env)
            out["seconds"] = time.time() - tic
            return out
        if env.is_main:
            if was_complete:
                store.mark_complete(epoch, complete=False)
            store.truncate_to_size(epoch)
        layout = store.layout
        work = np.bincount(local_bad[epoch] // layout.per_block, minlength=layout.num_blocks)
        work = np.asarray(all_reduce_sum(work.tolist(), env, self.device))
        first, last = assign_blocks(work, env.world_size)[env.rank]
        barrier(env)  # the scan and the truncation are done before anyone writes
        mine = [layout.block_range(b) for b in range(first, last) if work[b] > 0]
        todo, _, _ = bad_positions(store, epoch, mine)
        out.update(self._write(epoch, todo))
        store.sync()
        # Read back what this process wrote: a record that is still bad means a failing disk.
        still, _, _ = bad_positions(store, epoch, layout.runs(todo))
        failed = int(all_reduce_sum([len(still)], env, self.device)[0])
        if failed:
            raise StoreError(f"{failed} records of epoch {epoch} of {store.root!r} are still bad "
                             "after writing them: the disk is failing or another job writes "
                             "the same store without its lock; check it and rerun save-logits")
        barrier(env)
        if env.is_main:
            store.mark_complete(epoch)
            self.log(f"[save-logits] epoch {epoch + 1}/{s.epochs} complete "
                     f"({scan.bad_records:,} records written, {store.record.size} bytes each)")
        barrier(env)
        out["seconds"] = time.time() - tic
        return out

    def _write(self, epoch: int, todo: np.ndarray) -> dict:
        store, s, size = self.store, self.settings, self.settings.batch_size
        batches = epoch_batches(store.num_samples, s.seed, epoch, size)
        ids = np.unique(todo // size).tolist()
        wanted = np.zeros(store.num_samples, dtype=bool)
        wanted[todo] = True
        loader = replay_loader(self.replay, epoch, [batches[b] for b in ids],
                               workers=self.workers, pin_memory=self.device.type == "cuda")
        bar = progress_bar(loader, total=len(ids), unit="batch", leave=False,
                           desc=f"save-logits epoch {epoch + 1}/{s.epochs}",
                           enabled=self.progress is not False and self.env.is_main)
        written, hits, seen = 0, 0.0, 0
        for b, batch in zip(ids, bar):
            images = batch["image"].to(self.device, non_blocking=True)
            with autocast(self.device, self.amp_dtype):
                logits = self.teacher(images)
            indices, values = sparsify(logits, s.topk)
            rows = np.flatnonzero(wanted[b * size: b * size + len(images)])
            store.write(epoch, batch["index"].numpy()[rows], batch["seed"].numpy()[rows],
                        indices.cpu().numpy()[rows], values.cpu().numpy()[rows])
            written += len(rows)
            # Teacher accuracy against the dominant label of each (mixed) image: a sanity check.
            labels = batch["label"].clone()
            minor = batch["lam"] < 0.5
            partner = (torch.arange(len(labels)) ^ 1).clamp(max=len(labels) - 1)
            labels[minor] = batch["label"][partner][minor]
            hits += float((indices[:, 0].cpu() == labels).sum())
            seen += len(labels)
        bar.close()
        return dict(written=written, hits=hits, seen=seen)


__all__ = ["SaveSettings", "build_manifest", "check_disk_budget", "disk_budget", "save_logits"]
