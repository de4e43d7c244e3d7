"""Repair, never just detect: every kind of damage is found, reported, and rewritten to the exact
bytes of an undamaged store, touching nothing else."""
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Subset

from tests.helpers import (
    epoch_files,
    write_digit_folder,
    write_test_teacher,
)
from tinyvit_backbone.distill.__main__ import main
from tinyvit_backbone.distill.datasets import DatasetInfo, open_dataset
from tinyvit_backbone.distill.errors import StoreError
from tinyvit_backbone.distill.integrity import repair_command, scan_store
from tinyvit_backbone.distill.replay import AugConfig
from tinyvit_backbone.distill.save_logits import SaveSettings, save_logits
from tinyvit_backbone.distill.store import LogitStore
from tinyvit_backbone.distill.teacher import load_teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, BATCH, K, BLOCK = 192, 16, 4, 4096  # 24-byte records: 170 per block, 2 blocks per epoch
AUG = AugConfig(image_size=32, hflip=0.0)
CPU = torch.device("cpu")
SETTINGS = SaveSettings(topk=K, epochs=2, batch_size=BATCH, block_bytes=BLOCK)
CLI_ARGS = ["--aug-preset", "digits", "--epochs", "2", "--topk", "3", "--batch-size", "8",
            "--block-kib", "4", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("repair")
    ds, info = open_dataset("digits", "train", 32)
    data = Subset(ds, range(N))
    info = DatasetInfo("digits", "digits", "train", N, info.classes, f"first{N}")
    teacher, tinfo = load_teacher("test_resnet", str(write_test_teacher(root / "t.pth")), 10,
                                  data_mean=AUG.mean, data_std=AUG.std)
    save(root / "reference", teacher, tinfo, data, info)
    return root, data, info, teacher, tinfo, epoch_files(root / "reference")


def save(out, teacher, tinfo, data, info, settings=SETTINGS, log=None, **kw):
    return save_logits(str(out), teacher, tinfo, data, info, AUG, settings, device=CPU,
                       progress=False, log=log or (lambda _: None), **kw)


class CrashAfter(nn.Module):
    """A teacher that dies after ``batches`` forwards: a run cut short mid-epoch."""

    def __init__(self, teacher, batches):
        super().__init__()
        self.teacher, self.left = teacher, batches

    def forward(self, x):
        if self.left == 0:
            raise RuntimeError("simulated crash")
        self.left -= 1
        return self.teacher(x)


def record_writes(monkeypatch):
    writes = []
    real = LogitStore._pwrite

    def traced(self, fd, data, offset):
        writes.append((os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), offset, len(data)))
        return real(self, fd, data, offset)

    monkeypatch.setattr(LogitStore, "_pwrite", traced)
    return writes


def flip(path, offsets):
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            byte = f.read(1)
            f.seek(off)
            f.write(bytes([byte[0] ^ 0x5A]))


def test_flips_in_complete_and_incomplete_epochs_are_all_found_and_repaired(world, tmp_path,
                                                                            monkeypatch):
    root, data, info, teacher, tinfo, reference = world
    out = tmp_path / "store"
    with pytest.raises(RuntimeError, match="simulated crash"):  # epoch 0 done, epoch 1 not
        save(out, CrashAfter(teacher, N // BATCH + 5), tinfo, data, info)
    store = LogitStore.open(out)
    assert store.epochs_complete == [0]
    size, per_block = store.record.size, store.layout.per_block
    rng = np.random.default_rng(0)

    def place(p):
        return (p // per_block) * BLOCK + (p % per_block) * size

    # 25 flipped bytes in 25 records of the complete epoch, 5 in the written part of epoch 1
    hit0 = rng.choice(N, 25, replace=False)
    hit1 = rng.choice(5 * BATCH, 5, replace=False)
    flip(store.epoch_path(0), [place(p) + int(rng.integers(size)) for p in hit0])
    flip(store.epoch_path(1), [place(p) + int(rng.integers(size)) for p in hit1])
    report, bad = scan_store(LogitStore.open(out), [0, 1])
    assert sorted(bad[0].tolist()) == sorted(hit0.tolist())  # 100% found, nothing else
    assert set(hit1) <= set(bad[1].tolist())
    unwritten = set(range(5 * BATCH, N))
    assert set(bad[1].tolist()) == set(hit1) | unwritten

    writes = record_writes(monkeypatch)
    messages = []
    summary = save(out, teacher, tinfo, data, info, log=messages.append)
    assert epoch_files(out) == reference  # byte-identical to the undamaged run
    assert summary["records_written"] == 25 + len(bad[1])
    assert summary["records_repaired"] == 25 and summary["epochs_complete"] == [0, 1]
    # exactly the bad records were rewritten: every written byte belongs to one of them
    rewritten = {"epoch_0000.records": set(hit0.tolist()), "epoch_0001.records": set(bad[1])}
    for name, offset, length in writes:
        for p in range(N):
            a = place(p)
            if a < offset + length and offset < a + size:
                assert p in rewritten[name], (name, p)
    assert sum(length for _, _, length in writes) == size * (25 + len(bad[1]))
    assert any("epoch 1/2: scanned" in m and "GB/s" in m and "25 bad records" in m
               for m in messages)
    # a rerun on the sound store writes nothing at all
    writes.clear()
    assert save(out, teacher, tinfo, data, info)["records_written"] == 0 and not writes


def test_truncated_extended_and_missing_files_are_repaired(world, tmp_path):
    root, data, info, teacher, tinfo, reference = world
    out = tmp_path / "store"
    shutil.copytree(root / "reference", out)
    store = LogitStore.open(out)
    with open(store.epoch_path(0), "r+b") as f:
        f.truncate(1000)  # mid-record
    with open(store.epoch_path(1), "ab") as f:
        f.write(b"\0garbage")
    report, _ = scan_store(store, [0, 1])
    assert [e.file for e in report.epochs] == ["short", "extended"]
    assert report.epochs[0].bad_records == N - 1000 // store.record.size
    assert save(out, teacher, tinfo, data, info)["records_written"] == report.bad_records
    assert epoch_files(out) == reference
    os.unlink(store.epoch_path(1))
    assert scan_store(LogitStore.open(out), [1])[0].epochs[0].file == "missing"
    save(out, teacher, tinfo, data, info)
    assert epoch_files(out) == reference


def test_disk_budget_is_printed_first_and_enforced(world, tmp_path, monkeypatch):
    root, data, info, teacher, tinfo, reference = world
    import tinyvit_backbone.distill.save_logits as module

    messages = []
    save(tmp_path / "ok", teacher, tinfo, data, info, log=messages.append)
    assert messages[0].startswith("[save-logits] store ") and "when complete" in messages[0]
    assert "free on its file system" in messages[0] and "to write" in messages[0]
    full = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(module.shutil, "disk_usage",
                        lambda path: full._replace(free=900))
    with pytest.raises(StoreError, match=r"needs 9.2 kB more but its file system has 900 B "
                                         r"free.*--force"):
        save(tmp_path / "tight", teacher, tinfo, data, info)
    assert not list((tmp_path / "tight").glob("epoch_*"))
    messages.clear()
    save(tmp_path / "tight", teacher, tinfo, data, info, log=messages.append, force=True)
    assert any("starting anyway (--force)" in m for m in messages)
    assert epoch_files(tmp_path / "tight") == reference


# ------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """An ImageFolder of 40 digit scans, a teacher, an arch file and a 2-epoch store."""
    root = tmp_path_factory.mktemp("repair_cli")
    write_digit_folder(root / "data", 40)
    write_test_teacher(root / "t.pth")
    (root / "arch.json").write_text(json.dumps(dict(
        embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 2],
        window_sizes=[8, 4, 2, 1])))
    args = ["save-logits", "--teacher", "test_resnet", "--teacher-checkpoint",
            str(root / "t.pth"), "--data", str(root / "data"), *CLI_ARGS]
    assert main([*args, "--out", str(root / "store")]) == 0
    return root, args, epoch_files(root / "store")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def damaged_copy(root, tmp_path, records=(3, 17)):
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    s = LogitStore.open(store)
    flip(s.epoch_path(0), [p * s.record.size + 5 for p in records])
    return store


def test_train_refuses_bad_records_and_the_printed_repair_command_works(cli, capsys, tmp_path):
    root, _, reference = cli
    store = damaged_copy(root, tmp_path)
    train = ["train", "--store", store, "--data", root / "data", "--arch", root / "arch.json",
             "--batch-size", 8, "--no-progress"]
    code, _, err = run(capsys, *train, "--out", tmp_path / "student")
    assert code == 2 and "epoch 0: 2 bad records of 40 checked" in err
    assert not (tmp_path / "student" / "last.pth").exists()  # refused before step 1
    command = err.split("with:\n  ", 1)[1].splitlines()[0]
    assert command.startswith("python -m tinyvit_backbone.distill save-logits ")
    assert command == repair_command(LogitStore.open(store))
    code, out, err = run(capsys, *shlex.split(command)[3:])  # exactly what the user would run
    assert code == 0 and json.loads(out)["records_repaired"] == 2
    assert epoch_files(store) == reference
    code, out, _ = run(capsys, *train, "--out", tmp_path / "student")
    assert code == 0 and json.loads(out)["skipped_bad_samples"] == 0


def test_train_can_skip_bad_samples_and_counts_them(cli, capsys, tmp_path):
    root, _, _ = cli
    store = damaged_copy(root, tmp_path, records=(3, 17, 30))
    code, out, err = run(capsys, "train", "--store", store, "--data", root / "data", "--arch",
                         root / "arch.json", "--batch-size", 8, "--no-progress",
                         "--skip-bad-samples", "--out", tmp_path / "student")
    result = json.loads(out)
    assert code == 0 and result["skipped_bad_samples"] == 3
    assert result["history"][0]["skipped_bad_samples"] == 3
    assert "3 samples with bad records will be left out" in err
    assert "3 samples with bad records skipped" in err
    log = [json.loads(line) for line in open(tmp_path / "student" / "log.jsonl")]
    assert log[0]["skipped_bad_samples"] == 3 and "skipped_bad_samples" not in log[1]


def test_verify_reports_every_bad_record_and_file(cli, capsys, tmp_path):
    root, _, _ = cli
    store = damaged_copy(root, tmp_path, records=(1, 2, 3, 20))
    s = LogitStore.open(store)
    with open(s.epoch_path(1), "r+b") as f:
        f.truncate(10 * s.record.size)
    code, out, _ = run(capsys, "verify", "--store", store, "--data", root / "data",
                       "--num-records", 8)
    report = json.loads(out)
    epochs = report["integrity"]["epochs"]
    assert code == 1 and not report["ok"] and report["integrity"]["bad_records"] == 4 + 30
    assert epochs["0"]["bad_records"] == 4 and len(epochs["0"]["first_bad"]) == 4
    assert epochs["1"]["file"] == "short" and epochs["1"]["bad_records"] == 30
    assert report["agreement"]["records"] == 8  # measured on the sound records
    assert report["repair"].startswith("python -m tinyvit_backbone.distill save-logits")
    assert "truncated" in report["summary"]
    os.unlink(s.epoch_path(1))
    code, out, _ = run(capsys, "verify", "--store", store, "--data", root / "data",
                       "--num-records", 4)
    assert code == 1 and json.loads(out)["integrity"]["epochs"]["1"]["file"] == "missing"


def test_damaged_manifest_is_rebuilt_by_the_same_command(cli, capsys, tmp_path):
    root, args, reference = cli
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    (store / "manifest.json").write_text('{"format": "tinyvit-distill-store", "format_')
    code, _, err = run(capsys, *args, "--out", store)
    assert code == 2 and "not valid JSON" in err and "--rebuild-manifest" in err
    code, out, _ = run(capsys, *args, "--out", store, "--rebuild-manifest")
    result = json.loads(out)
    assert code == 0 and result["records_written"] == 0 and result["epochs_complete"] == [0, 1]
    assert epoch_files(store) == reference


def test_disk_filling_up_mid_epoch_stops_clearly_and_resumes(cli, tmp_path):
    root, _, _ = cli
    write_digit_folder(tmp_path / "data", 120)
    args = ["save-logits", "--teacher", "test_resnet", "--teacher-checkpoint",
            str(root / "t.pth"), "--data", str(tmp_path / "data"), "--aug-preset", "digits",
            "--epochs", "1", "--topk", "10", "--batch-size", "8", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "reference")]) == 0
    reference = epoch_files(tmp_path / "reference")
    store = tmp_path / "store"
    # A file-size limit stands in for a full disk: the manifest (~2 kB) fits, the 5.8 kB epoch
    # file stops at 4010 bytes, in the middle of record 83 (48-byte records).
    limit = 4010

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    proc = subprocess.run([sys.executable, "-m", "tinyvit_backbone.distill", *args, "--out",
                           str(store)], cwd=REPO, preexec_fn=small_disk, capture_output=True,
                          text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 2, proc.stderr
    assert "error: the file system refused more bytes" in proc.stderr
    assert "rerun save-logits with the same arguments" in proc.stderr
    assert "Traceback" not in proc.stderr
    s = LogitStore.open(store)
    assert s.epochs_complete == []  # nothing half-written counts as done
    assert s.file_size(0) == limit
    report, bad = scan_store(s, [0])
    assert report.epochs[0].file == "short" and bad[0].tolist() == list(range(83, 120))
    assert main([*args, "--out", str(store)]) == 0  # space freed: the same command resumes
    assert epoch_files(store) == reference


def test_a_second_writer_is_refused_and_a_killed_one_blocks_nothing(cli, capsys, tmp_path):
    root, args, reference = cli
    store = tmp_path / "store"
    slow = [a if a != "2" else "40" for a in args]  # --epochs 40: runs long enough
    proc = subprocess.Popen([sys.executable, "-m", "tinyvit_backbone.distill", *slow, "--out",
                             str(store)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            lock = store / ".writer.lock"
            if lock.exists() and f'"pid": {proc.pid}' in lock.read_text():
                break
            time.sleep(0.05)
        assert proc.poll() is None
        code, _, err = run(capsys, *args, "--out", store)
        assert code == 2 and "being written by another job (save-logits on host" in err
        assert f"pid {proc.pid}" in err
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert main([*args, "--out", str(store)]) == 0  # the killed writer left no lock behind
    assert {k: v for k, v in epoch_files(store).items() if k in reference} == reference


def test_format_1_store_converts_in_place_and_its_gaps_are_computed(cli, capsys, tmp_path):
    root, _, _ = cli
    fixture = os.path.join(REPO, "tests", "fixtures", "distill_store_v1")
    store = tmp_path / "v1"
    shutil.copytree(fixture, store)
    manifest = json.loads((store / "manifest.json").read_text())
    # The fixture's teacher is the seeded test teacher, saved again here (same weights).
    from tinyvit_backbone.files import sha256_file

    manifest["teacher"].update(checkpoint=str(root / "t.pth"),
                               checkpoint_sha256=sha256_file(root / "t.pth"))
    (store / "manifest.json").write_text(json.dumps(manifest))
    size, n = manifest["record"]["bytes"], manifest["dataset"]["num_samples"]
    original = [(store / f"epoch_000{e}.bin").read_bytes() for e in (0, 1)]
    flip(store / "epoch_0000.bin", [700 * size + 9])  # one damaged format-1 record
    code, out, err = run(capsys, "convert-store", "--store", store)
    result = json.loads(out)
    assert code == 0 and result["epochs"]["0"]["records_to_compute"] == 1
    assert result["epochs_complete"] == [1] and not list(store.glob("*.bin"))
    converted = LogitStore.open(store)
    order = converted.order(0).order
    for epoch in (0, 1):
        rows = converted.read_rows(epoch, 0, n)
        by_sample = np.frombuffer(original[epoch], np.uint8).reshape(n, size)[order if epoch == 0
                                                                              else converted.order(1).order]
        same = (rows[:, :-4] == by_sample[:, :-4]).all(axis=1)  # payloads moved, not changed
        assert same.sum() == n - (epoch == 0)
    report, bad = scan_store(converted, [0, 1])
    assert report.bad_records == 1 and order[bad[0]].tolist() == [700]
    # The store's own repair command recomputes exactly that record, identical to the original.
    code, out, _ = run(capsys, *shlex.split(repair_command(converted))[3:])
    assert code == 0 and json.loads(out)["records_written"] == 1
    repaired = LogitStore.open(store)
    position = int(repaired.order(0).position[700])
    assert bytes(repaired.read_rows(0, position, position + 1)[0, :-4]) == \
        original[0][700 * size: 701 * size - 4]
    assert scan_store(repaired, [0, 1])[0].sound
