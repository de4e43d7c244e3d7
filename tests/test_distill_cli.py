"""The CLI: help, the happy path on an ImageFolder tree, and clear refusals of bad input."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import write_digit_folder, write_test_teacher
from tinyvit_backbone.distill.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCH = dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 2],
            window_sizes=[8, 4, 2, 1])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """An ImageFolder of 40 digit scans, a teacher checkpoint, an arch file and a store."""
    root = tmp_path_factory.mktemp("cli")
    write_digit_folder(root / "data", 40)
    write_test_teacher(root / "t.pth")
    (root / "arch.json").write_text(json.dumps(ARCH))
    common = ["--teacher", "test_resnet", "--teacher-checkpoint", str(root / "t.pth"),
              "--data", str(root / "data"), "--aug-preset", "digits", "--no-progress"]
    assert main(["save-logits", *common, "--out", str(root / "store"), "--epochs", "2",
                 "--topk", "3", "--batch-size", "8"]) == 0
    return root, common


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_help_of_every_command(capsys):
    for cmd in ("save-logits", "verify", "train", "finetune", "mini-repro", "convert-store"):
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--help"])
        assert exit_.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_train_verify_finetune_happy_path(env, capsys):
    root, _ = env
    data = root / "data"
    code, out, _ = run(capsys, "verify", "--store", root / "store", "--data", data,
                       "--num-records", 16)
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["agreement"]["records"] == 16
    code, out, _ = run(capsys, "train", "--store", root / "store", "--data", data, "--arch",
                       root / "arch.json", "--out", root / "student", "--batch-size", 8,
                       "--no-progress")
    result = json.loads(out)
    assert code == 0 and len(result["history"]) == 2  # default: every complete store epoch
    assert os.path.isfile(root / "student" / "student.pth")
    code, out, _ = run(capsys, "finetune", "--init", root / "student" / "student.pth", "--data",
                       data, "--arch", root / "arch.json", "--out", root / "ft", "--epochs", 1,
                       "--batch-size", 8, "--warmup-epochs", 0, "--no-progress")
    result = json.loads(out)
    assert code == 0 and result["config"]["settings"]["layer_decay"] == 0.8
    assert result["config"]["settings"]["bn_eval"] is True
    assert result["config"]["aug"]["mixup"] == result["config"]["aug"]["cutmix"] == 0.0


@pytest.mark.parametrize("extra, words", [
    (["--mixup", "0"], "the augmentation differs from the store's: mixup 0.0 (store: 0.8)"),
    (["--seed", "5"], "seed 5 differs from the store's (0)"),
    (["--epochs", "3"], "3 epochs asked, but the store plans 2"),
    (["--num-classes", "7"], "7 classes, but the store holds 10-class records"),
    (["--arch", "tiny"], "--arch: unknown TinyViT arch 'tiny'"),
    (["--batch-size", "7"], "must be even"),
])
def test_train_refuses_mismatches(env, capsys, extra, words):
    root, _ = env
    argv = ["train", "--store", root / "store", "--data", root / "data", "--out",
            root / "bad", "--no-progress", "--arch", root / "arch.json", "--batch-size", "8"]
    code, _, err = run(capsys, *argv, *extra)
    assert code == 2 and words in err, err


def test_train_refuses_another_dataset(env, capsys):
    root, _ = env
    code, _, err = run(capsys, "train", "--store", root / "store", "--data", "digits", "--out",
                       root / "bad", "--arch", root / "arch.json", "--no-progress")
    assert code == 2 and "pass the same dataset" in err and "40 samples" in err


def test_every_mismatch_is_listed_at_once(env, capsys):
    root, _ = env
    code, _, err = run(capsys, "train", "--store", root / "store", "--data", root / "data",
                       "--out", root / "bad", "--arch", root / "arch.json", "--mixup", "0",
                       "--seed", "5", "--epochs", "3", "--no-progress")
    assert code == 2 and err.count("\n  ") == 3 and "does not fit store" in err


@pytest.mark.parametrize("change, words", [
    ({"--teacher-checkpoint": "/nonexistent/t.pth"}, "teacher checkpoint '/nonexistent/t.pth' not found"),
    ({"--teacher": "no_such_net"}, "unknown timm model 'no_such_net'"),
    ({"--teacher": "test_vit"}, "does not fit timm model 'test_vit'"),
    ({"--data": "/nonexistent/data"}, "neither 'digits' nor an existing folder"),
])
def test_save_logits_refuses_bad_teacher_or_data(env, capsys, tmp_path, change, words):
    _, common = env
    argv = list(common)
    for flag, value in change.items():
        argv[argv.index(flag) + 1] = value
    code, _, err = run(capsys, "save-logits", *argv, "--out", tmp_path / "s")
    assert code == 2 and words in err, err
    assert not (tmp_path / "s" / "epoch_0000.bin").exists()


def test_bad_flag_values_are_explained(env, capsys, tmp_path):
    _, common = env
    code, _, err = run(capsys, "save-logits", *common, "--out", tmp_path / "s",
                       "--teacher-kwargs", "{img_size: 32}")
    assert code == 2 and "--teacher-kwargs must be a JSON object" in err
    code, _, err = run(capsys, "save-logits", *common, "--out", tmp_path / "s", "--mean", "0.5")
    assert code == 2 and "three numbers" in err
    code, _, err = run(capsys, "save-logits", *common, "--out", tmp_path / "s", "--topk", "11")
    assert code == 2 and "top-K must be in 1..10" in err


HEAVY = {"torch", "timm", "torchvision", "mmengine", "mmdet", "mmseg"}
HELP = """
import sys, types
if sys.argv[1] == "light-core":  # the package's own __init__ left out: what distill needs
    core = types.ModuleType("tinyvit_backbone")
    core.__path__ = ["tinyvit_backbone"]
    sys.modules["tinyvit_backbone"] = core
from tinyvit_backbone.distill.__main__ import main
try:
    main(["save-logits", "--help"])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m.split(".")[0] in {heavy}))
"""


def _help_imports(mode: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", HELP.format(heavy=sorted(HEAVY)), mode],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return {m.split(".")[0] for m in eval(proc.stdout.strip().splitlines()[-1])}


def test_help_imports_nothing_heavy_of_its_own():
    """The distillation CLI's parser needs no torch, timm, mmengine, mmdet or mmseg."""
    assert _help_imports("light-core") == set()


def test_help_does_not_load_the_detection_stacks():
    core = subprocess.run([sys.executable, "-c", "import sys, tinyvit_backbone; "
                           "print('mmdet' in sys.modules or 'mmseg' in sys.modules)"],
                          cwd=REPO, capture_output=True, text=True)
    if core.stdout.strip() == "True":
        pytest.skip("tinyvit_backbone/__init__.py still registers into mmdet and mmseg on import")
    assert not _help_imports("as-installed") & {"mmdet", "mmseg"}


def test_console_script_points_at_main():
    import importlib

    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    module, name = scripts["tinyvit-distill"].split(":")
    assert getattr(importlib.import_module(module), name) is main


def test_process_exit_code_and_message_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tinyvit_backbone.distill", "train", "--store",
         str(tmp_path / "none"), "--data", "digits", "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: logit store") and "Traceback" not in proc.stderr
