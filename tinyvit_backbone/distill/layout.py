"""Where each record of an epoch lives in its file, and which process writes which part.

Records are stored in the epoch's *sample order* (:func:`~.replay.epoch_order`): position ``p``
of ``epoch_0003.records`` holds the record of the ``p``-th sample that epoch visits. The file is
cut into aligned blocks of ``block_bytes`` (1 MiB by default); a block holds
``P = block_bytes // R`` whole records and ends in ``block_bytes - P * R`` bytes of padding (a
record never straddles two blocks; at most ``R - 1`` bytes per block, under 0.04% at 1 MiB). The
last block is cut after its last record.

Why this layout, rather than scattering records by sample index (format 1) or per-rank shards:

* **Many nodes, one shared filesystem.** A writer owns whole blocks (:func:`assign_blocks`): it
  writes, with ``pwrite``, only records inside its blocks, so no two processes ever write the
  same aligned block (nor, with ``block_bytes`` a multiple of the page size, the same page),
  which is what network filesystems need to stay coherent between hosts. A teacher batch that
  straddles two owners is computed by both (the batches are fixed, so the bytes agree) and each
  writes its own records: at most two extra batches per process and epoch.
* **Any process count, same bytes.** Blocks and batches do not depend on the number of
  processes, only the assignment does; a store started with N processes resumes with M and ends
  byte-identical. Per-rank shard files would tie the files to the process count.
* **Reads follow training.** Training batches are consecutive runs of the same sample order, so
  the student reads each batch as one sequential run of bytes (one ``pread``), whatever its
  batch size, worker count or process count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import StoreError

BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class EpochLayout:
    """Byte positions of the ``num_records`` records (``record_bytes`` each) of one epoch file."""

    num_records: int
    record_bytes: int
    block_bytes: int = BLOCK_BYTES

    def __post_init__(self):
        if self.block_bytes < 4096 or self.block_bytes & (self.block_bytes - 1):
            raise StoreError(f"block size must be a power of two of at least 4096 bytes, got "
                             f"{self.block_bytes}")
        if self.record_bytes > self.block_bytes:
            raise StoreError(f"a {self.record_bytes}-byte record does not fit a block of "
                             f"{self.block_bytes} bytes: use a larger block size")

    @property
    def per_block(self) -> int:
        """Records per block."""
        return self.block_bytes // self.record_bytes

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.num_records / self.per_block)

    @property
    def file_bytes(self) -> int:
        """Size of a complete epoch file."""
        if self.num_records == 0:
            return 0
        last = self.num_records - (self.num_blocks - 1) * self.per_block
        return (self.num_blocks - 1) * self.block_bytes + last * self.record_bytes

    def offset(self, position: int) -> int:
        """Byte offset of the record at ``position``."""
        block, slot = divmod(int(position), self.per_block)
        return block * self.block_bytes + slot * self.record_bytes

    def block_range(self, block: int) -> tuple[int, int]:
        """Positions [start, stop) of the records in ``block``."""
        start = block * self.per_block
        return start, min(start + self.per_block, self.num_records)

    def runs(self, positions: np.ndarray) -> list[tuple[int, int]]:
        """Sorted unique positions -> maximal [start, stop) runs of consecutive positions inside
        one block (each run is one contiguous byte range of the file)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return []
        breaks = (np.diff(positions) != 1) | (np.diff(positions // self.per_block) != 0)
        cut = np.flatnonzero(breaks) + 1
        starts = np.concatenate([[0], cut])
        stops = np.concatenate([cut, [len(positions)]])
        return [(int(positions[a]), int(positions[b - 1]) + 1) for a, b in zip(starts, stops)]

    def block_runs(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The positions [start, stop) cut at block boundaries."""
        out = []
        while start < stop:
            end = min(stop, (start // self.per_block + 1) * self.per_block)
            out.append((start, end))
            start = end
        return out

    def byte_range(self, start: int, stop: int) -> tuple[int, int]:
        """(offset, length) of the run of positions [start, stop) inside one block."""
        if start // self.per_block != (stop - 1) // self.per_block:
            raise ValueError(f"positions {start}..{stop} cross a block boundary")
        return self.offset(start), (stop - start) * self.record_bytes

    def describe(self) -> dict:
        """The manifest's ``layout`` section."""
        return dict(order="epoch sample order (replay.epoch_order)", block_bytes=self.block_bytes,
                    records_per_block=self.per_block)


def assign_blocks(work: np.ndarray, world_size: int) -> list[tuple[int, int]]:
    """Split blocks [0, len(work)) into ``world_size`` contiguous ranges of about equal work.

    ``work[b]`` is the number of records block ``b`` needs written. Returns [start, stop) per
    rank; ranges are disjoint and cover every block, so each block has exactly one writer.
    """
    work = np.asarray(work, dtype=np.float64)
    total = float(work.sum())
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if total == 0:
        cuts = [round(r * len(work) / world_size) for r in range(world_size + 1)]
    else:
        # Rank r starts at the first block whose preceding work reaches r / w of the total.
        before = np.concatenate([[0.0], np.cumsum(work)[:-1]])
        targets = total * np.arange(world_size + 1) / world_size
        cuts = np.searchsorted(before, targets[1:-1], side="left").tolist()
        cuts = [0, *cuts, len(work)]
    return [(int(cuts[r]), int(cuts[r + 1])) for r in range(world_size)]


@dataclass(frozen=True)
class EpochOrder:
    """An epoch's sample order: ``order[p]`` is the sample at position ``p``, ``position[i]``
    the position of sample ``i`` (both int32 arrays, read-only)."""

    order: np.ndarray
    position: np.ndarray


@lru_cache(maxsize=2)
def epoch_order_table(num_samples: int, base_seed: int, epoch: int) -> EpochOrder:
    """The order and its inverse for one epoch, cached per process (52 MB for 13M samples)."""
    from .replay import epoch_order

    order = epoch_order(num_samples, base_seed, epoch).astype(np.int32)
    position = np.empty_like(order)
    position[order] = np.arange(num_samples, dtype=np.int32)
    order.setflags(write=False)
    position.setflags(write=False)
    return EpochOrder(order, position)


__all__ = ["BLOCK_BYTES", "EpochLayout", "EpochOrder", "assign_blocks", "epoch_order_table"]
