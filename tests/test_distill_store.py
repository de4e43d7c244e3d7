"""The logit store: record layout, integrity checks, corruption and mismatch errors."""
import json
import os

import numpy as np
import pytest

from tinyvit_backbone.distill.datasets import DatasetInfo
from tinyvit_backbone.distill.errors import StoreError
from tinyvit_backbone.distill.replay import AugConfig
from tinyvit_backbone.distill.save_logits import SaveSettings, build_manifest
from tinyvit_backbone.distill.store import (
    LogitStore,
    official_record_bytes,
    record_check,
    record_dtype,
)

N, C, K = 12, 10, 3


def manifest(topk=K, num_classes=C, fingerprint="abc", **aug):
    teacher = dict(model="test_resnet", model_kwargs={}, checkpoint="/x/t.pth",
                   checkpoint_sha256="0" * 64, num_classes=num_classes, mean=[0.5] * 3,
                   std=[0.5] * 3)
    data = DatasetInfo("digits", "digits", "train", N, tuple(map(str, range(num_classes))),
                       fingerprint)
    return build_manifest(teacher, data, AugConfig(image_size=32, **aug),
                          SaveSettings(topk=topk, epochs=2, batch_size=4))


def fill(store, epoch=0, indices=None):
    indices = np.arange(N) if indices is None else np.asarray(indices)
    rng = np.random.default_rng(epoch)
    seeds = rng.integers(0, 2**31, len(indices)).astype(np.int32)
    top = np.stack([rng.permutation(C)[:K] for _ in indices])
    vals = np.sort(rng.dirichlet(np.ones(C), len(indices))[:, :K], axis=1)[:, ::-1]
    store.write(epoch, indices, seeds, top, vals.astype(np.float16))
    return seeds, top, vals.astype(np.float16)


def test_record_layout_and_size():
    assert record_dtype(10, 1000).itemsize == 48 == official_record_bytes(10) + 4
    assert record_dtype(100, 21841).itemsize == 408
    assert record_dtype(5, 40000)["indices"].base == np.dtype("<i4")  # C > 32767: int32
    assert record_dtype(5, 40000).itemsize == 8 + 5 * 6
    with pytest.raises(StoreError, match="top-K"):
        record_dtype(11, 10)


def test_write_read_roundtrip_and_done_marks(tmp_path):
    store = LogitStore.create(tmp_path / "s", manifest())
    store.allocate_epoch(0)
    assert not store.valid_mask(0).any()  # a fresh (all-zero) epoch has no valid record
    seeds, top, vals = fill(store, 0, indices=[1, 5, 7])
    assert store.valid_mask(0).nonzero()[0].tolist() == [1, 5, 7]
    rec = store.read(0, 5)
    assert rec.seed == seeds[1]
    assert rec.indices.tolist() == top[1].tolist()
    np.testing.assert_array_equal(rec.values, vals[1].astype(np.float32))
    with pytest.raises(StoreError, match="fails its check"):
        store.read(0, 0)  # never written
    # The check binds a record to its place: the same bytes are invalid at another index.
    raw = bytes(store.records(0)[5:6].view(np.uint8)[:-4])
    assert record_check(0, 5, raw) != record_check(0, 6, raw)
    assert record_check(0, 5, raw) != record_check(1, 5, raw)


def test_corrupted_byte_is_caught(tmp_path):
    store = LogitStore.create(tmp_path / "s", manifest())
    store.allocate_epoch(0)
    fill(store, 0)
    store.close()
    path = store.epoch_path(0)
    data = bytearray(open(path, "rb").read())
    size = record_dtype(K, C).itemsize
    data[4 * size + 6] ^= 0x10  # one bit of record 4's indices
    open(path, "wb").write(bytes(data))
    store = LogitStore.open(tmp_path / "s")
    mask = store.valid_mask(0)
    assert mask.tolist() == [i != 4 for i in range(N)]
    with pytest.raises(StoreError, match=r"record 4 of epoch 0 .*epoch_0000.bin fails its check"):
        store.read(0, 4)


def test_truncated_file_is_refused(tmp_path):
    store = LogitStore.create(tmp_path / "s", manifest())
    store.allocate_epoch(0)
    fill(store, 0)
    store.close()
    with open(store.epoch_path(0), "r+b") as f:
        f.truncate(store.epoch_bytes - 10)
    store = LogitStore.open(tmp_path / "s")
    with pytest.raises(StoreError, match=r"truncated.*rerun save-logits"):
        store.read(0, 0)


def test_manifest_mismatch_lists_differences(tmp_path):
    LogitStore.create(tmp_path / "s", manifest())
    with pytest.raises(StoreError) as err:
        LogitStore.create(tmp_path / "s", manifest(topk=5, fingerprint="other", mixup=0.0))
    msg = str(err.value)
    assert "record.topk: store has 3, this run has 5" in msg
    assert "dataset.fingerprint" in msg and "augmentation.mixup" in msg
    # Same identity, more epochs: accepted, the plan grows.
    m = manifest()
    m["epochs"] = 5
    assert LogitStore.create(tmp_path / "s", m).manifest["epochs"] == 5


def test_epoch_requirements_and_manifest_errors(tmp_path):
    store = LogitStore.create(tmp_path / "s", manifest())
    with pytest.raises(StoreError, match=r"epoch 1 is not complete.*complete epochs: none"):
        store.require_epoch(1)
    store.allocate_epoch(0)
    fill(store, 0)
    store.mark_complete(0)
    assert LogitStore.open(tmp_path / "s").epochs_complete == [0]
    with pytest.raises(StoreError, match="does not exist"):
        LogitStore.open(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps(dict(manifest(), format_version=99)))
    with pytest.raises(StoreError, match="format version 99"):
        LogitStore.open(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        LogitStore.open(bad)


def test_epoch_files_are_sparse_and_atomic(tmp_path):
    store = LogitStore.create(tmp_path / "s", manifest())
    store.allocate_epoch(1)
    assert os.path.getsize(store.epoch_path(1)) == N * record_dtype(K, C).itemsize
    assert not [p for p in os.listdir(tmp_path / "s") if p.endswith(".tmp")]
