"""A save-logits run killed with SIGKILL, once or at 10 random moments, resumes to a store
byte-identical to an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.helpers import epoch_files, write_digit_folder, write_test_teacher
from tinyvit_backbone.distill.__main__ import main
from tinyvit_backbone.distill.arguments import AUG_PRESETS
from tinyvit_backbone.distill.datasets import open_dataset
from tinyvit_backbone.distill.integrity import scan_store
from tinyvit_backbone.distill.replay import AugConfig
from tinyvit_backbone.distill.save_logits import SaveSettings, save_logits
from tinyvit_backbone.distill.store import LogitStore
from tinyvit_backbone.distill.teacher import load_teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--epochs", "2", "--topk", "4", "--batch-size", "2", "--seed", "3", "--aug-preset",
        "digits", "--block-kib", "4", "--no-progress"]
NUM_IMAGES = 300
ENV = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An ImageFolder of real digit scans, a teacher, and the uninterrupted store's bytes."""
    root = tmp_path_factory.mktemp("resume")
    folder = str(write_digit_folder(root / "folder", NUM_IMAGES))
    ckpt = str(write_test_teacher(root / "teacher.pth"))
    aug = AugConfig(**AUG_PRESETS["digits"])
    ds, info = open_dataset(folder, "train")
    teacher, tinfo = load_teacher("test_resnet", ckpt, 10, data_mean=aug.mean, data_std=aug.std)
    save_logits(str(root / "ref"), teacher, tinfo, ds, info, aug,
                SaveSettings(topk=4, epochs=2, batch_size=2, seed=3, block_bytes=4096),
                device=torch.device("cpu"), progress=False, log=lambda _: None)
    return folder, ckpt, epoch_files(root / "ref")


def _args(ckpt, folder, out):
    return ["save-logits", "--teacher", "test_resnet", "--teacher-checkpoint", ckpt,
            "--out", str(out), "--data", folder, *ARGS]


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "tinyvit_backbone.distill", *args], cwd=REPO,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _valid(out, epoch):
    store = LogitStore.open(out)
    report, _ = scan_store(store, [epoch])
    return report.epochs[0].records_checked - report.epochs[0].bad_records


def test_sigkill_mid_epoch_then_resume_is_byte_identical(tmp_path, setup):
    folder, ckpt, reference = setup
    out = tmp_path / "store"
    proc = _start(_args(ckpt, folder, out))
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if (out / "epoch_0001.records").exists() and _valid(out, 1) >= 4:
                break  # epoch 0 done, epoch 1 begun: kill it mid-epoch
            time.sleep(0.005)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert LogitStore.open(out).epochs_complete == [0]
    assert 0 < _valid(out, 1) < NUM_IMAGES
    # Resume (with 2 DataLoader workers this time): only the missing records are computed.
    assert main([*_args(ckpt, folder, out), "--workers", "2"]) == 0
    assert LogitStore.open(out).epochs_complete == [0, 1]
    assert epoch_files(out) == reference


def _progress(out) -> int:
    """Sound records written so far, both epochs (0 before the manifest exists)."""
    if not (out / "manifest.json").exists():
        return 0
    return sum(_valid(out, e) for e in (0, 1))


@pytest.mark.slow
def test_ten_sigkills_at_random_moments_then_byte_identical(tmp_path, setup):
    """Ten runs, each SIGKILLed once the store holds a random number of records (drawn over
    5-80% of the run, so every kill lands mid-run whatever the machine's speed); the eleventh
    run finishes the store, byte-identical to the uninterrupted one."""
    folder, ckpt, reference = setup
    out = tmp_path / "store"
    total = 2 * NUM_IMAGES
    rng = np.random.default_rng(0)
    points = np.sort(rng.choice(np.arange(int(0.05 * total), int(0.8 * total)), 10,
                                replace=False))
    progress = []
    for point in points:
        proc = _start(_args(ckpt, folder, out))
        try:
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None and _progress(out) < point:
                time.sleep(0.005)
            assert proc.poll() is None, (f"the run ended before record {point} could be "
                                         f"reached: {proc.stderr.read()}")
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        progress.append(_progress(out))
    assert progress[-1] < total and progress == sorted(progress)
    assert main(_args(ckpt, folder, out)) == 0
    assert epoch_files(out) == reference


@pytest.mark.parametrize("flag, value, words", [
    ("--topk", "5", "record.topk: store has 4, this run has 5"),
    ("--seed", "4", "seed: store has 3, this run has 4"),
    ("--mixup", "0", "augmentation.mixup"),
    ("--value-format", "log8", "record.values: store has 'fp16', this run has 'log8'"),
])
def test_resume_with_other_settings_is_refused(tmp_path, capsys, flag, value, words):
    ckpt = str(write_test_teacher(tmp_path / "teacher.pth"))
    out = tmp_path / "store"
    store_args = ["save-logits", "--teacher", "test_resnet", "--teacher-checkpoint", ckpt,
                  "--out", str(out), "--data", "digits"]
    # A store with no epoch written yet is enough to pin the settings.
    assert main([*store_args, *ARGS, "--epochs", "0"]) == 0
    args = list(ARGS)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main([*store_args, *args]) == 2
    err = capsys.readouterr().err
    assert "was written with other settings" in err and words in err
    assert "Traceback" not in err
    assert LogitStore.open(out).epochs_complete == []
