"""The logit store: writing and reading records, integrity scans, manifest and lock errors."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tinyvit_backbone.distill.datasets import DatasetInfo
from tinyvit_backbone.distill.errors import StoreError
from tinyvit_backbone.distill.integrity import scan_store
from tinyvit_backbone.distill.lock import LOCK_FILE, WriterLock
from tinyvit_backbone.distill.replay import AugConfig, epoch_order, sample_seed
from tinyvit_backbone.distill.save_logits import SaveSettings, build_manifest
from tinyvit_backbone.distill.store import LogitStore

N, C, K = 40, 10, 3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def manifest(topk=K, num_classes=C, fingerprint="abc", values="fp16", block=4096, n=N, **aug):
    teacher = dict(model="test_resnet", model_kwargs={}, checkpoint="t.pth",
                   checkpoint_sha256="0" * 64, num_classes=num_classes, mean=[0.5] * 3,
                   std=[0.5] * 3)
    data = DatasetInfo("digits", "digits", "train", n, tuple(map(str, range(num_classes))),
                       fingerprint)
    return build_manifest(teacher, data, AugConfig(image_size=32, **aug), SaveSettings(
        topk=topk, epochs=2, batch_size=4, value_format=values, block_bytes=block))


def records(indices, epoch=0, topk=K):
    rng = np.random.default_rng(epoch)
    indices = np.asarray(indices)
    top = np.stack([rng.permutation(C)[:topk] for _ in indices])
    vals = -np.sort(-rng.dirichlet(np.ones(C), len(indices))[:, :topk], axis=1)
    seeds = [sample_seed(0, epoch, int(i)) for i in indices]
    return indices, np.asarray(seeds), top, vals.astype(np.float32)


def full_store(root, epochs=(0,), **kw):
    store = LogitStore.create(root, manifest(**kw))
    n = store.num_samples
    for e in epochs:
        store.write(e, *records(np.arange(n), e))
        store.mark_complete(e)
    store.close()
    return LogitStore.open(root)


@pytest.mark.parametrize("values", ["fp16", "log8"])
def test_write_read_roundtrip(tmp_path, values):
    store = LogitStore.create(tmp_path / "s", manifest(values=values))
    idx, seeds, top, vals = records([1, 5, 7])
    assert store.write(0, idx, seeds, top, vals) == 3 * store.record.size
    rec = store.read(0, 5)
    assert rec.seed == seeds[1] and rec.indices.tolist() == top[1].tolist()
    np.testing.assert_array_equal(rec.values, store.record.roundtrip(vals[1:2])[0])
    with pytest.raises(StoreError, match=r"record 0 of epoch 0 .* fails its check.*"
                                         r"save-logits .* --out"):
        store.read(0, 0)  # never written
    batch = store.read_many(0, [7, 0, 5, 5])  # any order, duplicates, bad ones flagged
    assert batch.ok.tolist() == [True, False, True, True]
    assert batch.seeds[[0, 2]].tolist() == [seeds[2], seeds[1]]
    with pytest.raises(StoreError, match="outside store"):
        store.read(0, N)


def test_batch_reads_by_position_need_no_order_table(tmp_path):
    store = full_store(tmp_path / "s", epochs=(0,))
    order = epoch_order(N, 0, 0)
    batch = order[8:16]  # a training batch: a run of the epoch's order
    by_table = store.read_many(0, batch)
    by_position = store.read_many(0, batch, positions=np.arange(8, 16))
    assert by_position.ok.all() and (by_position.seeds == by_table.seeds).all()
    # a wrong position reads another sample's record, which fails its check
    assert not store.read_many(0, batch, positions=np.arange(9, 17)).ok.any()


def test_records_lie_in_epoch_order_and_reads_follow_it(tmp_path):
    store = full_store(tmp_path / "s", epochs=(0, 1))
    order = epoch_order(N, 0, 1)
    raw = open(store.epoch_path(1), "rb").read()
    size = store.record.size
    # position p holds the record of sample order[p]
    assert [int.from_bytes(raw[p * size:p * size + 4], "little") for p in range(3)] == \
        [sample_seed(0, 1, int(i)) for i in order[:3]]
    reads = []
    store._read_fds.clear()
    real = os.pread
    os.pread = lambda fd, n, off: reads.append((off, n)) or real(fd, n, off)
    try:
        for i in order:  # the training order: reads grow into long sequential windows
            store.read(1, int(i))
    finally:
        os.pread = real
    assert len(reads) <= 8 and sum(n for _, n in reads) == N * size
    assert [off for off, _ in reads] == sorted(off for off, _ in reads)


def test_scan_reports_every_problem_without_stopping(tmp_path):
    store = full_store(tmp_path / "s", epochs=(0, 1))
    size = store.record.size
    flips = [3, 17, 29]
    with open(store.epoch_path(0), "r+b") as f:
        for p in flips:
            f.seek(p * size + 6)
            f.write(b"\xff")
    with open(store.epoch_path(1), "r+b") as f:
        f.truncate(25 * size + 7)  # cuts record 25 in half
    report, bad = scan_store(store, [0, 1])
    e0, e1 = report.epochs
    assert e0.bad_records == 3 and e0.file == "full" and bad[0].tolist() == flips
    assert e0.first_bad == sorted(int(epoch_order(N, 0, 0)[p]) for p in flips)
    assert e1.file == "short" and e1.bad_records == N - 25 and e1.complete
    assert not report.sound and report.bad_records == 3 + N - 25
    text = report.describe()
    assert "epoch 0: 3 bad records of 40 checked" in text and "truncated" in text
    # longer than complete: every record sound, but the file is reported
    with open(store.epoch_path(0), "ab") as f:
        f.write(b"junk")
    os.unlink(store.epoch_path(1))
    report, _ = scan_store(store, [0, 1])
    assert report.epochs[0].file == "extended" and report.epochs[1].file == "missing"
    assert "file missing" in report.describe() and "longer than a complete epoch" in \
        report.describe()


def test_disk_full_is_a_clear_resumable_error(tmp_path, monkeypatch):
    store = LogitStore.create(tmp_path / "s", manifest())

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_pwrite", full)
    with pytest.raises(StoreError, match=r"disk .* is full.*nothing half-written counts as done"
                                         r".*rerun save-logits with the same arguments"):
        store.write(0, *records([0, 1]))


def test_manifest_mismatch_lists_differences(tmp_path):
    LogitStore.create(tmp_path / "s", manifest())
    with pytest.raises(StoreError) as err:
        LogitStore.create(tmp_path / "s", manifest(topk=5, fingerprint="other", mixup=0.0,
                                                   values="log8"))
    msg = str(err.value)
    assert "record.topk: store has 3, this run has 5" in msg and "record.values" in msg
    assert "dataset.fingerprint" in msg and "augmentation.mixup" in msg
    m = manifest()  # same identity, more epochs: accepted, the plan grows
    m["epochs"] = 5
    assert LogitStore.create(tmp_path / "s", m).manifest["epochs"] == 5


def test_damaged_manifests_are_refused_with_the_fix(tmp_path):
    root = tmp_path / "s"
    full_store(root)
    path = root / "manifest.json"
    good = path.read_text()
    path.write_text(good.replace('"seed": 0', '"seed": 1'))  # parses, but was edited
    with pytest.raises(StoreError, match="identity digest.*--rebuild-manifest"):
        LogitStore.open(root)
    path.write_text(good[:200])
    with pytest.raises(StoreError, match="not valid JSON.*--rebuild-manifest"):
        LogitStore.open(root)
    with pytest.raises(StoreError, match="not valid JSON"):  # a writer refuses too
        LogitStore.create(root, manifest())
    # rebuilt from the same settings: the records are valid again, nothing to rewrite
    store = LogitStore.create(root, manifest(), rebuild_manifest=True)
    report, _ = scan_store(store, [0])
    assert report.sound
    # a sound manifest is never rebuilt: other settings are still refused
    with pytest.raises(StoreError, match="written with other settings"):
        LogitStore.create(root, manifest(mixup=0.0), rebuild_manifest=True)
    path.unlink()
    with pytest.raises(StoreError, match="holds epoch files but no manifest.*--rebuild-manifest"):
        LogitStore.create(root, manifest())
    # rebuilt from other settings: the old records fail their checks (bound to the identity)
    store = LogitStore.create(root, manifest(mixup=0.0), rebuild_manifest=True)
    assert scan_store(store, [0])[0].epochs[0].bad_records == N
    with pytest.raises(StoreError, match="does not exist"):
        LogitStore.open(tmp_path / "missing")


def test_format_1_store_is_refused_with_the_convert_command(tmp_path):
    import shutil

    shutil.copytree(os.path.join(REPO, "tests", "fixtures", "distill_store_v1"), tmp_path / "v1")
    with pytest.raises(StoreError, match=r"format version 1.*convert-store --store "):
        LogitStore.open(tmp_path / "v1")
    with pytest.raises(StoreError, match="convert-store"):  # not "rebuilt" into an empty store
        LogitStore.create(tmp_path / "v1", manifest(), rebuild_manifest=True)
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps(
        dict(json.loads((tmp_path / "v1" / "manifest.json").read_text()), format_version=9)))
    with pytest.raises(StoreError, match="format version 9"):
        LogitStore.open(tmp_path / "v1")


def test_interrupted_conversion_is_finished_by_the_same_command(tmp_path):
    import shutil

    from tests.helpers import epoch_files
    from tinyvit_backbone.distill.legacy import convert_store

    fixture = os.path.join(REPO, "tests", "fixtures", "distill_store_v1")
    shutil.copytree(fixture, tmp_path / "straight")
    convert_store(str(tmp_path / "straight"), log=lambda _: None)
    shutil.copytree(fixture, tmp_path / "cut")

    def crash_after_first_epoch(msg):
        raise KeyboardInterrupt  # killed right after epoch 0 was converted

    with pytest.raises(KeyboardInterrupt):
        convert_store(str(tmp_path / "cut"), log=crash_after_first_epoch)
    assert sorted(os.listdir(tmp_path / "cut")) == [".writer.lock", "epoch_0000.records",
                                                    "epoch_0001.bin", "manifest.json"]
    with pytest.raises(StoreError, match="convert-store"):
        LogitStore.open(tmp_path / "cut")
    result = convert_store(str(tmp_path / "cut"), log=lambda _: None)
    assert result["epochs"][0] == dict(converted_earlier=True)
    assert result["epochs_complete"] == [0, 1]
    assert epoch_files(tmp_path / "cut") == epoch_files(tmp_path / "straight")


def test_lock_refuses_a_second_writer_and_a_killed_writer_leaves_none(tmp_path):
    root = tmp_path / "s"
    with WriterLock(root):
        with pytest.raises(StoreError, match=r"being written by another job \(save-logits on "
                                             r"host .*, pid \d+"):
            WriterLock(root).acquire()
    WriterLock(root).acquire().release()  # released: free again
    # A process that holds the lock and is killed leaves the lock file, but no lock.
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); "
            "from tinyvit_backbone.distill.lock import WriterLock; "
            "WriterLock(sys.argv[2]).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, REPO, str(root)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=f"pid {proc.pid}"):
            WriterLock(root).acquire()
    finally:
        proc.kill()
        proc.wait()
    assert (root / LOCK_FILE).exists()
    WriterLock(root).acquire().release()


def test_dataset_fingerprint_notices_same_size_swaps_and_keeps_older_stores(tmp_path):
    """The ImageFolder fingerprint hashed file sizes only: a store accepted data whose images
    had been swapped for others of the same size. Stores that recorded the size-only digest
    keep opening (and resuming) on the files they were made from."""
    import time
    from dataclasses import replace

    from tests.helpers import COLOURS, write_colour_folder, write_colour_image
    from tinyvit_backbone.distill.datasets import check_same_dataset, open_dataset
    from tinyvit_backbone.distill.errors import DistillError
    from tinyvit_backbone.distill.save_logits import _older_fingerprint

    root = write_colour_folder(tmp_path / "data", splits=(("train", 3),))
    past = time.time() - 3600
    for path in root.rglob("*.bmp"):
        os.utime(path, (past, past))
    _, made = open_dataset(str(root / "train"))
    stored = made.to_dict()
    check_same_dataset(stored, open_dataset(str(root / "train"))[1], "store s")

    swapped = root / "train" / "c0" / "1.bmp"
    size = swapped.stat().st_size
    write_colour_image(swapped, COLOURS["c2"])
    assert swapped.stat().st_size == size
    _, now = open_dataset(str(root / "train"))
    assert now.legacy_fingerprint == made.legacy_fingerprint  # the sizes did not change
    with pytest.raises(DistillError, match=r"store s was made from dataset .* pass the same "
                                           r"dataset .*size and modification time.*rsync -a"):
        check_same_dataset(stored, now, "store s")

    # a store from before: its size-only digest still matches the files it was made from
    os.utime(swapped, (past, past))
    write_colour_folder(tmp_path / "data", splits=(("train", 3),))  # the original pixels back
    for path in root.rglob("*.bmp"):
        os.utime(path, (past, past))
    _, same = open_dataset(str(root / "train"))
    older = dict(stored, fingerprint=made.legacy_fingerprint)
    with pytest.warns(UserWarning, match="older size-only dataset fingerprint"):
        check_same_dataset(older, same, "store s")
    teacher = dict(model="test_resnet", model_kwargs={}, checkpoint="t.pth",
                   checkpoint_sha256="0" * 64, num_classes=3, mean=[0.5] * 3, std=[0.5] * 3)

    def store_manifest(info):
        return build_manifest(teacher, info, AugConfig(image_size=16), SaveSettings(
            topk=2, epochs=1, batch_size=4, block_bytes=4096))

    LogitStore.create(tmp_path / "s", store_manifest(replace(same, fingerprint=older["fingerprint"])))
    with pytest.raises(StoreError, match="dataset.fingerprint"):
        LogitStore.create(tmp_path / "s", store_manifest(same))
    said = []
    resumed = _older_fingerprint(str(tmp_path / "s"), same, said.append)
    assert resumed.fingerprint == made.legacy_fingerprint and "resuming it" in said[0]
    LogitStore.create(tmp_path / "s", store_manifest(resumed))
    other = replace(same, legacy_fingerprint="0" * 64)  # files the store was not made from
    assert _older_fingerprint(str(tmp_path / "s"), other, said.append) is other
