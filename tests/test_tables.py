"""End-to-end: the hand-made inputs under tests/fixtures/tables give exactly the committed
Markdown and CSV, twice over byte for byte (plots included), and the CLI fails cleanly.

The fixtures cover a complete detection run resumed once and a second run of its config (a
duplicate), a detection run in progress (last line half-written), one that crashed while
starting (a log and nothing else, silent for days), one that is only a dumped config, malformed
runs (a non-JSON line; an evaluation lacking the segm metrics the config asked for; no dumped
config), a failed run (log ending in a traceback), a segmentation run finished by a test launch
and one still evaluating; probe results with malformed, duplicate and half-written lines; a
benchmark report with one bad figure. Whether a run is in progress or crashed depends on how
long it has been silent, so the tests read a copy of the work dirs whose file times they set:
every run written just now, except the crashed one.

After an intended change of the output, regenerate the expected files with
``TINYVIT_UPDATE_EXPECTED=1 python -m pytest tests/test_tables.py`` and review the diff.
"""
import filecmp
import importlib.util
import json
import os
import shutil
import time

import pytest

from reproduction.make import make_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "tables")
EXPECTED = os.path.join(FIX, "expected")
INPUTS = dict(result_files=[os.path.join(FIX, "results", "probe.jsonl"),
                            os.path.join(FIX, "results", "probe_running.jsonl"),
                            os.path.join(FIX, "results", "paper_protocols.jsonl")],
              bench_report=os.path.join(FIX, "bench", "report.json"))
CRASHED = "mask-rcnn_tinyvit-21m_fpn_1x_coco"  # silent for two days


@pytest.fixture(scope="module")
def work_dirs(tmp_path_factory):
    """The fixture work dirs, written just now, the crashed run two days ago."""
    root = tmp_path_factory.mktemp("tables_in") / "work_dirs"
    shutil.copytree(os.path.join(FIX, "work_dirs"), root)
    now = time.time()
    for folder, _, files in os.walk(root):
        for f in files:
            t = now - 2 * 86400 if os.path.relpath(folder, root).startswith(CRASHED) else now
            os.utime(os.path.join(folder, f), (t, t))
    return str(root)


@pytest.fixture(scope="module")
def args(work_dirs):
    return dict(INPUTS, work_dirs=[work_dirs])


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, args):
    out_a = tmp_path_factory.mktemp("tables_a")
    summary = make_tables(out_dir=str(out_a), **args)
    return out_a, summary


def _files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, fs in os.walk(folder) for f in fs)


def test_outputs_match_expected_markdown_and_csv(outputs):
    out, _ = outputs
    names = sorted(n for n in os.listdir(out) if n.endswith((".md", ".csv")))
    assert "tables.md" in names and "coco.csv" in names
    if os.environ.get("TINYVIT_UPDATE_EXPECTED"):
        os.makedirs(EXPECTED, exist_ok=True)
        for n in names:
            with open(os.path.join(out, n), "rb") as src, open(os.path.join(EXPECTED, n), "wb") as dst:
                dst.write(src.read())
        for stale in set(os.listdir(EXPECTED)) - set(names):
            os.remove(os.path.join(EXPECTED, stale))
    assert sorted(os.listdir(EXPECTED)) == names
    for n in names:
        with open(os.path.join(out, n), encoding="utf-8") as got, \
                open(os.path.join(EXPECTED, n), encoding="utf-8") as want:
            assert got.read() == want.read(), f"{n} differs from tests/fixtures/tables/expected"


def test_summary_reports_every_run_and_input_problem(outputs):
    _, summary = outputs
    assert summary["runs"] == {
        "cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco": "complete",
        "cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco_rerun": "complete",
        "faster-rcnn_tinyvit-21m_fpn_1x_coco": "malformed",
        "mask-rcnn_tinyvit-11m_fpn_1x_coco": "malformed",
        "mask-rcnn_tinyvit-21m_fpn_1x_coco": "crashed",
        "mask-rcnn_tinyvit-5m_fpn_1x_coco": "in progress",
        "orphan_run": "malformed",
        "retina_tinyvit-21m_1x_coco": "config only",
        "retina_tinyvit-5m_1x_coco": "failed",
        "upernet_tinyvit-21m_8xb2-160k_ade20k-512x512": "complete",
        "upernet_tinyvit-5m_8xb2-160k_ade20k-512x512": "in progress",
    }
    assert summary["tables"] == {"table6": 7, "table5_linear": 8, "table5_fewshot": 9,
                                 "ablations": 7, "coco": 14, "segmentation": 3,
                                 "linear_probe": 6, "kshot": 2, "episodes": 5, "models": 5}
    assert summary["records"] == 29
    malformed = "\n".join(summary["malformed"])
    assert "probe.jsonl:23: missing field 'metrics'" in malformed
    assert "probe.jsonl:24: not JSON" in malformed
    assert "188.0, expected percent" in malformed
    assert "images_per_s = -3.0" in malformed
    assert "scalars.json:2 is not a JSON line" in malformed
    assert "lacks coco/segm_mAP" in malformed
    assert any("probe_running.jsonl:2" in x for x in summary["in_progress"])
    assert any("epoch 7/12 (last line still being written)" in x for x in summary["in_progress"])
    assert any("OutOfMemoryError" in x for x in summary["failed"])
    assert any("duplicate result" in x for x in summary["warnings"])
    assert summary["crashed"] == [
        f"{CRASHED}: crashed while starting: launch 20240511_100000 logged no training line, "
        "and nothing was written for over 60 min, so the process is gone or hangs (mmengine "
        "logs no exception: look in the launcher's output or the job's stderr); fix the cause "
        "and rerun"]
    assert [x.split(":")[0] for x in summary["config_only"]] == ["retina_tinyvit-21m_1x_coco"]
    assert any(x.startswith("cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco, cascade-mask-rcnn_"
                            "tinyvit-21m_fpn_1x_coco_rerun: runs of the same config")
               for x in summary["warnings"])


def test_published_and_ours_side_by_side(outputs):
    out, _ = outputs
    coco = (out / "coco.md").read_text()
    assert ("| published | TinyViT-21M | 21.0 | Cascade Mask R-CNN | 1x | IN-21k ⚗ | COCO | 50.2 "
            "| 69.4 | 54.4 | 32.9 | 53.9 | 65.2 |") in coco
    # CocoMetric's fractions are shown in percent; the resumed run's newest launch is used.
    assert "| 49.8 | 69.1 | 54.1 | 32.5 | 53.2 | 65.5 | 43.1 |" in coco
    assert "(final val, epoch 12)" in coco
    seg = (out / "segmentation.md").read_text()
    assert "| 46.07 | 81.80 | 57.21 |" in seg and "(test 20240509_100000)" in seg


def test_same_inputs_give_byte_identical_outputs(outputs, args, tmp_path):
    out_a, summary_a = outputs
    summary_b = make_tables(out_dir=str(tmp_path), **args)
    assert summary_a == summary_b
    files = _files(out_a)
    assert files == _files(tmp_path)
    assert any(f.endswith(".png") for f in files)
    match, mismatch, errors = filecmp.cmpfiles(out_a, tmp_path, files, shallow=False)
    assert not mismatch and not errors


def test_no_temporary_files_left_and_plots_listed(outputs):
    out, summary = outputs
    files = _files(out)
    assert not [f for f in files if f.endswith(".tmp")]
    assert files == summary["files"]
    assert {"plots/accuracy_vs_params.png", "plots/accuracy_vs_throughput.png",
            "plots/fewshot_cifar-10.png", "plots/fewshot_cropdisease.png"} <= set(files)
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f) == summary


def _cli(*args):
    """tools/make_tables.py's main() in this process (a subprocess would re-import torch)."""
    spec = importlib.util.spec_from_file_location("make_tables_cli",
                                                  os.path.join(ROOT, "tools", "make_tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(args))


def test_cli_missing_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli("--work-dirs", str(tmp_path / "nope"), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: work dir not found") and "Traceback" not in err
    assert not out.exists()
    assert _cli("--results", str(tmp_path / "nope.jsonl"), "--out", str(out)) == 2
    assert "results file not found" in capsys.readouterr().err
    assert _cli("--bench", str(tmp_path / "nope.json"), "--out", str(out)) == 2
    assert "bench/run_all.py" in capsys.readouterr().err
    assert not out.exists()


def test_cli_writes_tables(work_dirs, tmp_path, capsys):
    assert _cli("--work-dirs", work_dirs, "--results",
                os.path.join(FIX, "results", "probe.jsonl"), "--out", str(tmp_path),
                "--no-plots") == 0
    assert "see tables.md" in capsys.readouterr().out
    assert not (tmp_path / "plots").exists()
    assert "## Not in the tables" in (tmp_path / "tables.md").read_text()


@pytest.mark.slow
def test_cli_in_a_fresh_process_gives_the_same_bytes(outputs, args, tmp_path):
    """Determinism across processes (PNG rendering included), through the real entry point."""
    import subprocess
    import sys
    out_a, _ = outputs
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "make_tables.py"), "--work-dirs",
         *args["work_dirs"], "--results", *args["result_files"], "--bench",
         args["bench_report"], "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    files = _files(out_a)
    assert files == _files(tmp_path)
    _, mismatch, errors = filecmp.cmpfiles(out_a, tmp_path, files, shallow=False)
    assert not mismatch and not errors


@pytest.mark.slow
@pytest.mark.requires_mmcv_ops
def test_other_backbones_are_counted_through_the_registry(tmp_path):
    """A Swin-T baseline run: its backbone is built by mmdet's registry (27.5M params)."""
    import shutil

    from reproduction.runs import read_run
    name = "cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco"
    wd = tmp_path / "swin"
    shutil.copytree(os.path.join(FIX, "work_dirs", name), wd)
    swin = ("dict(type='SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2], "
            "num_heads=[3, 6, 12, 24], window_size=7)")
    for cfg in [wd / f"{name}.py", *wd.glob("*/vis_data/config.py")]:
        text = cfg.read_text()
        start = text.index("backbone=dict(")
        end = text.index("neck=")
        cfg.write_text(text[:start] + f"backbone={swin},\n    " + text[end:])
    run = read_run(str(wd))
    assert run.status == "complete", run.reason
    assert run.config.backbone == "Swin-T"
    assert run.config.backbone_params_m == pytest.approx(27.520698), run.config.params_note
    assert run.config.params_note is None


def _rows(md: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| row")]


def test_paper_tables_hold_every_published_cell(outputs):
    """Table 5: 20 linear-probe and 48 few-shot numbers; Table 6: three rows of AP, AP50,
    AP75, APS, APM, APL; each in the paper's layout with its published row."""
    from reproduction import published as pub

    out, _ = outputs
    linear = [r for r in _rows(open(out / "table5_linear.md").read()) if r[0] == "published"]
    fewshot = [r for r in _rows(open(out / "table5_fewshot.md").read()) if r[0] == "published"]
    coco = [r for r in _rows(open(out / "table6.md").read()) if r[0] == "published"]
    assert [r[1] for r in linear] == ["IN-1k", "IN-1k ⚗", "IN-21k", "IN-21k ⚗"]
    assert [r[1] for r in fewshot] == ["IN-1k", "IN-1k ⚗", "IN-21k", "IN-21k ⚗"]
    assert sum(c != "—" for r in linear for c in r[2:7]) == 20
    assert sum(c != "—" for r in fewshot for c in r[2:14]) == 48
    assert [r[1] for r in coco] == ["Swin-T", "TinyViT-21M (IN-1k)", "TinyViT-21M (IN-21k ⚗)"]
    assert [r[4:10] for r in coco][2] == ["50.2", "69.4", "54.4", "32.9", "53.9", "65.2"]
    assert sum(c != "—" for r in coco for c in r[4:10]) == 18
    # the registry holds the same numbers with their table as source
    cells = pub.published_cells()
    assert sum(c.table == "Table 5 (linear probe)" for c in cells) == 20
    assert sum(c.table == "Table 5 (few-shot)" for c in cells) == 48
    assert sum(c.table == "Table 6" for c in cells) == 3 * 8
    assert {c.table for c in cells} >= {"Table 4", "ablation (pretraining)", "ablation (teacher)"}


def test_other_protocols_never_land_in_a_paper_table(outputs):
    out, _ = outputs
    linear = _rows(open(out / "table5_linear.md").read())
    ours = [r for r in linear if r[0] == "ours"]
    # the clip-lbfgs CIFAR-10 of tinyvit-21m-distill and the 5M mocov3 record stay out
    assert {r[-1] for r in ours} == {"tinyvit-21m in1k (mocov3)",
                                     "tinyvit-21m in21k-distill (mocov3)"}
    wider = open(out / "linear_probe.md").read()
    assert "| tinyvit-21m-distill | clip-lbfgs |" in wider and "| tinyvit-5m in1k | mocov3 |" in wider
    fewshot = _rows(open(out / "table5_fewshot.md").read())
    assert all("lbfgs" not in r[-1] for r in fewshot)
    assert any("frozen backbone" in r[-1] for r in fewshot if r[0] == "ours")


def test_missing_paper_rows_name_the_command_that_fills_them(outputs):
    out, summary = outputs
    table6 = _rows(open(out / "table6.md").read())
    missing = [r for r in table6 if r[0] == "missing"]
    assert [r[1] for r in missing] == ["Swin-T", "TinyViT-21M (IN-1k)"]
    assert "det_configs/cascade_swin-t_1x.py" in missing[0][-1]
    notes = "\n".join(summary["missing"])
    assert "Table 5 few-shot IN-1k: no cdfsl episodes" in notes
    assert "--weights in1k=tiny_vit_21m_1k" in notes
