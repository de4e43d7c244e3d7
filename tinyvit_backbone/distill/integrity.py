"""Integrity scans of a logit store: every bad record, per epoch, and the command that repairs it.

A scan reads records as long sequential runs and checks each one (:func:`.record.valid_rows`:
crc32 from its bound start value, positive top-1). It never stops at a bad record or file: the
report counts, per epoch, the bad records, the first sample indices, and whether the file is
missing, short (unfinished or truncated: the missing tail counts as bad records) or longer than a
complete epoch. Under torchrun every process scans its own share and the counts are summed.

Save-logits scans every epoch before writing and rewrites exactly the bad records; ``train``
scans the records it will read before its first step; ``verify`` scans everything.
"""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .store import LogitStore

FIRST_BAD = 10  # sample indices listed per epoch
SCAN_CHUNK_BYTES = 8 << 20  # bytes read per pread while scanning


@dataclass
class EpochIntegrity:
    """What a scan found in one epoch."""

    epoch: int
    complete: bool  # marked complete in the manifest
    file: str  # 'full' | 'short' | 'missing' | 'extended'
    file_bytes: int | None
    expected_bytes: int
    records_checked: int = 0
    bad_records: int = 0
    first_bad: list[int] = field(default_factory=list)  # sample indices

    @property
    def sound(self) -> bool:
        return self.bad_records == 0 and self.file == "full"

    def describe(self) -> str:
        return f"epoch {self.epoch}: {self.findings()}"

    def findings(self) -> str:
        """What is wrong with the epoch, or 'sound'."""
        what = []
        if self.file == "missing":
            what.append("file missing (never written)")
        elif self.file == "short":
            what.append(f"file short: {self.file_bytes:,} of {self.expected_bytes:,} bytes "
                        f"({'truncated' if self.complete else 'not finished'})")
        elif self.file == "extended":
            what.append(f"file longer than a complete epoch: {self.file_bytes:,} bytes, "
                        f"expected {self.expected_bytes:,}")
        if self.bad_records and self.file != "missing":
            what.append(f"{self.bad_records:,} bad records of {self.records_checked:,} checked "
                        f"(sample indices {', '.join(map(str, self.first_bad))}"
                        f"{', ...' if self.bad_records > len(self.first_bad) else ''})")
        return "; ".join(what) or "sound"


@dataclass
class IntegrityReport:
    """A scan of some epochs of a store; ``seconds`` and ``bytes_read`` sum over processes."""

    store: str
    epochs: list[EpochIntegrity]
    bytes_read: int = 0
    seconds: float = 0.0
    processes: int = 1

    @property
    def bad_records(self) -> int:
        return sum(e.bad_records for e in self.epochs)

    @property
    def sound(self) -> bool:
        return all(e.sound for e in self.epochs)

    @property
    def gb_per_s(self) -> float:
        """Scan throughput of one process (GB/s of records read and checked)."""
        return self.bytes_read / 1e9 / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        bad = [e for e in self.epochs if not e.sound]
        head = (f"store {self.store!r}: {len(bad)} of {len(self.epochs)} epochs checked have "
                f"bad records or files ({self.bad_records:,} bad records in all)" if bad else
                f"store {self.store!r}: all {len(self.epochs)} epochs checked are sound")
        lines = [head + f"; scanned {human_bytes(self.bytes_read)} at {self.gb_per_s:.2f} GB/s "
                        f"per process ({self.processes} process{'es' * (self.processes > 1)})"]
        return "\n".join(lines + ["  " + e.describe() for e in bad])

    def to_dict(self) -> dict:
        return dict(store=self.store, sound=self.sound, bad_records=self.bad_records,
                    bytes_read=self.bytes_read, seconds=round(self.seconds, 3),
                    gb_per_s=round(self.gb_per_s, 3), processes=self.processes,
                    epochs={str(e.epoch): asdict(e) for e in self.epochs})


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def file_state(store: LogitStore, epoch: int) -> tuple[str, int | None]:
    size, full = store.file_size(epoch), store.layout.file_bytes
    if size is None:
        return "missing", None
    return ("full" if size == full else "short" if size < full else "extended"), size


def bad_positions(store: LogitStore, epoch: int, runs) -> tuple[np.ndarray, int, int]:
    """Positions of the bad records among position runs [(start, stop)] of ``epoch``.

    Returns (positions int64, records checked, bytes read). A missing file is all bad without
    reading anything."""
    merged: list[list[int]] = []
    for a, b in runs:  # adjacent runs (one process's consecutive batches) read as one
        if merged and merged[-1][1] == a:
            merged[-1][1] = b
        elif b > a:
            merged.append([a, b])
    runs = [(a, b) for a, b in merged]
    checked = sum(b - a for a, b in runs)
    if store.file_size(epoch) is None:
        return (np.concatenate([np.arange(a, b) for a, b in runs]).astype(np.int64) if runs
                else np.zeros(0, np.int64)), checked, 0
    chunk = max(1, SCAN_CHUNK_BYTES // store.record.size)
    bad, read = [], 0
    for a, b in runs:
        for s in range(a, b, chunk):
            e = min(b, s + chunk)
            ok = store.check_run(epoch, s, e)
            read += (e - s) * store.record.size
            if not ok.all():
                bad.append(np.flatnonzero(~ok) + s)
    return (np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, np.int64)), checked, read


def share_of_blocks(store: LogitStore, rank: int, world_size: int) -> list[tuple[int, int]]:
    """Rank's contiguous share of an epoch's positions, cut at block boundaries."""
    nb = store.layout.num_blocks
    first, last = rank * nb // world_size, (rank + 1) * nb // world_size
    if first == last:
        return []
    return [(store.layout.block_range(first)[0], store.layout.block_range(last - 1)[1])]


def scan_store(store: LogitStore, epochs, *, env=None, device=None, runs=None) -> tuple[
        IntegrityReport, dict[int, np.ndarray]]:
    """Scan ``epochs`` of ``store``; returns the report (summed over torchrun processes) and this
    process's bad positions per epoch.

    ``runs(epoch)`` gives the position runs this process checks (default: its contiguous share
    of the blocks, so the processes together check everything once)."""
    import torch

    from .runtime import DistEnv, all_reduce_sum

    env = env or DistEnv()
    epochs = list(epochs)
    complete = set(store.epochs_complete)
    tic = time.perf_counter()
    local: dict[int, np.ndarray] = {}
    counts, firsts, total_read = [], [], 0
    for epoch in epochs:
        mine = runs(epoch) if runs else share_of_blocks(store, env.rank, env.world_size)
        pos, checked, read = bad_positions(store, epoch, mine)
        local[epoch] = pos
        total_read += read
        counts += [len(pos), checked]
        first = np.sort(store.order(epoch).order[pos])[:FIRST_BAD] if len(pos) else []
        slots = np.zeros(env.world_size * FIRST_BAD)
        slots[env.rank * FIRST_BAD: env.rank * FIRST_BAD + len(first)] = np.asarray(first) + 1
        firsts.append(slots)
    seconds = time.perf_counter() - tic
    flat = counts + [total_read, seconds] + (np.concatenate(firsts).tolist() if firsts else [])
    summed = all_reduce_sum(flat, env, device or torch.device("cpu"))
    report = IntegrityReport(store.root, [], int(summed[2 * len(epochs)]),
                             float(summed[2 * len(epochs) + 1]), env.world_size)
    slots = np.asarray(summed[2 * len(epochs) + 2:]).reshape(len(epochs), -1) if epochs else []
    for k, epoch in enumerate(epochs):
        state, size = file_state(store, epoch)
        first = sorted(int(v) - 1 for v in slots[k] if v > 0)[:FIRST_BAD]
        report.epochs.append(EpochIntegrity(
            epoch, epoch in complete, state, size, store.layout.file_bytes,
            int(summed[2 * k + 1]), int(summed[2 * k]), first))
    return report, local


def repair_command(store: LogitStore) -> str:
    """The save-logits command that resumes / repairs ``store`` (its settings, spelled out)."""
    m = store.manifest
    t, aug, rec = m["teacher"], m["augmentation"], m["record"]
    argv = ["python", "-m", "tinyvit_backbone.distill", "save-logits",
            "--teacher", t["model"], "--teacher-checkpoint", t["checkpoint"]]
    if t.get("model_kwargs"):
        argv += ["--teacher-kwargs", json.dumps(t["model_kwargs"])]
    argv += ["--teacher-mean", *map(repr, t["mean"]), "--teacher-std", *map(repr, t["std"]),
             "--data", m["dataset"]["root"], "--num-classes", str(t["num_classes"]),
             "--out", store.root, "--epochs", str(m["epochs"]), "--topk", str(rec["topk"]),
             "--value-format", rec["values"], "--batch-size", str(m["batch_size"]),
             "--seed", str(m["seed"]),
             "--block-kib", str(int(m["layout"]["block_bytes"]) // 1024),
             "--amp" if t.get("amp") else "--no-amp"]
    for name, value in aug.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is None:
            argv += [flag, "none"]
        elif isinstance(value, list):
            argv += [flag, *map(repr, value)]
        else:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return shlex.join(argv)


__all__ = ["EpochIntegrity", "IntegrityReport", "bad_positions", "file_state", "human_bytes",
           "repair_command",
           "scan_store", "share_of_blocks"]
