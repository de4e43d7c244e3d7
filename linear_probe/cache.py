"""On-disk feature cache: memory-mapped, keyed by everything that changes the features, resumable.

Layout (``<cache-dir>`` from ``--cache-dir``, default ``$TINYVIT_CACHE`` or ``./work_dirs/features``)::

    <cache-dir>/<dataset>/<split>/<key[:20]>/
        features.npy   float32 (n, d), NumPy .npy (opened as a read-only memory map)
        labels.npy     int64 (n,), or int8 (n, classes) for multi-label data (1 / 0 / -1)
        meta.json      {"key": sha256, "parts": {...}, "n": .., "dim": .., "classes": [...], ...}

``key`` is the sha256 of the canonical JSON of the key parts — model (arch, weights digest,
init seed, timm version), dataset name and content fingerprint, split, preprocessing, feature
layer, AMP dtype and :data:`EXTRACTOR_VERSION` — so any change gives a new directory and an
entry whose ``meta.json`` does not hold the exact key is never read. An entry becomes visible
only when complete: extraction writes into ``<key[:20]>.partial/`` and renames it. Progress is
checkpointed there (``progress.json``, written after the memory maps are flushed), so an
interrupted ImageNet extraction resumes where it stopped. A ``.lock`` file (``fcntl``)
serialises two processes extracting the same entry.

The dataset fingerprint notices changed image files by their size and modification time
(:mod:`tinyvit_backbone.fingerprint` says why not by their bytes). Only finite features make a
complete entry (``"finite": true`` in ``meta.json``): NaN or Inf rows, from broken weights, are
refused and never marked complete, and an entry written before that rule is checked on load.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyvit_backbone.files import atomic_write_text, dumps_json

from .paths import default_cache_dir

# Bump when the extraction code changes what features come out for the same inputs.
EXTRACTOR_VERSION = 1


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(parts: dict) -> str:
    """sha256 (hex) of the canonical JSON of ``parts`` plus the extractor version."""
    return hashlib.sha256(canonical_json({**parts, "extractor_version": EXTRACTOR_VERSION})
                          .encode()).hexdigest()


def write_json_atomic(path: Path, obj) -> None:
    """Write strict JSON to a temp file in the same folder, fsync, then rename over ``path``."""
    atomic_write_text(path, dumps_json(obj, indent=1, default=str))


class NonFiniteFeaturesError(ValueError):
    """Features with NaN or Inf values (broken weights, an overflowing autocast): never cached
    as complete; the message says which model, how many and what to do."""


def count_non_finite_rows(features: np.ndarray, chunk_rows: int = 65536) -> int:
    """Rows of ``features`` (n, d) holding a NaN or Inf, read in chunks (works on a memmap)."""
    return sum(int((~np.isfinite(features[i:i + chunk_rows])).any(axis=1).sum())
               for i in range(0, len(features), chunk_rows))


@dataclass
class CachedFeatures:
    """A complete cache entry. ``features`` is a read-only memmap (n, d) float32."""

    features: np.ndarray
    labels: np.ndarray
    meta: dict
    path: Path
    hit: bool = True

    @property
    def classes(self) -> list[str] | None:
        return self.meta.get("classes")


def _slug(text: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
    return keep.strip("_")[:80] or "dataset"


class FeatureCache:
    """The cache directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root if root is not None else default_cache_dir())

    def entry_dir(self, parts: dict, key: str) -> Path:
        return self.root / _slug(str(parts.get("dataset", "dataset"))) / _slug(str(parts.get("split", "split"))) / key[:20]

    def load(self, parts: dict) -> CachedFeatures | None:
        """The complete entry for ``parts``, or None (absent, or not exactly this key)."""
        key = cache_key(parts)
        d = self.entry_dir(parts, key)
        try:
            with open(d / "meta.json") as f:
                meta = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if meta.get("key") != key or not meta.get("complete"):
            return None
        try:
            feats = np.load(d / "features.npy", mmap_mode="r")
            labels = np.load(d / "labels.npy")
        except (OSError, ValueError):
            return None
        if feats.shape != (meta["n"], meta["dim"]) or len(labels) != meta["n"]:
            return None
        if not meta.get("finite") and count_non_finite_rows(feats):
            # an entry from before finish() refused NaN / Inf: treat it as absent, so that the
            # extraction runs again and refuses the model with the reason
            return None
        return CachedFeatures(feats, labels, meta, d, hit=True)

    @contextlib.contextmanager
    def lock(self, parts: dict):
        """Exclusive lock on the entry (waits for another process extracting it)."""
        import fcntl
        key = cache_key(parts)
        d = self.entry_dir(parts, key)
        d.parent.mkdir(parents=True, exist_ok=True)
        with open(d.parent / f"{key[:20]}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def writer(self, parts: dict, n: int) -> CacheWriter:
        return CacheWriter(self, parts, n)


class CacheWriter:
    """Fills a ``.partial`` entry row by row; resumes a compatible unfinished one.

    ``done`` rows are already written (0 for a fresh entry). Call :meth:`write` with
    consecutive batches, :meth:`checkpoint` now and then, :meth:`finish` at the end.
    """

    def __init__(self, cache: FeatureCache, parts: dict, n: int):
        self.parts, self.n = parts, n
        self.key = cache_key(parts)
        self.final = cache.entry_dir(parts, self.key)
        self.partial = self.final.with_name(self.final.name + ".partial")
        self.features: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.done = 0
        self._last_checkpoint = time.monotonic()
        progress = self._read_progress()
        if progress is not None:
            self.features = np.load(self.partial / "features.npy", mmap_mode="r+")
            self.labels = np.load(self.partial / "labels.npy", mmap_mode="r+")
            self.done = int(progress["done"])
        else:
            shutil.rmtree(self.partial, ignore_errors=True)
            self.partial.mkdir(parents=True)

    def _read_progress(self) -> dict | None:
        try:
            with open(self.partial / "progress.json") as f:
                progress = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if progress.get("key") != self.key or progress.get("n") != self.n:
            return None
        if not (self.partial / "features.npy").exists() or not (self.partial / "labels.npy").exists():
            return None
        return progress

    def _open(self, dim: int, label_shape: tuple, label_dtype) -> None:
        self.features = np.lib.format.open_memmap(self.partial / "features.npy", mode="w+",
                                                  dtype=np.float32, shape=(self.n, dim))
        self.labels = np.lib.format.open_memmap(self.partial / "labels.npy", mode="w+",
                                                dtype=label_dtype, shape=(self.n, *label_shape))

    def write(self, start: int, features: np.ndarray, labels: np.ndarray) -> None:
        if start != self.done:
            raise RuntimeError(f"cache writer expected row {self.done}, got {start}")
        if self.features is None:
            labels = np.asarray(labels)
            self._open(features.shape[1], labels.shape[1:],
                       np.int8 if labels.ndim > 1 else np.int64)
        stop = start + len(features)
        self.features[start:stop] = features
        self.labels[start:stop] = labels
        self.done = stop
        if time.monotonic() - self._last_checkpoint > 30.0:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Flush the rows written so far, then record how many (a crash resumes from here)."""
        if self.features is None:
            return
        self.features.flush()
        self.labels.flush()
        write_json_atomic(self.partial / "progress.json",
                          {"key": self.key, "n": self.n, "done": self.done})
        self._last_checkpoint = time.monotonic()

    def finish(self, extra_meta: dict) -> CachedFeatures:
        if self.done != self.n:
            raise RuntimeError(f"cache entry incomplete: {self.done} of {self.n} rows")
        self.features.flush()
        self.labels.flush()
        bad = count_non_finite_rows(self.features)
        if bad:  # e.g. rows of a resumed entry that an older version wrote: never complete
            raise NonFiniteFeaturesError(
                f"{bad} of {self.n} feature rows in {self.partial} are NaN or Inf (model "
                f"{canonical_json(self.parts.get('model'))[:200]}): the entry is not marked "
                "complete. The weights are broken: evaluate another checkpoint")
        meta = {"key": self.key, "parts": self.parts, "n": self.n,
                "dim": int(self.features.shape[1]), "complete": True, "finite": True,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra_meta}
        write_json_atomic(self.partial / "meta.json", meta)
        (self.partial / "progress.json").unlink(missing_ok=True)
        del self.features, self.labels
        if self.final.exists():  # a stale or concurrent leftover with this exact key
            shutil.rmtree(self.final)
        os.replace(self.partial, self.final)
        feats = np.load(self.final / "features.npy", mmap_mode="r")
        return CachedFeatures(feats, np.load(self.final / "labels.npy"), meta, self.final, hit=False)
