"""tools/train.py's options, as mmdet's train.py has them: ``--resume [PATH]`` and the work-dir
precedence (flag, then config, then work_dirs/<config name>)."""
import sys
from pathlib import Path

import pytest

from bench.common import subprocess_env

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


def test_help_is_whole_and_every_option_explained(capsys):
    with pytest.raises(SystemExit):
        train_tool.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "optionally on the embedded scenes (the CPU overlay of" in text
    parser_actions = _parser()._actions
    for action in parser_actions:
        assert action.help, f"{action.option_strings or action.dest} has no help"


def _parser(call=lambda: train_tool.parse_args([CONFIG])):
    """The parser ``call`` builds (captured from its parse_args call)."""
    import argparse
    seen = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        seen["parser"] = self
        return original(self, *args, **kwargs)
    argparse.ArgumentParser.parse_args = capture
    try:
        call()
    except SystemExit:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    return seen["parser"]


@pytest.mark.parametrize("config, dataset, path", [
    ("det_configs/cascade_tinyvit21m.py", "coco",
     "data/coco/annotations/instances_train2017.json"),
    ("seg_configs/upernet_tinyvit5m_8xb2_160k_ade20k_512x512.py", "ade20k",
     "data/ade/ADEChallengeData2016/images/training")])
def test_missing_dataset_is_named_before_anything_starts(tmp_path, monkeypatch, capsys, config,
                                                         dataset, path):
    """No COCO / ADE20K: one message naming the missing files and the command that says how to
    get them, before the Runner logs its config or creates the work dir (it used to print ~890
    config lines, then a FileNotFoundError traceback, and leave a work dir read as a run in
    progress)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train_tool.main([str(ROOT / config)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith(f"error: the dataset of {ROOT / config} is not in place")
    assert path in message
    assert f"python -m linear_probe download --dataset {dataset} --data-root data" in message
    assert not (tmp_path / "work_dirs").exists() and "Config:" not in message


def test_embedded_names_follow_the_arch(tmp_path):
    """--arch on a config of another size: the work dir (and the overlay's config file) name
    the size trained, not the config's."""
    from tinyvit_backbone.config_overlay import overlay_name
    cfg = _cfg("--embedded", "--arch", "11m", "--data-root", str(tmp_path / "scenes"))
    assert cfg.work_dir == str(Path("work_dirs") / "mask_rcnn_tinyvit11m_1x_embedded")
    assert overlay_name("cascade_tinyvit21m", "5m") == "cascade_tinyvit5m"
    assert overlay_name("cascade_tinyvit21m", "results/s/arch_5.4M.json") == \
        "cascade_tinyvit-arch_5.4M"
    assert overlay_name("cascade_swin-t_1x", "5m") == "cascade_swin-t_1x_tinyvit5m"


def test_overlay_cli_names_its_output_after_the_arch(tmp_path, monkeypatch, capsys):
    from tinyvit_backbone.config_overlay import main as overlay_main
    monkeypatch.chdir(tmp_path)
    assert overlay_main([str(ROOT / "det_configs/mask_rcnn_tinyvit21m_1x.py"), "--arch", "5m",
                         "--data-root", str(tmp_path / "scenes")]) == 0
    assert (tmp_path / "work_dirs/embedded/mask_rcnn_tinyvit5m_1x.py").is_file()
    assert "mim train mmdet work_dirs/embedded/mask_rcnn_tinyvit5m_1x.py" in capsys.readouterr().out


def test_the_overlay_dataset_column_names_the_folder():
    """The segmentation table's dataset column: 'custom (scenes)', not the class 'BaseSeg'."""
    from mmengine.config import Config

    from reproduction.run_config import describe_dataset
    from tinyvit_backbone.config_overlay import apply_overlay
    cfg = apply_overlay(Config.fromfile(str(ROOT / "seg_configs/upernet_tinyvit5m_8xb2_160k_ade20k_512x512.py")),
                        "data/embedded/scenes", iters=2)
    assert describe_dataset(cfg.to_dict()) == "custom (scenes)"
    checkpoint = cfg.default_hooks.checkpoint
    assert checkpoint.max_keep_ckpts == 1 and checkpoint.save_optimizer is False
    many = apply_overlay(cfg, "data/embedded/scenes", iters=4, checkpoint_interval=2)
    assert many.default_hooks.checkpoint.save_optimizer is True


@pytest.mark.slow
def test_resume_after_the_last_iteration_evaluates_and_checkpoints_are_small(tmp_path):
    """A run stopped while being evaluated is resumed from its last checkpoint: there is no
    iteration left, and mmengine's loop used to end at once (exit 0, no metrics). Now the
    resumed launch evaluates. The smoke checkpoint holds no optimizer state, and only one is
    kept."""
    import glob
    import json
    import subprocess

    import torch
    wd = tmp_path / "w"
    argv = [str(ROOT / "seg_configs/upernet_tinyvit5m_8xb2_160k_ade20k_512x512.py"), "--embedded",
            "--iters", "2", "--image-size", "64", "--data-root", str(tmp_path / "scenes"),
            "--work-dir", str(wd)]

    def evaluations(launch):
        lines = (Path(launch) / "vis_data" / "scalars.json").read_text().splitlines()
        return [json.loads(line) for line in lines if "mIoU" in line]

    def launch(*extra):
        # a process per launch, as a user runs it (mmengine's visualizer is one per process)
        env = subprocess_env(ROOT)
        done = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), *argv, *extra],
                              capture_output=True, text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    launch()
    (first,) = sorted(glob.glob(str(wd / "2*_*")))
    assert len(evaluations(first)) == 1
    (checkpoint,) = glob.glob(str(wd / "iter_*.pth"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert "optimizer" not in state and state["meta"]["iter"] == 2
    assert "Training had ended at iteration 2 with no evaluation" in launch("--resume")
    second = sorted(glob.glob(str(wd / "2*_*")))[-1]
    assert second != first and len(evaluations(second)) == 1


def test_runner_from_cfg_checks_the_data_as_mim_runs_it(tmp_path, monkeypatch, capsys):
    """`mim train` runs mmdet's own tools/train.py, which builds the Runner from the config:
    the plugin's check there stops it before the work dir or the config dump, with the
    message alone under a train.py / test.py script (no traceback) and an exception elsewhere."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from tinyvit_backbone.config_data import DatasetNotInPlaceError, install_runner_check
    install_runner_check()
    install_runner_check()  # idempotent: one check, not two wrapped in each other
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(CONFIG)
    cfg.work_dir = str(tmp_path / "w")
    monkeypatch.setattr(sys, "argv", ["pytest"])
    with pytest.raises(DatasetNotInPlaceError, match="data/coco/annotations/instances_val2017.json"):
        Runner.from_cfg(cfg)
    monkeypatch.setattr(sys, "argv", ["/site-packages/mmdet/.mim/tools/train.py", CONFIG])
    with pytest.raises(SystemExit) as exit_info:
        Runner.from_cfg(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: the dataset of" in err and "instances_train2017.json" in err and "Traceback" not in err
    assert "--dataset coco --data-root data" in err and not (tmp_path / "w").exists()


def test_overlay_cli_explains_every_option():
    from tinyvit_backbone.config_overlay import main as overlay_main
    for action in _parser(lambda: overlay_main(["--help"]))._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help"
