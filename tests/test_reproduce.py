"""tools/reproduce.py: one command per paper table, on hand-made inputs."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "tables"
sys.path.insert(0, str(ROOT / "tools"))

import reproduce as reproduce_cli  # noqa: E402

from reproduction.reproduce import parse_weights, reproduce_table6, train_command  # noqa: E402


def test_weights_rows_are_parsed_and_checked():
    assert parse_weights(["in21k_distill=tiny_vit_21m_22k_distill", "in1k=w.pth"]) == {
        "in21k-distill": "tiny_vit_21m_22k_distill", "in1k": "w.pth"}
    with pytest.raises(ValueError, match="must be one of"):
        parse_weights(["imagenet=w.pth"])
    with pytest.raises(ValueError, match="ROW=WEIGHTS"):
        parse_weights(["in1k"])


def test_table6_collects_the_runs_it_finds(tmp_path, capsys):
    out = tmp_path / "t6"
    code = reproduce_cli.main(["table6", "--work-dirs", str(FIX / "work_dirs"), "--out", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runs"]["cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco"] == "complete"
    md = (out / "table6.md").read_text()
    assert "| ours | TinyViT-21M (IN-21k ⚗) |" in md and "| published | Swin-T |" in md
    assert any("cascade_swin-t_1x.py" in m for m in summary["missing"])
    assert (out / "table6.csv").is_file()


def test_table6_train_runs_only_the_missing_rows_then_collects(tmp_path):
    """--train launches one training per row without a complete run (here: a stand-in that
    copies a finished work dir into place), then the table holds them."""
    finished = FIX / "work_dirs" / "cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco"
    commands = []

    def runner(cmd):
        commands.append(cmd)
        wd = Path(cmd[cmd.index("--work-dir") + 1])
        shutil.copytree(finished, wd)
        return 0

    summary = reproduce_table6([str(tmp_path / "none")], str(tmp_path / "out"), train=True,
                               config_root=str(ROOT), gpus=2, work_root=str(tmp_path / "wd"),
                               runner=runner, log=lambda m: None)
    configs = [next(c for c in cmd if c.endswith(".py") and "configs" in c) for cmd in commands]
    assert [os.path.basename(c) for c in configs] == [
        "cascade_swin-t_1x.py", "cascade_tinyvit21m_in1k.py", "cascade_tinyvit21m.py"]
    assert all("--nproc-per-node=2" in cmd for cmd in commands)
    assert len(summary["trained"]) == 3 and set(summary["runs"].values()) == {"complete"}


def test_table6_train_failure_says_how_to_resume(tmp_path):
    with pytest.raises(RuntimeError, match="rerun the same command to resume"):
        reproduce_table6([], str(tmp_path / "out"), train=True, config_root=str(ROOT), gpus=1,
                         work_root=str(tmp_path / "wd"), runner=lambda cmd: 3, log=lambda m: None)


def test_train_command_uses_torchrun_for_several_gpus():
    cmd = train_command("det_configs/cascade_tinyvit21m.py", 8)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=8"]
    assert cmd[-2:] == ["--launcher", "pytorch"]
    single = train_command("det_configs/cascade_tinyvit21m.py", 1)
    assert single[1].endswith("tools/train.py") and "--launcher" not in single
