"""The logit store: sparse teacher outputs on disk, one fixed-size record per (epoch, sample).

Layout of a store folder::

    manifest.json     what wrote the store and which epochs are complete (rewritten atomically)
    epoch_0000.bin    N records of R bytes each; record i belongs to dataset sample i
    epoch_0001.bin    ...

Record (little endian, no padding), ``R = 8 + K * (2 + b)`` bytes with ``b`` = 2 (int16 class
indices, C <= 32767) or 4 (int32)::

    seed     int32       augmentation seed of this sample in this epoch
    indices  int{16,32}  [K] top-K class indices, most probable first
    values   float16     [K] their softmax probabilities
    check    uint32      crc32 of (epoch as int64, sample index as int64, seed, indices, values)

The official format (microsoft/Cream) is the same record minus ``check``: 4 + 4K bytes.

The check is also the "done" mark. Epoch files are preallocated as sparse all-zero files, and a
record counts as written only if its check matches *and* its top-1 probability is positive (so
an all-zero record is never valid, whatever its crc). A resumed writer recomputes exactly the
records that fail — never written, half written when the process was killed, or corrupted since
— and readers refuse them. Records are addressed by sample index, so ranks write disjoint
records of the same file through ``numpy.memmap`` without coordination.
"""
from __future__ import annotations

import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..files import atomic_write, atomic_write_json, read_json
from .errors import StoreError

FORMAT = "tinyvit-distill-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Manifest sections that decide the bytes of a record; a writer or reader must agree on all of
# them. ``epochs`` (planned) and ``epochs_complete`` change as the store grows.
IDENTITY_KEYS = ("format", "format_version", "record", "teacher", "dataset", "augmentation",
                 "seed", "batch_size")
# Informational entries inside identity sections: a moved checkpoint or dataset is still the
# same one when its digest / fingerprint match.
IGNORED_PATHS = {("teacher", "checkpoint"), ("dataset", "root")}


def index_dtype(num_classes: int) -> str:
    """numpy dtype string of the stored class indices: int16 when C <= 32767, else int32."""
    return "<i2" if num_classes <= 32767 else "<i4"


def record_dtype(topk: int, num_classes: int) -> np.dtype:
    """Structured dtype of one record (see the module docstring)."""
    if not 1 <= topk <= num_classes:
        raise StoreError(f"top-K must be in 1..{num_classes} (the number of classes), got {topk}")
    return np.dtype([("seed", "<i4"), ("indices", index_dtype(num_classes), (topk,)),
                     ("values", "<f2", (topk,)), ("check", "<u4")])


def official_record_bytes(topk: int) -> int:
    """Bytes of one record in the official store: int32 seed + K int16 + K float16."""
    return 4 + 4 * topk


def record_check(epoch: int, index: int, payload: bytes | memoryview | np.ndarray) -> int:
    """crc32 binding a record's payload (all bytes but ``check``) to its epoch and sample."""
    return zlib.crc32(payload, zlib.crc32(struct.pack("<qq", epoch, index)))


def describe_record_layout(topk: int, num_classes: int) -> dict:
    dtype = record_dtype(topk, num_classes)
    return dict(topk=topk, num_classes=num_classes, bytes=dtype.itemsize,
                seed="<i4", indices=index_dtype(num_classes), values="<f2", check="<u4",
                check_covers="crc32(epoch <i8, index <i8, seed, indices, values)")


@dataclass(frozen=True)
class Record:
    """One stored sample: the augmentation seed and the teacher's top-K (indices, probabilities)."""

    seed: int
    indices: np.ndarray  # (K,) int64
    values: np.ndarray  # (K,) float32 (exact copies of the stored float16)


def manifest_differences(stored: dict, requested: dict, prefix: tuple = ()) -> list[str]:
    """Human-readable differences between two manifests' identity sections."""
    diffs: list[str] = []
    keys = IDENTITY_KEYS if not prefix else sorted(set(stored) | set(requested))
    for key in keys:
        path = (*prefix, key)
        if path in IGNORED_PATHS:
            continue
        a, b = stored.get(key, "<absent>"), requested.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += manifest_differences(a, b, path)
        elif _normalise(a) != _normalise(b):
            diffs.append(f"{'.'.join(path)}: store has {a!r}, this run has {b!r}")
    return diffs


def _normalise(value: Any) -> Any:
    # JSON turns tuples into lists and may print floats differently; compare canonically.
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, float):
        return round(value, 12)
    return value


class LogitStore:
    """A store folder: manifest plus per-epoch memory-mapped record files.

    Open an existing store with :meth:`open`; start or continue writing one with :meth:`create`.
    Instances pickle without their open maps, so DataLoader workers reopen them lazily.
    """

    def __init__(self, root: str | os.PathLike, manifest: dict):
        self.root = os.fspath(root)
        self.manifest = manifest
        rec = manifest["record"]
        self.topk = int(rec["topk"])
        self.num_classes = int(rec["num_classes"])
        self.num_samples = int(manifest["dataset"]["num_samples"])
        self.dtype = record_dtype(self.topk, self.num_classes)
        if self.dtype.itemsize != int(rec["bytes"]):
            raise StoreError(f"{self.manifest_path}: record.bytes is {rec['bytes']} but K="
                             f"{self.topk}, C={self.num_classes} give {self.dtype.itemsize}; the "
                             "manifest was edited or damaged — rewrite the store")
        self._size = self.dtype.itemsize
        self._index_dtype = self.dtype["indices"].base
        self._values_at = 4 + self.topk * self._index_dtype.itemsize
        # (epoch, writable) -> structured memmap; (epoch, None) -> read-only mmap of the bytes
        self._maps: dict[tuple[int, bool | None], Any] = {}

    # ------------------------------------------------------------------ opening
    @property
    def manifest_path(self) -> str:
        return os.path.join(self.root, MANIFEST)

    @classmethod
    def open(cls, root: str | os.PathLike) -> LogitStore:
        """Open an existing store, checking its format."""
        root = os.fspath(root)
        path = os.path.join(root, MANIFEST)
        if not os.path.isdir(root):
            raise StoreError(f"logit store {root!r} does not exist: write it first with "
                             "`python -m tinyvit_backbone.distill save-logits --out ...`")
        manifest = read_json(path, "store manifest", StoreError)
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{path} is not a {FORMAT} manifest (format={manifest.get('format')!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path} has format version {manifest.get('format_version')}, this "
                             f"code reads version {FORMAT_VERSION}: rewrite the store with this "
                             "version of save-logits")
        return cls(root, manifest)

    @classmethod
    def create(cls, root: str | os.PathLike, manifest: dict, *, writer: bool = True) -> LogitStore:
        """Start a store with ``manifest``, or continue one whose identity matches it.

        Only one process (``writer=True``, rank 0) may write the manifest; the others call this
        with ``writer=False`` after a barrier and only check it. Raises :class:`StoreError`
        listing the differences when an existing store was written with other settings.
        """
        root = os.fspath(root)
        path = os.path.join(root, MANIFEST)
        if os.path.exists(path):
            store = cls.open(root)
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
        if os.path.isdir(root) and any(name.startswith("epoch_") for name in os.listdir(root)):
            raise StoreError(f"{root!r} holds epoch files but no manifest: it is not a store "
                             "this tool can resume; delete the folder or pick another --out")
        manifest = dict(manifest, epochs_complete=[])
        os.makedirs(root, exist_ok=True)
        atomic_write_json(path, manifest)
        return cls(root, manifest)

    def _save_manifest(self) -> None:
        atomic_write_json(self.manifest_path, self.manifest)

    def reload_manifest(self) -> None:
        self.manifest = read_json(self.manifest_path, "store manifest", StoreError)

    # ------------------------------------------------------------------ epochs
    @property
    def epochs_complete(self) -> list[int]:
        return sorted(int(e) for e in self.manifest.get("epochs_complete", []))

    def epoch_path(self, epoch: int) -> str:
        return os.path.join(self.root, f"epoch_{epoch:04d}.bin")

    @property
    def epoch_bytes(self) -> int:
        return self.num_samples * self.dtype.itemsize

    def allocate_epoch(self, epoch: int) -> None:
        """Create the epoch's file as a sparse all-zero file (atomically), if missing."""
        path = self.epoch_path(epoch)
        if os.path.exists(path):
            self._check_size(epoch)
            return
        atomic_write(path, lambda f: f.truncate(self.epoch_bytes))

    def _check_size(self, epoch: int) -> None:
        path = self.epoch_path(epoch)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            raise StoreError(f"{path} missing: epoch {epoch} was never written to store "
                             f"{self.root!r} (complete epochs: {self.epochs_complete}); run "
                             "save-logits with --epochs covering it") from None
        if size != self.epoch_bytes:
            raise StoreError(
                f"{path} has {size} bytes, expected {self.epoch_bytes} ({self.num_samples} "
                f"records x {self.dtype.itemsize} bytes): the file is truncated or from another "
                "store; delete it and rerun save-logits with the same arguments to rewrite it")

    def records(self, epoch: int, writable: bool = False) -> np.memmap:
        """The epoch's records as a structured memmap (N,), opened once per process."""
        key = (epoch, writable)
        if key not in self._maps:
            self._check_size(epoch)
            self._maps[key] = np.memmap(self.epoch_path(epoch), dtype=self.dtype,
                                        mode="r+" if writable else "r", shape=(self.num_samples,))
        return self._maps[key]

    def require_epoch(self, epoch: int) -> None:
        """Raise unless ``epoch`` was completely written."""
        if epoch not in self.epochs_complete:
            raise StoreError(
                f"epoch {epoch} is not complete in store {self.root!r} (complete epochs: "
                f"{self.epochs_complete or 'none'}); write it with save-logits --epochs "
                f"{epoch + 1} (resumes the store), or train for fewer epochs")

    def mark_complete(self, epoch: int) -> None:
        """Record ``epoch`` as complete in the manifest (one writer only)."""
        self.reload_manifest()
        done = set(self.manifest.get("epochs_complete", [])) | {epoch}
        self.manifest["epochs_complete"] = sorted(done)
        self._save_manifest()

    # ------------------------------------------------------------------ records
    def valid_mask(self, epoch: int, indices: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask: which records (all, or those at ``indices``) hold a valid record."""
        if not os.path.exists(self.epoch_path(epoch)):
            n = self.num_samples if indices is None else len(indices)
            return np.zeros(n, dtype=bool)
        recs = self.records(epoch)
        raw = recs.view(np.uint8).reshape(self.num_samples, self.dtype.itemsize)
        idx = np.arange(self.num_samples) if indices is None else np.asarray(indices)
        body = self.dtype.itemsize - 4
        checks = recs["check"]
        ok = np.empty(len(idx), dtype=bool)
        for j, i in enumerate(idx.tolist()):
            ok[j] = record_check(epoch, i, raw[i, :body]) == int(checks[i])
        # An all-zero record is never valid: the top-1 probability of any softmax is > 0.
        ok &= recs["values"][idx, 0] > 0
        return ok

    def write(self, epoch: int, indices: np.ndarray, seeds: np.ndarray,
              topk_indices: np.ndarray, topk_values: np.ndarray) -> None:
        """Write the records of samples ``indices`` (B,) with seeds (B,) and top-K (B, K)."""
        recs = np.zeros(len(indices), dtype=self.dtype)
        recs["seed"] = seeds
        recs["indices"] = topk_indices
        recs["values"] = topk_values
        raw = recs.view(np.uint8).reshape(len(indices), self.dtype.itemsize)
        body = self.dtype.itemsize - 4
        for j, i in enumerate(np.asarray(indices).tolist()):
            recs["check"][j] = record_check(epoch, i, raw[j, :body])
        self.records(epoch, writable=True)[np.asarray(indices)] = recs

    def flush(self) -> None:
        for (_, writable), mm in self._maps.items():
            if writable:
                mm.flush()

    def _raw(self, epoch: int) -> mmap.mmap:
        """The epoch file as a read-only ``mmap`` (byte slicing is the cheapest random read)."""
        key = (epoch, None)
        if key not in self._maps:
            self._check_size(epoch)
            with open(self.epoch_path(epoch), "rb") as f:
                self._maps[key] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[key]

    def read(self, epoch: int, index: int) -> Record:
        """The record of sample ``index`` in ``epoch``, refusing one that fails its check."""
        if not 0 <= index < self.num_samples:
            raise StoreError(f"sample index {index} is outside store {self.root!r} "
                             f"({self.num_samples} samples)")
        size, k = self._size, self.topk
        mm = self._maps.get((epoch, None)) or self._raw(epoch)
        raw = mm[index * size: (index + 1) * size]
        values = np.frombuffer(raw, "<f2", k, self._values_at)
        if (record_check(epoch, index, raw[:-4]) != int.from_bytes(raw[-4:], "little")
                or not values[0] > 0):
            raise StoreError(
                f"record {index} of epoch {epoch} in {self.epoch_path(epoch)} fails its check: "
                "the store is corrupted or was not finished; rerun save-logits with the same "
                "arguments (it rewrites exactly the bad records), then retry")
        return Record(seed=int.from_bytes(raw[:4], "little", signed=True),
                      indices=np.frombuffer(raw, self._index_dtype, k, 4).astype(np.int64),
                      values=values.astype(np.float32))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def close(self) -> None:
        self.flush()
        for (_, writable), mm in self._maps.items():
            if writable is None:
                mm.close()
        self._maps.clear()


__all__ = ["FORMAT_VERSION", "LogitStore", "Record", "describe_record_layout", "index_dtype",
           "manifest_differences", "official_record_bytes", "record_check", "record_dtype"]
