"""Record formats (fp16, log8) and the epoch file layout: sizes, round trips, errors, ownership."""
import numpy as np
import pytest

from tinyvit_backbone.distill.errors import StoreError
from tinyvit_backbone.distill.layout import BLOCK_BYTES, EpochLayout, assign_blocks
from tinyvit_backbone.distill.record import (
    RecordFormat,
    check_starts,
    index_bits,
    log8_decode,
    log8_encode,
    official_record_bytes,
    pack_indices,
    seal,
    unpack_indices,
    valid_rows,
)


def teacher_like(n, num_classes, topk, rng, sharpness=4.0):
    """Sorted top-K softmax rows of random peaked logits (a confident teacher's shape)."""
    logits = rng.standard_normal((n, num_classes)).astype(np.float32) * sharpness
    logits[np.arange(n), rng.integers(0, num_classes, n)] += rng.uniform(2, 12, n)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    top = np.argpartition(-probs, topk - 1, axis=1)[:, :topk]
    idx = np.take_along_axis(top, np.argsort(-np.take_along_axis(probs, top, 1), axis=1), 1)
    return idx, np.take_along_axis(probs, idx, 1).astype(np.float32)


def test_record_sizes_against_the_official_record():
    assert RecordFormat(10, 1000).size == 48 == official_record_bytes(10) + 4
    assert RecordFormat(100, 21841).size == 408
    # log8 at ImageNet-21k scale: 15-bit indices, check included, at most 75% of 404 bytes
    log8 = RecordFormat(100, 21841, "log8")
    assert index_bits(21841) == 15 and log8.size == 299 <= 0.75 * official_record_bytes(100)
    assert RecordFormat(10, 1000, "log8").size == 4 + 13 + 4 + 9 + 4 == 34
    assert RecordFormat(5, 40000).index_dtype == np.dtype("<i4")  # C > 32767: int32
    assert RecordFormat(5, 40000).size == 8 + 5 * 6
    with pytest.raises(StoreError, match="top-K"):
        RecordFormat(11, 10)
    with pytest.raises(StoreError, match="value format"):
        RecordFormat(5, 10, "int4")
    with pytest.raises(StoreError, match="at most 24 bits"):
        RecordFormat(5, 2**24 + 1, "log8")


@pytest.mark.parametrize("bits", [1, 2, 3, 7, 8, 13, 15, 16, 17, 24])
def test_index_packing_round_trips(bits):
    rng = np.random.default_rng(bits)
    for k in (1, 2, 5, 37, 100):
        idx = rng.integers(0, 2**bits, (20, k))
        packed = pack_indices(idx, bits)
        assert packed.shape == (20, -(-k * bits // 8))
        np.testing.assert_array_equal(unpack_indices(packed, k, bits), idx)


@pytest.mark.parametrize("values", ["fp16", "log8"])
def test_encode_decode_and_check(values):
    rng = np.random.default_rng(0)
    fmt = RecordFormat(100, 21841, values)
    idx, vals = teacher_like(64, 21841, 100, rng)
    seeds = rng.integers(0, 2**31, 64)
    rows = seal(fmt.encode(seeds, idx, vals), check_starts(7, 3, np.arange(64)), fmt)
    assert rows.shape == (64, fmt.size)
    got_seeds, got_idx, got_vals = fmt.decode(rows)
    np.testing.assert_array_equal(got_seeds, seeds)
    np.testing.assert_array_equal(got_idx, idx)
    np.testing.assert_array_equal(got_vals, fmt.roundtrip(vals))
    assert valid_rows(rows, check_starts(7, 3, np.arange(64)), fmt).all()
    # the check binds the record to its store identity, epoch and sample
    assert not valid_rows(rows, check_starts(8, 3, np.arange(64)), fmt).any()
    assert not valid_rows(rows, check_starts(7, 4, np.arange(64)), fmt).any()
    assert not valid_rows(rows, check_starts(7, 3, np.arange(1, 65)), fmt).any()
    # every single flipped bit is caught, and a never-written (zero) record is never valid
    starts = check_starts(7, 3, np.arange(64))
    for bit in rng.choice(fmt.size * 8, 200, replace=False):
        bad = rows.copy()
        bad[5, bit // 8] ^= 1 << (bit % 8)
        assert valid_rows(bad, starts, fmt).tolist() == [i != 5 for i in range(64)]
    assert not valid_rows(np.zeros((3, fmt.size), np.uint8), starts[:3], fmt).any()


def test_log8_error_is_bounded_by_the_record_span():
    rng = np.random.default_rng(1)
    for sharpness in (0.5, 2.0, 6.0):
        idx, vals = teacher_like(200, 21841, 100, rng, sharpness)
        top1, span, codes = log8_encode(vals)
        back = log8_decode(top1, span, codes)
        # top-1 is kept as float16
        np.testing.assert_array_equal(back[:, 0], vals[:, 0].astype(np.float16).astype(np.float32))
        rel = np.abs(back[:, 1:] / vals[:, 1:] - 1)
        bound = span.astype(np.float64)[:, None] / 508 * (1 + 1e-3) + 2e-3  # + fp16 top-1
        assert (rel <= bound).all()
        assert (np.diff(codes.astype(int), axis=1) >= 0).all()  # sorted values, sorted codes
    # zeros stay exact zeros; one value; all equal values
    vals = np.array([[0.5, 0.25, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]],
                    np.float32)
    back = log8_decode(*log8_encode(vals))
    assert back[0, 2] == back[0, 3] == 0 and back[1, 1:].tolist() == [0, 0, 0]
    np.testing.assert_allclose(back, vals, rtol=2e-3)
    np.testing.assert_array_equal(log8_decode(*log8_encode(np.array([[0.7]], np.float32))),
                                  [[np.float32(np.float16(0.7))]])


def test_layout_blocks_hold_whole_records():
    layout = EpochLayout(10_000, 299, 4096)
    assert layout.per_block == 13 and layout.num_blocks == 770
    assert layout.file_bytes == 769 * 4096 + (10_000 - 769 * 13) * 299
    for p in (0, 12, 13, 9999):
        offset = layout.offset(p)
        assert offset // 4096 == (offset + 298) // 4096  # never straddles a block
    assert layout.runs(np.array([0, 1, 2, 12, 13, 14, 20])) == [(0, 3), (12, 13), (13, 15),
                                                                (20, 21)]
    assert layout.block_runs(10, 30) == [(10, 13), (13, 26), (26, 30)]
    with pytest.raises(ValueError, match="cross a block"):
        layout.byte_range(12, 14)
    with pytest.raises(StoreError, match="power of two"):
        EpochLayout(10, 20, 5000)
    with pytest.raises(StoreError, match="does not fit a block"):
        EpochLayout(10, 8192, 4096)


def test_assigned_blocks_are_contiguous_disjoint_and_balanced():
    rng = np.random.default_rng(0)
    for world in (1, 2, 3, 7):
        work = rng.integers(0, 50, 200) * (rng.random(200) < 0.3)
        ranges = assign_blocks(work, world)
        assert ranges[0][0] == 0 and ranges[-1][1] == 200
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        loads = [work[a:b].sum() for a, b in ranges]
        assert max(loads) - work.sum() / world <= work.max()
    assert assign_blocks(np.zeros(5), 2) == [(0, 2), (2, 5)]
    assert assign_blocks(np.array([0, 0, 9, 0]), 3) == [(0, 3), (3, 3), (3, 4)]


@pytest.mark.parametrize("values, world", [("fp16", 2), ("log8", 3), ("log8", 64)])
def test_no_two_ranks_write_the_same_mib_at_imagenet21k_scale(values, world):
    # A fresh ImageNet-21k epoch (every record to write): the byte ranges each rank writes
    # touch disjoint aligned 1 MiB blocks, and together they cover the whole file.
    fmt = RecordFormat(100, 21841, values)
    layout = EpochLayout(13_153_920, fmt.size, BLOCK_BYTES)
    owner = {}
    for rank, (first, last) in enumerate(assign_blocks(np.full(layout.num_blocks, 1), world)):
        if first == last:
            continue
        start, stop = layout.block_range(first)[0], layout.block_range(last - 1)[1]
        for a, b in layout.block_runs(start, stop):
            offset, length = layout.byte_range(a, b)
            for mib in range(offset // BLOCK_BYTES, (offset + length - 1) // BLOCK_BYTES + 1):
                assert owner.setdefault(mib, rank) == rank
    assert sorted(owner) == list(range(layout.num_blocks))
