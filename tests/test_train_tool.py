"""tools/train.py's options, as mmdet's train.py has them: ``--resume [PATH]`` and the work-dir
precedence (flag, then config, then work_dirs/<config name>)."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import train as train_tool  # noqa: E402

CONFIG = str(ROOT / "det_configs/mask_rcnn_tinyvit5m_1x.py")


def _cfg(*flags):
    return train_tool.build_config(train_tool.parse_args([CONFIG, *flags]))


def test_resume_alone_continues_from_the_latest_checkpoint():
    cfg = _cfg("--resume")
    assert cfg.resume is True and cfg.load_from is None


def test_resume_with_a_path_continues_from_that_checkpoint(tmp_path):
    ckpt = tmp_path / "iter_4.pth"
    ckpt.write_bytes(b"x")
    cfg = _cfg("--resume", str(ckpt))
    assert cfg.resume is True and cfg.load_from == str(ckpt)


def test_resume_from_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no such checkpoint file"):
        _cfg("--resume", str(tmp_path / "nope.pth"))


def test_no_resume_by_default():
    assert not _cfg().get("resume", False)


def test_work_dir_precedence(tmp_path):
    assert _cfg().work_dir == str(Path("work_dirs") / "mask_rcnn_tinyvit5m_1x")
    assert _cfg("--cfg-options", f"work_dir={tmp_path}").work_dir == str(tmp_path)
    assert _cfg("--work-dir", str(tmp_path / "w"), "--cfg-options",
                f"work_dir={tmp_path}").work_dir == str(tmp_path / "w")
