"""torchrun with 2 and 3 CPU processes (gloo): each process writes only its own aligned blocks,
a store started with 2 processes and resumed with 3 equals a 1-process store, and DDP trains."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import (
    blocks_written,
    epoch_files,
    kill_tree,
    read_traces,
    write_digit_folder,
    write_test_teacher,
)
from tinyvit_backbone.distill.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 2],
            window_sizes=[8, 4, 2, 1])
BLOCK = 4096  # 48-byte records: 85 per block, 5 blocks per epoch of 400 images
ENV = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def torchrun_cmd(nproc, *args, module="tinyvit_backbone.distill"):
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    return [exe, "--standalone", "--nproc-per-node", str(nproc), "-m", module, *map(str, args)]


def torchrun(nproc, *args, module="tinyvit_backbone.distill", timeout=300):
    proc = subprocess.run(torchrun_cmd(nproc, *args, module=module), cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_disjoint(blocks: dict[int, set]):
    ranks = sorted(blocks)
    for i, a in enumerate(ranks):
        for b in ranks[i + 1:]:
            assert not blocks[a] & blocks[b], f"ranks {a} and {b} wrote the same block"


@pytest.mark.slow
def test_two_then_three_processes_write_disjoint_blocks_and_equal_one_process(tmp_path):
    write_digit_folder(tmp_path / "data", 400)
    write_test_teacher(tmp_path / "t.pth")
    args = ["save-logits", "--teacher", "test_resnet", "--teacher-checkpoint", tmp_path / "t.pth",
            "--data", tmp_path / "data", "--aug-preset", "digits", "--epochs", "2", "--topk",
            "10", "--batch-size", "8", "--block-kib", str(BLOCK // 1024), "--no-progress"]
    assert main([str(a) for a in [*args, "--out", tmp_path / "one"]]) == 0
    reference = epoch_files(tmp_path / "one")
    store = tmp_path / "many"
    # 2 processes, all killed once part of the first epoch is written
    proc = subprocess.Popen(torchrun_cmd(2, "trace-writes", tmp_path / "trace2", "--", *args,
                                         "--out", store, module="tests.helpers"),
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        first = store / "epoch_0000.records"
        while time.time() < deadline and proc.poll() is None:
            if first.exists() and first.stat().st_size > 2 * BLOCK:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the 2-process run ended before it could be killed"
    finally:
        kill_tree(proc.pid)  # torchrun and both workers, mid-epoch
        proc.wait()
    time.sleep(1)  # let the killed workers be reaped before judging the files
    assert epoch_files(store) != reference
    # ... resumed by 3 processes: the same bytes as one process writing it all
    torchrun(3, "trace-writes", tmp_path / "trace3", "--", *args, "--out", store,
             module="tests.helpers")
    assert epoch_files(store) == reference
    for trace, nproc in ((tmp_path / "trace2", 2), (tmp_path / "trace3", 3)):
        traces = read_traces(trace)
        assert len(traces) == nproc and all(traces.values()), traces.keys()  # all did write
        assert_disjoint(blocks_written(traces, BLOCK))

    (tmp_path / "arch.json").write_text(json.dumps(ARCH))
    proc = torchrun(2, "train", "--store", store, "--data", tmp_path / "data", "--arch",
                    tmp_path / "arch.json", "--out", tmp_path / "ddp", "--batch-size", "8",
                    "--no-progress")
    result = json.loads(proc.stdout)  # printed once, by rank 0
    assert result["config"]["world_size"] == 2 and len(result["history"]) == 2
    assert os.path.isfile(tmp_path / "ddp" / "student.pth")
