"""One record of the logit store: a sample's seed and the teacher's top-K, in a fixed size.

Every record of a store has the same size ``R`` and layout (little endian, no padding)::

    seed     <i4     augmentation seed of this sample in this epoch
    indices          top-K class indices, most probable first
    values           their probabilities (see the value formats)
    check    <u4     crc32 of all the bytes above, started from a value bound to the record's
                     store identity, epoch and sample (see :func:`check_starts`)

Value formats (``--value-format``):

* ``fp16`` (default) — the official record plus the check: indices int16 (int32 past 32,767
  classes), values float16. ``R = 8 + K * (2 + 2)``: 408 bytes at K = 100 (official: 404).
* ``log8`` — indices bit-packed at ``ceil(log2 C)`` bits each (15 for ImageNet-21k's 21,841
  classes), the top-1 probability as float16 (most of the mass, kept as precise as fp16), and
  the other ``K - 1`` as one byte each on a log scale fitted to the record: ``span`` (float16) is
  ``ln(p_1 / p_min)`` over the record's positive values, and code ``c`` in 0..254 stands for
  ``p_1 * exp(-c * span / 254)``, code 255 for an exact 0. The relative error of a value is at
  most ``span / 508`` (about 2% for a span of 10 nats, which K = 100 of 21,841 classes typically
  has); the soft label's rebuilt rest mass absorbs it. ``R = 4 + ceil(K b / 8) + 4 + (K - 1) + 4``:
  299 bytes at K = 100, C = 21,841 (74% of the official 404), 34 at K = 10, C = 1000 (77% of 44).

The check doubles as the "done" mark: a record counts as written only if its check matches and
its top-1 probability is positive, so an all-zero (never written) record is never valid. Binding
the check's start value to the store identity, epoch and sample index means a record copied from
another store, epoch or place fails too.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import StoreError

VALUE_FORMATS = ("fp16", "log8")
DEFAULT_VALUE_FORMAT = "fp16"
SEED_BYTES = CHECK_BYTES = 4
LOG8_ZERO = 255  # the code of an exact 0 probability
LOG8_STEPS = 254  # codes 0..254 span [p_min, p_1] on a log scale


def official_record_bytes(topk: int) -> int:
    """Bytes of one record in the official store: int32 seed + K int16 + K float16."""
    return 4 + 4 * topk


def index_bits(num_classes: int) -> int:
    """Bits that hold a class index in 0..C-1 (at least 1)."""
    return max(1, math.ceil(math.log2(num_classes)))


@dataclass(frozen=True)
class RecordFormat:
    """The byte layout of one record for K, C and a value format (see the module docstring)."""

    topk: int
    num_classes: int
    values: str = DEFAULT_VALUE_FORMAT

    def __post_init__(self):
        if not 1 <= self.topk <= self.num_classes:
            raise StoreError(f"top-K must be in 1..{self.num_classes} (the number of classes), "
                             f"got {self.topk}")
        if self.values not in VALUE_FORMATS:
            raise StoreError(f"value format must be one of {VALUE_FORMATS}, got {self.values!r}")
        if self.values == "log8" and index_bits(self.num_classes) > 24:
            raise StoreError(f"value format log8 packs class indices in at most 24 bits; "
                             f"{self.num_classes} classes need more: use --value-format fp16")

    # ------------------------------------------------------------------ sizes and offsets
    @property
    def index_dtype(self) -> np.dtype:
        """fp16 format: int16 indices when C <= 32767, else int32."""
        return np.dtype("<i2" if self.num_classes <= 32767 else "<i4")

    @property
    def index_bytes(self) -> int:
        if self.values == "fp16":
            return self.topk * self.index_dtype.itemsize
        return math.ceil(self.topk * index_bits(self.num_classes) / 8)

    @property
    def value_bytes(self) -> int:
        return 2 * self.topk if self.values == "fp16" else 2 + 2 + (self.topk - 1)

    @property
    def size(self) -> int:
        """Bytes of one record, check included."""
        return SEED_BYTES + self.index_bytes + self.value_bytes + CHECK_BYTES

    @property
    def body(self) -> int:
        """Bytes covered by the check (all but the check)."""
        return self.size - CHECK_BYTES

    @property
    def top1_offset(self) -> int:
        """Byte offset of the float16 top-1 probability (both formats store it as float16)."""
        return SEED_BYTES + self.index_bytes

    def describe(self) -> dict:
        """The manifest's ``record`` section."""
        if self.values == "fp16":
            fields = dict(seed="<i4", indices=f"{self.index_dtype.str}[{self.topk}]",
                          values=f"<f2[{self.topk}]", check="<u4")
        else:
            fields = dict(seed="<i4", indices=f"{index_bits(self.num_classes)}-bit packed "
                          f"[{self.topk}] ({self.index_bytes} bytes)", top1="<f2", span="<f2",
                          codes=f"u1[{self.topk - 1}]", check="<u4")
        return dict(topk=self.topk, num_classes=self.num_classes, values=self.values,
                    bytes=self.size, fields=fields,
                    check="crc32 of the other bytes, started from a value bound to the store "
                          "identity, epoch and sample index")

    @classmethod
    def from_manifest(cls, record: dict) -> RecordFormat:
        fmt = cls(int(record["topk"]), int(record["num_classes"]),
                  record.get("values", DEFAULT_VALUE_FORMAT))
        if fmt.size != int(record["bytes"]):
            raise StoreError(f"record.bytes is {record['bytes']} but K={fmt.topk}, "
                             f"C={fmt.num_classes}, values {fmt.values} give {fmt.size}: the "
                             "manifest was edited or damaged")
        return fmt

    # ------------------------------------------------------------------ encode / decode
    def encode(self, seeds: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Records (n, R) uint8 with the check left 0, from seeds (n,), top-K indices (n, K)
        and probabilities (n, K) sorted in decreasing order (float32 or float16)."""
        seeds, indices = np.asarray(seeds), np.asarray(indices)
        values = np.asarray(values, dtype=np.float32)
        n, k = len(seeds), self.topk
        if indices.shape != (n, k) or values.shape != (n, k):
            raise StoreError(f"expected top-{k} indices and values of shape ({n}, {k}), got "
                             f"{indices.shape} and {values.shape}")
        rows = np.zeros((n, self.size), dtype=np.uint8)
        rows[:, :4] = np.asarray(seeds, dtype="<i4").reshape(n, 1).view(np.uint8)
        at = SEED_BYTES
        if self.values == "fp16":
            rows[:, at:at + self.index_bytes] = indices.astype(self.index_dtype).view(np.uint8)
            at += self.index_bytes
            rows[:, at:at + 2 * k] = values.astype("<f2").view(np.uint8)
            return rows
        rows[:, at:at + self.index_bytes] = pack_indices(indices, index_bits(self.num_classes))
        at += self.index_bytes
        top1, span, codes = log8_encode(values)
        rows[:, at:at + 2] = top1.reshape(n, 1).view(np.uint8)
        rows[:, at + 2:at + 4] = span.reshape(n, 1).view(np.uint8)
        rows[:, at + 4:at + 4 + k - 1] = codes
        return rows

    def decode(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Records (n, R) uint8 -> seeds (n,) int64, indices (n, K) int64, values (n, K)
        float32 (for fp16, exact copies of the stored float16)."""
        n, k = len(rows), self.topk
        seeds = np.ascontiguousarray(rows[:, :4]).view("<i4").reshape(n).astype(np.int64)
        at = SEED_BYTES
        raw_idx = np.ascontiguousarray(rows[:, at:at + self.index_bytes])
        at += self.index_bytes
        if self.values == "fp16":
            indices = raw_idx.view(self.index_dtype).reshape(n, k).astype(np.int64)
            values = np.ascontiguousarray(rows[:, at:at + 2 * k]).view("<f2").astype(np.float32)
            return seeds, indices, values.reshape(n, k)
        indices = unpack_indices(raw_idx, k, index_bits(self.num_classes))
        top1 = np.ascontiguousarray(rows[:, at:at + 2]).view("<f2").reshape(n)
        span = np.ascontiguousarray(rows[:, at + 2:at + 4]).view("<f2").reshape(n)
        return seeds, indices, log8_decode(top1, span, rows[:, at + 4:at + 4 + k - 1])

    def roundtrip(self, values: np.ndarray) -> np.ndarray:
        """What the store gives back for these probabilities (n, K): float32."""
        values = np.asarray(values, dtype=np.float32)
        if self.values == "fp16":
            return values.astype(np.float16).astype(np.float32)
        return log8_decode(*log8_encode(values))

    def top1(self, rows: np.ndarray) -> np.ndarray:
        """The stored top-1 probabilities (n,) float32 (0 for a never-written record)."""
        at = self.top1_offset
        return np.ascontiguousarray(rows[:, at:at + 2]).view("<f2").reshape(len(rows)).astype(
            np.float32)


# ---------------------------------------------------------------------- index packing
def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """Class indices (n, K) -> (n, ceil(K * bits / 8)) bytes, ``bits`` per index, LSB first."""
    n, k = indices.shape
    start = np.arange(k) * bits
    first, shift = start // 8, (start % 8).astype(np.uint32)
    words = np.asarray(indices, dtype=np.uint32) << shift  # < 2**32 while bits <= 25
    out = np.zeros((n, math.ceil(k * bits / 8) + 4), dtype=np.uint32)
    # Indices g = ceil(32 / bits) apart never share a byte, so each group ORs into distinct
    # columns and one fancy-indexed update per byte lane is exact.
    group = math.ceil(32 / bits)
    for g in range(group):
        cols, w = first[g::group], words[:, g::group]
        for lane in range(4):
            out[:, cols + lane] |= (w >> np.uint32(8 * lane)) & np.uint32(0xFF)
    return out[:, :-4].astype(np.uint8)


def unpack_indices(packed: np.ndarray, topk: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: (n, bytes) -> (n, K) int64."""
    n = len(packed)
    # Index k starts at bit k * bits: gather the (up to) 4 bytes holding it as one word.
    start = np.arange(topk) * bits
    first, shift = start // 8, (start % 8).astype(np.uint32)
    padded = np.zeros((n, packed.shape[1] + 4), dtype=np.uint32)
    padded[:, :packed.shape[1]] = packed
    word = (padded[:, first] | padded[:, first + 1] << 8 | padded[:, first + 2] << 16
            | padded[:, first + 3] << 24)
    return ((word >> shift) & np.uint32((1 << bits) - 1)).astype(np.int64)


# ---------------------------------------------------------------------- log8 values
def log8_encode(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted probabilities (n, K) -> top-1 (n,) float16, span (n,) float16, codes (n, K-1)."""
    values = np.asarray(values, dtype=np.float64)
    top1 = values[:, 0].astype("<f2")
    p1 = top1.astype(np.float64)
    rest = values[:, 1:]
    positive = rest > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        smallest = np.where(positive, rest, np.inf).min(axis=1, initial=np.inf)
        span = np.where(np.isfinite(smallest) & (p1 > 0), np.log(p1 / smallest), 0.0)
    span = np.maximum(span, 0.0)
    span16 = span.astype("<f2")
    # Round the span up so the smallest value still maps inside 0..254.
    low = span16.astype(np.float64) < span
    span16[low] = np.nextafter(span16[low], np.float16(np.inf))
    step = span16.astype(np.float64) / LOG8_STEPS
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(p1[:, None] / rest)
        codes = np.where(step[:, None] > 0, np.rint(ratio / step[:, None]), 0.0)
    codes = np.clip(np.nan_to_num(codes, nan=0.0, posinf=LOG8_STEPS), 0, LOG8_STEPS)
    codes = np.where(positive, codes, LOG8_ZERO).astype(np.uint8)
    return top1, span16, codes


def log8_decode(top1: np.ndarray, span: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`log8_encode`: probabilities (n, K) float32."""
    p1 = np.asarray(top1, dtype=np.float32).reshape(-1, 1)
    step = np.asarray(span, dtype=np.float32).reshape(-1, 1) / np.float32(LOG8_STEPS)
    codes = np.asarray(codes)
    rest = p1 * np.exp(-codes.astype(np.float32) * step)
    rest[codes == LOG8_ZERO] = 0.0
    return np.concatenate([p1, rest], axis=1).astype(np.float32)


# ---------------------------------------------------------------------- checks
def identity_key(digest: str) -> int:
    """32-bit key of a store identity digest (hex SHA-256), bound into every record's check."""
    return int(digest[:8], 16)


def check_starts(identity: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """crc32 start values (n,) uint32 of the records of samples ``indices`` in ``epoch``.

    An affine map with odd multipliers, so different samples of an epoch always get different
    start values, and crc32 from different start values over the same bytes always differs."""
    idx = np.asarray(indices, dtype=np.uint64)
    start = (np.uint64(identity) + np.uint64(0x9E3779B1) * (idx + np.uint64(1))
             + np.uint64(0x85EBCA77) * np.uint64(epoch + 1))
    return (start & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def compute_checks(rows: np.ndarray, starts: np.ndarray, body: int) -> np.ndarray:
    """crc32 (n,) uint32 of each record's first ``body`` bytes from its start value."""
    rows = np.ascontiguousarray(rows)
    size = rows.shape[1] if rows.ndim == 2 else body + CHECK_BYTES
    view = memoryview(rows).cast("B")
    crc = zlib.crc32
    return np.fromiter((crc(view[o:o + body], s) for o, s in
                        zip(range(0, len(starts) * size, size), starts.tolist())),
                       dtype=np.uint32, count=len(starts))


def seal(rows: np.ndarray, starts: np.ndarray, fmt: RecordFormat) -> np.ndarray:
    """Fill in the check of records (n, R) in place; returns them."""
    checks = compute_checks(rows, starts, fmt.body)
    rows[:, fmt.body:] = checks.astype("<u4").reshape(-1, 1).view(np.uint8)
    return rows


def valid_rows(rows: np.ndarray, starts: np.ndarray, fmt: RecordFormat) -> np.ndarray:
    """Which records (n,) hold a valid record: check matches and top-1 probability > 0."""
    if len(rows) == 0:
        return np.zeros(0, dtype=bool)
    rows = np.ascontiguousarray(rows)
    stored = rows[:, fmt.body:].copy().view("<u4").reshape(len(rows))
    return (compute_checks(rows, starts, fmt.body) == stored) & (fmt.top1(rows) > 0)


__all__ = ["DEFAULT_VALUE_FORMAT", "RecordFormat", "VALUE_FORMATS", "check_starts",
           "compute_checks", "identity_key", "index_bits", "log8_decode", "log8_encode",
           "official_record_bytes", "pack_indices", "seal", "unpack_indices", "valid_rows"]
