"""The logit store: sparse teacher outputs on disk, one fixed-size record per (epoch, sample).

Layout of a store folder (format 2)::

    manifest.json         what wrote the store and which epochs are complete (rewritten atomically)
    epoch_0000.records    the epoch's records in its sample order, in aligned blocks (:mod:`.layout`)
    epoch_0001.records    ...
    .writer.lock          held (flock) by the one save-logits job writing the store (:mod:`.lock`)

Records are :mod:`.record`'s: seed, top-K indices and probabilities (fp16 or log8) and a crc32
check bound to the store identity (:mod:`.manifest`), epoch and sample, so a record written under
other settings never passes as valid.

Files are written with ``pwrite`` (never through a shared memory map) and grow as records
arrive: a record beyond the end of a file is simply not written yet. A missing, short (killed or
truncated) or damaged file therefore costs exactly its bad records, which the next save-logits run
rewrites. Readers use ``pread`` of whole runs: a training batch is one run.

Format 1 (records by sample index in ``epoch_0000.bin``, written through a memory map) is
converted in place by ``python -m tinyvit_backbone.distill convert-store`` (:mod:`.legacy`).
"""
from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass

import numpy as np

from ..files import atomic_write_json
from .errors import StoreError
from .layout import EpochLayout, EpochOrder, epoch_order_table
from .manifest import (
    EPOCH_FILE,
    FORMAT_VERSION,
    MANIFEST,
    identity_digest,
    load_manifest,
    manifest_differences,
)
from .record import RecordFormat, check_starts, identity_key, seal, valid_rows

# Errors that mean the file system refused more bytes: reported as "disk full", resumable.
NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@dataclass(frozen=True)
class Record:
    """One stored sample: the augmentation seed and the teacher's top-K (indices, probabilities)."""

    seed: int
    indices: np.ndarray  # (K,) int64
    values: np.ndarray  # (K,) float32


@dataclass(frozen=True)
class RecordBatch:
    """Decoded records of n samples; ``ok[j]`` says whether record j passed its check (the
    other fields of a bad record are garbage)."""

    seeds: np.ndarray  # (n,) int64
    indices: np.ndarray  # (n, K) int64
    values: np.ndarray  # (n, K) float32
    ok: np.ndarray  # (n,) bool


def _format_version(path: str):
    try:
        with open(path) as f:
            return json.load(f).get("format_version")
    except (OSError, ValueError, AttributeError):
        return None


class LogitStore:
    """A store folder: manifest plus per-epoch record files.

    Open an existing store with :meth:`open`; start or continue writing one with :meth:`create`.
    Instances pickle without their open files, so DataLoader workers reopen them lazily.
    """

    def __init__(self, root: str | os.PathLike, manifest: dict):
        self.root = os.fspath(root)
        self.manifest = manifest
        try:
            self.record = RecordFormat.from_manifest(manifest["record"])
            self.num_samples = int(manifest["dataset"]["num_samples"])
            self.layout = EpochLayout(self.num_samples, self.record.size,
                                      int(manifest["layout"]["block_bytes"]))
        except (KeyError, TypeError, ValueError) as err:
            raise StoreError(f"{self.manifest_path}: bad record or layout section ({err}); the "
                             "manifest was edited or damaged") from None
        self.topk, self.num_classes = self.record.topk, self.record.num_classes
        self.base_seed = int(manifest["seed"])
        self.identity = identity_key(manifest["identity_digest"])
        self._read_fds: dict[int, int] = {}
        self._write_fds: dict[int, int] = {}
        # read-ahead window of the per-sample reader: (epoch, start, stop, RecordBatch, the
        # epoch's position table, seeds and validity as lists)
        self._window: tuple | None = None
        self._next = (-1, -1)
        self._span = 1

    # ------------------------------------------------------------------ opening
    @property
    def manifest_path(self) -> str:
        return os.path.join(self.root, MANIFEST)

    @classmethod
    def open(cls, root: str | os.PathLike) -> LogitStore:
        """Open an existing store, checking its manifest."""
        root = os.fspath(root)
        return cls(root, load_manifest(root))

    @classmethod
    def create(cls, root: str | os.PathLike, manifest: dict, *, writer: bool = True,
               rebuild_manifest: bool = False) -> LogitStore:
        """Start a store with ``manifest``, or continue one whose identity matches it.

        Only one process (``writer=True``, rank 0, holding the writer lock) may write the
        manifest; the others call this with ``writer=False`` after a barrier and only check it.
        Raises :class:`StoreError` listing the differences when an existing store was written
        with other settings. ``rebuild_manifest`` replaces a damaged (or lost) manifest by this
        one; a sound manifest is kept and checked as always.
        """
        root = os.fspath(root)
        path = os.path.join(root, MANIFEST)
        manifest = dict(manifest, identity_digest=identity_digest(manifest))
        store = None
        if os.path.exists(path):
            try:
                store = cls.open(root)
            except StoreError:
                # Only a damaged manifest is rebuilt: never a sound one, nor a format-1 store's.
                if not (writer and rebuild_manifest) or _format_version(path) == 1:
                    raise
        if store is not None:
            diffs = manifest_differences(store.manifest, manifest)
            if diffs:
                raise StoreError(f"logit store {root!r} was written with other settings:\n  "
                                 + "\n  ".join(diffs) + "\nrerun with the store's settings to "
                                 "resume it, or pass another --out to start a new store")
            if writer and manifest["epochs"] > store.manifest["epochs"]:
                store.manifest["epochs"] = manifest["epochs"]
                store._save_manifest()
            return store
        if not writer:
            raise StoreError(f"{path} missing: rank 0 must create the store first")
        if (os.path.isdir(root) and not rebuild_manifest
                and any(name.startswith("epoch_") for name in os.listdir(root))):
            raise StoreError(f"{root!r} holds epoch files but no manifest: rerun the command "
                             "that wrote them with --rebuild-manifest to keep the records that "
                             "match it, or pick another --out")
        manifest = dict(manifest, epochs_complete=[])
        os.makedirs(root, exist_ok=True)
        atomic_write_json(path, manifest)
        return cls(root, manifest)

    def _save_manifest(self) -> None:
        atomic_write_json(self.manifest_path, self.manifest)

    def reload_manifest(self) -> None:
        self.manifest = load_manifest(self.root)

    # ------------------------------------------------------------------ epochs
    @property
    def epochs(self) -> int:
        """Planned epochs (the largest --epochs any save-logits run asked for)."""
        return int(self.manifest["epochs"])

    @property
    def epochs_complete(self) -> list[int]:
        return sorted(int(e) for e in self.manifest.get("epochs_complete", []))

    def epoch_path(self, epoch: int) -> str:
        return os.path.join(self.root, EPOCH_FILE.format(epoch=epoch))

    def file_size(self, epoch: int) -> int | None:
        """Bytes of the epoch's file, None if it does not exist."""
        try:
            return os.path.getsize(self.epoch_path(epoch))
        except FileNotFoundError:
            return None

    def order(self, epoch: int) -> EpochOrder:
        return epoch_order_table(self.num_samples, self.base_seed, epoch)

    def mark_complete(self, epoch: int, complete: bool = True) -> None:
        """Record ``epoch`` as complete (or not) in the manifest (the writer only)."""
        self.reload_manifest()
        done = set(self.manifest.get("epochs_complete", []))
        done = done | {epoch} if complete else done - {epoch}
        self.manifest["epochs_complete"] = sorted(done)
        self._save_manifest()

    # ------------------------------------------------------------------ reading
    def _read_fd(self, epoch: int) -> int | None:
        fd = self._read_fds.get(epoch)
        if fd is None:
            if len(self._read_fds) >= 4:  # a scan of 90 epochs must not hold 90 files open
                for old in self._read_fds.values():
                    os.close(old)
                self._read_fds.clear()
                self._window = None
            try:
                fd = os.open(self.epoch_path(epoch), os.O_RDONLY)
            except FileNotFoundError:
                return None
            self._read_fds[epoch] = fd
        return fd

    def read_rows(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Raw records (n, R) uint8 of positions [start, stop); bytes beyond the end of the
        file (or of a missing file) read as zeros, i.e. as never-written records."""
        size = self.record.size
        rows = np.zeros((stop - start, size), dtype=np.uint8)
        fd = self._read_fd(epoch)
        if fd is None:
            return rows
        for a, b in self.layout.block_runs(start, stop):
            offset, length = self.layout.byte_range(a, b)
            data = os.pread(fd, length, offset)
            got = len(data) // size
            if got:
                rows[a - start:a - start + got] = np.frombuffer(
                    data, np.uint8, got * size).reshape(got, size)
        return rows

    def check_run(self, epoch: int, start: int, stop: int, rows: np.ndarray | None = None,
                  samples: np.ndarray | None = None) -> np.ndarray:
        """Which records (n,) of positions [start, stop) are valid; ``samples`` are the sample
        indices at those positions when the caller knows them (else the epoch's order)."""
        rows = self.read_rows(epoch, start, stop) if rows is None else rows
        samples = self.order(epoch).order[start:stop] if samples is None else samples
        return valid_rows(rows, check_starts(self.identity, epoch, samples), self.record)

    def read_run(self, epoch: int, start: int, stop: int,
                 samples: np.ndarray | None = None) -> RecordBatch:
        """Decoded records of positions [start, stop), with their validity."""
        rows = self.read_rows(epoch, start, stop)
        ok = self.check_run(epoch, start, stop, rows, samples)
        seeds, indices, values = self.record.decode(rows)
        return RecordBatch(seeds, indices, values, ok)

    def read_many(self, epoch: int, indices, positions=None) -> RecordBatch:
        """Records of samples ``indices`` (in that order), read as few sequential runs as the
        positions allow (a training batch is one run).

        ``positions`` (the samples' places in the epoch's order, as a batch sampler built from
        the order knows them) spares this process the epoch's order table (~100 MB for 13M
        samples); a wrong position reads another sample's record, which fails its check."""
        indices = np.asarray(indices, dtype=np.int64)
        self._check_indices(indices)
        if positions is None:
            positions = self.order(epoch).position[indices]
        unique, first, back = np.unique(np.asarray(positions, dtype=np.int64),
                                        return_index=True, return_inverse=True)
        runs = self.layout.runs(unique)
        if not runs:
            k = self.topk
            return RecordBatch(np.zeros(0, np.int64), np.zeros((0, k), np.int64),
                               np.zeros((0, k), np.float32), np.zeros(0, bool))
        samples = indices[first]  # the sample at each unique position, in position order
        parts, j = [], 0
        for a, b in runs:
            parts.append(self.read_run(epoch, a, b, samples[j:j + b - a]))
            j += b - a
        joined = [np.concatenate([getattr(p, f) for p in parts]) for f in RecordBatch.__annotations__]
        return RecordBatch(*(arr[back] for arr in joined))

    def read(self, epoch: int, index: int) -> Record:
        """The record of sample ``index`` in ``epoch``, refusing one that fails its check.

        Reads ahead when called in the epoch's order (as a training DataLoader does), so
        sequential per-sample reads cost one ``pread`` per window, not per record."""
        record, ok = self.read_record(epoch, index)
        if not ok:
            raise StoreError(self.bad_record_message(epoch, index))
        return record

    def read_record(self, epoch: int, index: int) -> tuple[Record, bool]:
        """:meth:`read` without the refusal: the record and whether it passed its check."""
        if not 0 <= index < self.num_samples:
            self._check_indices(np.asarray([index]))
        win = self._window
        if win is None or win[0] != epoch:
            pos = int(self.order(epoch).position[index])
        else:
            pos = int(win[4][index])
        if win is None or win[0] != epoch or not win[1] <= pos < win[2]:
            self._span = min(2 * self._span, 512) if self._next == (epoch, pos) else 1
            stop = min(pos + self._span, self.layout.block_range(pos // self.layout.per_block)[1])
            batch = self.read_run(epoch, pos, stop)
            win = self._window = (epoch, pos, stop, batch, self.order(epoch).position,
                                  batch.seeds.tolist(), batch.ok.tolist())
        self._next = (epoch, pos + 1)
        j = pos - win[1]
        batch = win[3]
        return Record(seed=win[5][j], indices=batch.indices[j], values=batch.values[j]), win[6][j]

    def bad_record_message(self, epoch: int, index: int) -> str:
        from .integrity import repair_command

        return (f"record {index} of epoch {epoch} in {self.epoch_path(epoch)} fails its check: "
                "the store is damaged or was not finished; rerun save-logits with the same "
                f"arguments (it rewrites exactly the bad records): {repair_command(self)}")

    def _check_indices(self, indices: np.ndarray) -> None:
        if len(indices) and (indices.min() < 0 or indices.max() >= self.num_samples):
            bad = indices[(indices < 0) | (indices >= self.num_samples)][0]
            raise StoreError(f"sample index {bad} is outside store {self.root!r} "
                             f"({self.num_samples} samples)")

    # ------------------------------------------------------------------ writing
    def _write_fd(self, epoch: int) -> int:
        fd = self._write_fds.get(epoch)
        if fd is None:
            fd = os.open(self.epoch_path(epoch), os.O_RDWR | os.O_CREAT, 0o666)
            self._write_fds[epoch] = fd
        return fd

    def _pwrite(self, fd: int, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset`` (the one place bytes reach an epoch file)."""
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written

    def write(self, epoch: int, indices, seeds, topk_indices, topk_values) -> int:
        """Write the records of samples ``indices`` (B,) with seeds (B,) and top-K indices /
        probabilities (B, K) (sorted, decreasing); returns the bytes written.

        A full file system (ENOSPC, EDQUOT, or EFBIG past a file-size limit) raises
        :class:`StoreError`; records cut short fail their check and are rewritten on resume."""
        indices = np.asarray(indices, dtype=np.int64)
        self._check_indices(indices)
        positions = self.order(epoch).position[indices].astype(np.int64)
        sort = np.argsort(positions, kind="stable")
        positions = positions[sort]
        if len(positions) > 1 and (np.diff(positions) == 0).any():
            raise StoreError(f"the same sample is written twice in one call (epoch {epoch})")
        rows = self.record.encode(np.asarray(seeds)[sort], np.asarray(topk_indices)[sort],
                                  np.asarray(topk_values)[sort])
        seal(rows, check_starts(self.identity, epoch, indices[sort]), self.record)
        fd, total, j = self._write_fd(epoch), 0, 0
        try:
            for a, b in self.layout.runs(positions):
                offset, _ = self.layout.byte_range(a, b)
                self._pwrite(fd, rows[j:j + b - a].tobytes(), offset)
                j += b - a
                total += (b - a) * self.record.size
        except OSError as err:
            if err.errno in NO_SPACE:
                raise StoreError(self.disk_full_message(epoch, err)) from None
            raise
        return total

    def disk_full_message(self, epoch: int, err: OSError) -> str:
        return (f"the file system refused more bytes for {self.epoch_path(epoch)} ({err.strerror}"
                "): the disk (or quota, or file-size limit) is full. Every record carries its own "
                "check, so nothing half-written counts as done: free space and rerun save-logits "
                "with the same arguments to continue where it stopped")

    def truncate_to_size(self, epoch: int) -> bool:
        """Cut an epoch file that is longer than a complete one (its tail holds no record);
        returns whether it was cut. Call it from one process, while no one writes."""
        size, full = self.file_size(epoch), self.layout.file_bytes
        if size is None or size <= full:
            return False
        os.truncate(self.epoch_path(epoch), full)
        return True

    def sync(self) -> None:
        """Flush the written epoch files to stable storage and close them."""
        for fd in self._write_fds.values():
            os.fsync(fd)
            os.close(fd)
        self._write_fds.clear()

    def close(self) -> None:
        for fds in (self._write_fds, self._read_fds):
            for fd in fds.values():
                os.close(fd)
            fds.clear()
        self._window = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_read_fds={}, _write_fds={}, _window=None)
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the OS closes the files
            pass


__all__ = ["FORMAT_VERSION", "LogitStore", "Record", "RecordBatch"]
