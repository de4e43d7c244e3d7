"""torchrun with 2 CPU processes (gloo): the store's bytes equal a 1-process run; DDP training runs."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import write_digit_folder, write_test_teacher
from tinyvit_backbone.distill.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 2],
            window_sizes=[8, 4, 2, 1])


def torchrun(*args, timeout=240):
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([exe, "--standalone", "--nproc-per-node", "2", "-m",
                           "tinyvit_backbone.distill", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_process_store_equals_one_process_store_and_ddp_trains(tmp_path):
    write_digit_folder(tmp_path / "data", 120)
    write_test_teacher(tmp_path / "t.pth")
    (tmp_path / "arch.json").write_text(json.dumps(ARCH))
    args = ["save-logits", "--teacher", "test_resnet", "--teacher-checkpoint", tmp_path / "t.pth",
            "--data", tmp_path / "data", "--aug-preset", "digits", "--epochs", "2", "--topk", "3",
            "--batch-size", "8", "--no-progress"]
    assert main([str(a) for a in [*args, "--out", tmp_path / "one"]]) == 0
    torchrun(*args, "--out", tmp_path / "two", "--workers", "2")
    for epoch in (0, 1):
        name = f"epoch_{epoch:04d}.bin"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["epochs_complete"] == [0, 1]

    proc = torchrun("train", "--store", tmp_path / "two", "--data", tmp_path / "data", "--arch",
                    tmp_path / "arch.json", "--out", tmp_path / "ddp", "--batch-size", "8",
                    "--no-progress")
    result = json.loads(proc.stdout)  # printed once, by rank 0
    assert result["config"]["world_size"] == 2 and len(result["history"]) == 2
    assert os.path.isfile(tmp_path / "ddp" / "student.pth")
