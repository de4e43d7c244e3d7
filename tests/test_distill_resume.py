"""A save-logits run killed with SIGKILL mid-epoch resumes to a byte-identical store."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.helpers import write_digit_folder, write_test_teacher
from tinyvit_backbone.distill.__main__ import main
from tinyvit_backbone.distill.datasets import open_dataset
from tinyvit_backbone.distill.save_logits import SaveSettings, save_logits
from tinyvit_backbone.distill.store import LogitStore
from tinyvit_backbone.distill.teacher import load_teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--epochs", "2", "--topk", "4", "--batch-size", "2", "--seed", "3", "--aug-preset",
        "digits", "--no-progress"]
NUM_IMAGES = 300


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """An ImageFolder tree of real digit scans (the CLI's other data source)."""
    return str(write_digit_folder(tmp_path_factory.mktemp("folder"), NUM_IMAGES))


def _teacher(tmp_path):
    return str(write_test_teacher(tmp_path / "teacher.pth"))


def _reference(tmp_path, ckpt, folder):
    from tinyvit_backbone.distill.__main__ import AUG_PRESETS
    from tinyvit_backbone.distill.replay import AugConfig

    aug = AugConfig(**AUG_PRESETS["digits"])
    ds, info = open_dataset(folder, "train")
    teacher, tinfo = load_teacher("test_resnet", ckpt, 10, data_mean=aug.mean, data_std=aug.std)
    save_logits(str(tmp_path / "ref"), teacher, tinfo, ds, info, aug,
                SaveSettings(topk=4, epochs=2, batch_size=2, seed=3),
                device=torch.device("cpu"), progress=False, log=lambda _: None)
    return [open(tmp_path / "ref" / f"epoch_000{e}.bin", "rb").read() for e in (0, 1)]


def _epochs(out):
    return [open(out / f"epoch_000{e}.bin", "rb").read() for e in (0, 1)]


def test_sigkill_mid_epoch_then_resume_is_byte_identical(tmp_path, image_folder):
    ckpt = _teacher(tmp_path)
    out = tmp_path / "store"
    args = ["save-logits", "--teacher", "test_resnet", "--teacher-checkpoint", ckpt,
            "--out", str(out), "--data", image_folder, *ARGS]
    cmd = [sys.executable, "-m", "tinyvit_backbone.distill", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    valid, deadline = 0, time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if (out / "epoch_0001.bin").exists():
                valid = int(LogitStore.open(out).valid_mask(1).sum())
                if valid >= 4:  # epoch 0 done, epoch 1 begun: kill it mid-epoch
                    break
            time.sleep(0.005)
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = LogitStore.open(out)
    killed_valid = int(store.valid_mask(1).sum())
    assert 0 < killed_valid < NUM_IMAGES and store.epochs_complete == [0]

    # Resume (with 2 DataLoader workers this time): only the missing batches are computed.
    reference = _reference(tmp_path, ckpt, image_folder)
    assert main([*args, "--workers", "2"]) == 0
    store = LogitStore.open(out)
    assert store.epochs_complete == [0, 1]
    assert _epochs(out) == reference
    # A damaged record is recomputed by the next run, and the bytes are identical again.
    with open(out / "epoch_0001.bin", "r+b") as f:
        f.seek(5 * store.dtype.itemsize + 5)
        f.write(b"\xff")
    assert not LogitStore.open(out).valid_mask(1)[5]
    store.manifest["epochs_complete"] = [0]
    from tinyvit_backbone.files import atomic_write_json

    atomic_write_json(out / "manifest.json", store.manifest)
    assert main(args) == 0
    assert _epochs(out) == reference


@pytest.mark.parametrize("flag, value, words", [
    ("--topk", "5", "record.topk: store has 4, this run has 5"),
    ("--seed", "4", "seed: store has 3, this run has 4"),
    ("--mixup", "0", "augmentation.mixup"),
])
def test_resume_with_other_settings_is_refused(tmp_path, capsys, flag, value, words):
    ckpt = _teacher(tmp_path)
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
    assert np.all(LogitStore.open(out).epochs_complete == [])
