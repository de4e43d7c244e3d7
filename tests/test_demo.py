"""The demo (`make demo`): device-dependent settings, stage order errors, and every stage in a
reduced form, rerun reusing what is done."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from reproduction.demo import DemoError, DemoSettings, format_summary, run_demo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


def test_settings_follow_the_device():
    cpu = DemoSettings.for_device(torch.device("cpu"))
    gpu = DemoSettings.for_device(torch.device("cuda", 0))
    assert not cpu.amp and gpu.amp
    assert gpu.batch_size > cpu.batch_size and gpu.det_iters > cpu.det_iters
    small = cpu.reduced()
    assert small.det_iters < cpu.det_iters and small.distill_scale == "smoke"


def test_device_selection_is_used_without_flags(monkeypatch, tmp_path):
    """On a GPU machine the demo picks the GPU settings by itself (no flags)."""
    import tinyvit_backbone.device as device
    seen = {}

    def fake_run(out, settings=None, **kwargs):
        seen["settings"] = settings
        return {"seconds": {}}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device.select_device().type == "cuda"
    import demo as demo_cli
    monkeypatch.setattr("reproduction.demo.run_demo", fake_run)
    assert demo_cli.main(["--out", str(tmp_path)]) == 0
    assert seen["settings"].amp and seen["settings"].batch_size == 8


def test_a_stage_without_its_inputs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(DemoError, match="needs the distilled student"):
        run_demo(str(tmp_path), config_root=str(ROOT), settings=DemoSettings().reduced(),
                 stages=["detect"], log=lambda m: None)
    import demo as demo_cli
    assert demo_cli.main(["--out", str(tmp_path), "--stages", "probe"]) == 2
    assert "needs the students" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo_cli.main(["--stages", "nonsense"])


@pytest.mark.slow
@pytest.mark.requires_mmcv_ops
def test_reduced_demo_runs_every_stage_and_reuses_on_rerun(tmp_path):
    out = str(tmp_path / "demo")
    lines = []
    summary = run_demo(out, config_root=str(ROOT), settings=DemoSettings().reduced(), log=lines.append)
    assert set(summary["seconds"]) == {"distill", "detect", "segment", "probe", "tables"}
    assert "coco/bbox_mAP" in summary["detect"] and "mIoU" in summary["segment"]
    assert len(summary["probe"]) == 3
    for rel in ("tables/tables.md", "tables/coco.csv", "tables/table6.md",
                "tables/table5_linear.md", "tables/table5_fewshot.md", "probe/results.jsonl",
                "summary.json"):
        assert os.path.isfile(os.path.join(out, rel)), rel
    text = format_summary(summary)
    # the paper's layouts, published rows first, are shown to a newcomer
    assert "Table 6: COCO 2017 val" in text and "| published | TinyViT-21M (IN-21k ⚗) |" in text
    assert "Table 5 (left)" in text and "Table 5 (right)" in text
    # percent, like the tables: mmdet's fraction scaled once
    bbox = 100 * summary["detect"]["coco/bbox_mAP"]
    assert f"Mask R-CNN on scenes (%): bbox mAP {bbox:.1f}," in text
    tables = open(os.path.join(out, "tables", "tables.md")).read()
    assert "mask_rcnn_tinyvit_demo" in tables and "tinyvit-demo distilled" in tables
    records = [json.loads(line) for line in open(os.path.join(out, "probe", "results.jsonl"))]
    assert {r["task"] for r in records} == {"linear_probe", "kshot", "episodes"}

    lines.clear()
    again = run_demo(out, config_root=str(ROOT), settings=DemoSettings().reduced(), log=lines.append)
    for name in ("mask_rcnn_tinyvit_demo", "upernet_tinyvit_demo"):
        assert any(f"{name}: finished run found" in line for line in lines), name
    assert again["detect"] == summary["detect"]
    assert again["seconds"]["distill"] < summary["seconds"]["distill"]


def test_quick_and_full_demo_keep_separate_folders(monkeypatch):
    """`--quick` writes to results/demo-quick, the full demo to results/demo: a quick check
    never leaves outputs of other settings where `make demo` resumes."""
    import demo as demo_cli
    outs = []

    def fake_run(out, settings=None, **kwargs):
        outs.append((out, settings.distill_scale))
        return {"seconds": {}}
    monkeypatch.setattr("reproduction.demo.run_demo", fake_run)
    assert demo_cli.main(["--quick"]) == 0 and demo_cli.main(["--stages", "distill"]) == 0
    assert outs == [(str(ROOT / "results" / "demo-quick"), "smoke"),
                    (str(ROOT / "results" / "demo"), "demo")]


def test_help_names_every_stage(capsys):
    import demo as demo_cli

    from reproduction.demo import STAGES
    with pytest.raises(SystemExit):
        demo_cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "among " + ", ".join(STAGES) in text and "results/demo-quick" in text


def test_a_folder_of_other_settings_starts_afresh_with_a_line(tmp_path):
    """Same --out, other settings: the folder's demo outputs are removed (the scenes kept) and
    the run says so, instead of resuming checkpoints made for other settings."""
    from reproduction.demo import SETTINGS_FILE

    out = tmp_path / "demo"
    lines = []
    run_demo(str(out), config_root=str(ROOT), settings=DemoSettings().reduced(), stages=(),
             log=lines.append)
    recorded = json.loads((out / SETTINGS_FILE).read_text())
    assert recorded["distill_scale"] == "smoke" and not lines
    for rel in ("distill/teacher/last.pth", "work_dirs/x/last_checkpoint", "data/scenes/keep"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")
    run_demo(str(out), config_root=str(ROOT), settings=DemoSettings().reduced(), stages=(),
             log=lines.append)
    assert not lines and (out / "distill/teacher/last.pth").exists()  # same settings: reused
    run_demo(str(out), config_root=str(ROOT), settings=DemoSettings(), stages=(), log=lines.append)
    (line,) = lines
    assert "holds a demo made with other settings (distill_scale smoke -> demo" in line
    assert "starting it afresh" in line
    assert not (out / "distill").exists() and not (out / "work_dirs").exists()
    assert (out / "data/scenes/keep").exists()
    assert json.loads((out / SETTINGS_FILE).read_text())["distill_scale"] == "demo"


@pytest.mark.slow
def test_quick_then_other_settings_in_the_same_folder_runs(tmp_path, monkeypatch):
    """The sequence that failed: a quick demo, then one with other distillation settings in the
    same folder. It used to stop at 'last.pth belongs to a run with other settings'; now the
    second run starts afresh and finishes. (A second seconds-long scale stands in for the full
    demo's 'demo' scale, to keep the test short.)"""
    from dataclasses import replace

    from tinyvit_backbone.distill import reproduce as mini
    monkeypatch.setitem(mini.SCALES, "smoke-b", dict(mini.SCALES["smoke"], teacher_epochs=2))
    out = str(tmp_path / "demo")
    quick = DemoSettings().reduced()
    run_demo(out, config_root=str(ROOT), settings=quick, stages=["distill"], log=lambda m: None)
    lines = []
    summary = run_demo(out, config_root=str(ROOT), settings=replace(quick, distill_scale="smoke-b"),
                       stages=["distill"], log=lines.append)
    assert any("starting it afresh" in line for line in lines)
    assert summary["distill"]["accuracy"]["teacher"] > 0
