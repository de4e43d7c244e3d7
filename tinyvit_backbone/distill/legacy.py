"""Format-1 stores (records by sample index): read them, and convert them in place to format 2.

Format 1 is what this tool wrote before format 2: ``epoch_0000.bin`` holds the N records of an
epoch addressed by *sample index*, each ``R = 8 + K * (2 + b)`` bytes (seed <i4, indices <i2 or
<i4 [K], values <f2 [K], check <u4); the check is ``crc32(pack('<qq', epoch, index) + payload)``
and an all-zero record (top-1 probability 0) was never written. Its payload bytes are exactly
those of format 2's ``fp16`` records, so converting moves each record to its position in the
epoch's order and recomputes only its check: the teacher never runs again.

:func:`convert_store` works epoch by epoch, so it needs free space for one epoch only: it reads
the format-1 file, checks every record, writes the sound ones to ``epoch_0000.records``
(atomically: a temporary file, then a rename) and then deletes the format-1 file. Records that
were bad or never written stay unwritten, and the next save-logits run computes them. The
manifest becomes format 2 last, so an interrupted conversion is finished by running the same
command again; epochs complete in format 1 are complete again once a scan finds them sound.
"""
from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Callable

import numpy as np

from ..files import atomic_write, atomic_write_json, read_json
from .errors import StoreError
from .integrity import scan_store
from .layout import BLOCK_BYTES, EpochLayout, epoch_order_table
from .lock import WriterLock
from .manifest import EPOCH_FILE, FORMAT, MANIFEST, describe_store_format, identity_digest
from .record import RecordFormat, check_starts, identity_key, seal
from .store import LogitStore

V1_EPOCH_FILE = "epoch_{epoch:04d}.bin"


def v1_record_format(manifest: dict) -> RecordFormat:
    """The format-2 ``fp16`` record whose payload equals this format-1 store's records."""
    rec = manifest["record"]
    fmt = RecordFormat(int(rec["topk"]), int(rec["num_classes"]), "fp16")
    if fmt.size != int(rec["bytes"]):
        raise StoreError(f"format-1 record of {rec['bytes']} bytes does not match K={fmt.topk}, "
                         f"C={fmt.num_classes} ({fmt.size} bytes): the manifest is damaged")
    return fmt


def v1_valid(rows: np.ndarray, samples: np.ndarray, epoch: int, fmt: RecordFormat) -> np.ndarray:
    """Which format-1 records (n,) of samples ``samples`` in ``epoch`` are valid."""
    rows = np.ascontiguousarray(rows)
    body, size = fmt.body, fmt.size
    view = memoryview(rows).cast("B")
    checks = rows[:, body:].copy().view("<u4").reshape(len(rows))
    crc, pack = zlib.crc32, struct.pack
    computed = np.fromiter((crc(view[j * size:j * size + body], crc(pack("<qq", epoch, int(i))))
                            for j, i in enumerate(samples)), dtype=np.uint32, count=len(rows))
    return (computed == checks) & (fmt.top1(rows) > 0)


def v1_records(path: str, num_samples: int, fmt: RecordFormat):
    """The format-1 file as a read-only (records present, R) memory map (None if empty); a
    short file lacks its tail, i.e. never-written records."""
    present = min(num_samples, os.path.getsize(path) // fmt.size)
    if present == 0:
        return None
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(present, fmt.size))


def v2_manifest(v1: dict, block_bytes: int = BLOCK_BYTES) -> dict:
    """The format-2 manifest of a converted store (``epochs_complete`` filled in later)."""
    fmt = v1_record_format(v1)
    out = dict(describe_store_format(fmt, block_bytes))
    for key in ("teacher", "dataset", "augmentation", "seed", "batch_size", "epochs",
                "software"):
        if key in v1:
            out[key] = v1[key]
    out["converted_from"] = dict(format_version=1, date=time.strftime("%Y-%m-%d %H:%M:%S"))
    out["identity_digest"] = identity_digest(out)
    out["epochs_complete"] = []
    return out


def convert_store(root: str, *, block_bytes: int = BLOCK_BYTES,
                  log: Callable[[str], None] = print) -> dict:
    """Convert the format-1 store at ``root`` to format 2 in place (see the module docstring).

    Returns a summary: per epoch the records kept and the records left to save-logits."""
    root = os.fspath(root)
    path = os.path.join(root, MANIFEST)
    v1 = read_json(path, "store manifest", StoreError)
    if v1.get("format") != FORMAT:
        raise StoreError(f"{path} is not a {FORMAT} manifest")
    if v1.get("format_version") != 1:
        raise StoreError(f"store {root!r} has format version {v1.get('format_version')}: only "
                         "format-1 stores are converted (this one needs nothing)")
    with WriterLock(root, "convert-store"):
        manifest = v2_manifest(v1, block_bytes)
        fmt = v1_record_format(v1)
        n = int(v1["dataset"]["num_samples"])
        layout = EpochLayout(n, fmt.size, block_bytes)
        identity = identity_key(manifest["identity_digest"])
        complete_v1 = set(v1.get("epochs_complete", []))
        epochs = {}
        for epoch in range(int(v1["epochs"])):
            old = os.path.join(root, V1_EPOCH_FILE.format(epoch=epoch))
            new = os.path.join(root, EPOCH_FILE.format(epoch=epoch))
            if not os.path.exists(old):
                if os.path.exists(new):  # converted by an interrupted run: kept as is
                    epochs[epoch] = dict(converted_earlier=True)
                continue
            order = epoch_order_table(n, int(v1["seed"]), epoch).order
            v1_rows = v1_records(old, n, fmt)
            counts = []
            atomic_write(new, lambda f, m=v1_rows, e=epoch, o=order, c=counts: _convert_epoch(
                f, m, e, o, fmt, layout, identity, c))
            del v1_rows  # the format-1 file's map, before the file goes
            os.unlink(old)
            kept = sum(counts)
            epochs[epoch] = dict(records_kept=kept, records_to_compute=n - kept)
            log(f"[convert-store] epoch {epoch}: {kept:,} of {n:,} records kept"
                + (f", {n - kept:,} left for save-logits" if kept < n else ""))
        atomic_write_json(path, manifest)
        store = LogitStore.open(root)
        report, _ = scan_store(store, sorted(complete_v1))
        for e in report.epochs:
            if e.sound:
                store.mark_complete(e.epoch)
        manifest = store.manifest
    return dict(store=root, format_version=manifest["format_version"], epochs=epochs,
                epochs_complete=manifest["epochs_complete"], record_bytes=fmt.size)


def _convert_epoch(f, v1_rows, epoch: int, order: np.ndarray, fmt: RecordFormat,
                   layout: EpochLayout, identity: int, counts: list[int]) -> None:
    """Write one epoch in format 2 block by block (memory stays bounded at ImageNet-21k scale):
    position p takes the format-1 record of sample ``order[p]``, with a new check; records that
    were bad or never written are left zero. Appends the records kept per block to ``counts``."""
    pad = bytes(layout.block_bytes - layout.per_block * layout.record_bytes)
    present = 0 if v1_rows is None else len(v1_rows)
    for block in range(layout.num_blocks):
        start, stop = layout.block_range(block)
        samples = order[start:stop].astype(np.int64)
        rows = np.zeros((stop - start, fmt.size), dtype=np.uint8)
        have = samples < present
        if have.any():
            rows[have] = v1_rows[samples[have]]
        valid = v1_valid(rows, samples, epoch, fmt) & have
        seal(rows, check_starts(identity, epoch, samples), fmt)
        rows[~valid] = 0  # bad stays never-written: save-logits computes it
        f.write(rows.tobytes())
        if block + 1 < layout.num_blocks:
            f.write(pad)
        counts.append(int(valid.sum()))


__all__ = ["V1_EPOCH_FILE", "convert_store", "v1_record_format", "v1_records", "v1_valid",
           "v2_manifest"]
