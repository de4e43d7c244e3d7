"""`make gpu-check` on a CPU: it refuses to start, and its wiring and report format hold.

The GPU-only calls go through ``bench.gpu_check.Gpu``; :class:`CpuStandIn` replaces them, and
``Sizes.tiny()`` shrinks every section, so the same code paths run here in seconds (the
detector and distillation sections, a minute or two, are marked slow).
"""
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]


class CpuStandIn(gpu_check.Gpu):
    """The device boundary without a GPU: the CPU, queue and memory calls as no-ops."""

    mmengine_amp = False  # mmengine's AmpOptimWrapper needs CUDA

    def __init__(self):
        self.device = torch.device("cpu")
        self.syncs = 0

    def describe(self) -> dict:
        return {"name": "cpu stand-in"}

    def synchronize(self) -> None:
        self.syncs += 1

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory_mib(self) -> float:
        return 1.0

    def release(self) -> None:
        gc.collect()

    def bf16_supported(self) -> bool:
        return True


def _run(tmp_path, **kwargs) -> tuple[dict, dict]:
    out = tmp_path / "report.json"
    report = gpu_check.run_check(CpuStandIn(), gpu_check.Sizes.tiny(), out, log=lambda _: None,
                                 machine={"test": True}, **kwargs)
    return report, json.loads(out.read_text())


def test_refuses_to_start_without_a_gpu(tmp_path):
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, str(ROOT / "tools/gpu_check.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 2
    assert run.stderr.startswith("error: make gpu-check needs an NVIDIA GPU")
    assert run.stdout == ""
    assert not out.exists()  # nothing started, nothing written


def test_unknown_section_is_bad_input(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "tools/gpu_check.py"), "--only", "nms"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 2
    assert "unknown section(s) ['nms']" in run.stderr and "mmcv_ops" in run.stderr


def test_preflight_refuses_mmcv_without_cuda_ops():
    from mmcv.ops import get_compiling_cuda_version

    if get_compiling_cuda_version() != "not available":
        pytest.skip("this environment's mmcv has CUDA ops")
    with pytest.raises(gpu_check.NoGpu, match="run `make env` on this GPU machine"):
        gpu_check.preflight()


def test_report_records_every_outcome(tmp_path):
    seen_on_disk = {}

    def ok(ctx):
        return dict(problems=[], value=1 / 3, nested={"ratio": float("nan")}, shape=(2, 3))

    def failed(ctx):
        return dict(problems=["max |diff| 1.0e-02 > 1e-04"], diff=0.01)

    def broken(ctx):
        seen_on_disk.update(json.loads((tmp_path / "report.json").read_text()))
        raise RuntimeError("CUDA error: out of memory")

    sections = {"a": ("first", ok), "b": ("second", failed), "c": ("third", broken)}
    report, on_disk = _run(tmp_path, sections=sections)
    assert on_disk == report
    assert report["format"] == gpu_check.REPORT_FORMAT and report["format_version"] == 1
    assert report["complete"] is True and report["ok"] is False and report["within_budget"]
    assert report["gpu"] == {"name": "cpu stand-in"} and report["machine"] == {"test": True}
    assert report["sizes"]["det_scale"] == list(gpu_check.Sizes.tiny().det_scale)
    a, b, c = (report["sections"][k] for k in "abc")
    assert a["status"] == "ok" and a["title"] == "first" and a["problems"] == []
    assert a["result"] == {"value": 0.333333, "nested": {"ratio": "nan"}, "shape": [2, 3]}
    assert b["status"] == "failed" and b["problems"] == ["max |diff| 1.0e-02 > 1e-04"]
    assert b["result"] == {"diff": 0.01}
    assert c["status"] == "error" and c["error"] == "RuntimeError: CUDA error: out of memory"
    assert "Traceback" in c["traceback"]
    assert all(isinstance(e["seconds"], float) for e in (a, b, c))
    # the report on disk was rewritten after each section: the third saw the first two
    assert seen_on_disk["complete"] is False
    assert [e["status"] for e in seen_on_disk["sections"].values()] == ["ok", "failed", "pending"]
    summary = gpu_check.summary(report, tmp_path / "report.json")
    assert summary["sections"] == {"a": "ok", "b": "failed", "c": "error"} and not summary["ok"]


def test_sections_after_the_budget_are_skipped(tmp_path):
    now = [0.0]

    def takes_100_s(ctx):
        now[0] += 100
        return dict(problems=[])

    sections = {name: (name, takes_100_s) for name in ("a", "b", "c", "d")}
    report, _ = _run(tmp_path, sections=sections, budget_s=150, clock=lambda: now[0])
    statuses = {k: v["status"] for k, v in report["sections"].items()}
    assert statuses == {"a": "ok", "b": "ok", "c": "skipped", "d": "skipped"}
    assert "time budget of 150 s spent" in report["sections"]["c"]["reason"]
    assert report["within_budget"] is False and report["ok"] is False


def test_interrupted_run_keeps_the_finished_sections(tmp_path):
    def ok(ctx):
        return dict(problems=[], x=1)

    def interrupted(ctx):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, sections={"a": ("a", ok), "b": ("b", interrupted)})
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["complete"] is False
    assert on_disk["sections"]["a"]["status"] == "ok" and on_disk["sections"]["a"]["result"] == {"x": 1}
    assert on_disk["sections"]["b"]["status"] == "pending"


def test_only_runs_the_sections_asked_for(tmp_path):
    report, _ = _run(tmp_path, only=["mmcv_ops"])
    assert list(report["sections"]) == ["mmcv_ops"]
    with pytest.raises(ValueError, match="unknown section"):
        _run(tmp_path, only=["mmcv"])


def _section(tmp_path, name) -> dict:
    report, _ = _run(tmp_path, only=[name])
    entry = report["sections"][name]
    assert entry["status"] == "ok", entry
    return entry["result"]


def test_mmcv_ops_section(tmp_path):
    r = _section(tmp_path, "mmcv_ops")
    assert r["nms_same_keep"] is True and 0 < r["nms_kept"] <= r["nms_boxes"]
    assert r["roi_align_max_abs_diff"] == 0.0  # the stand-in compares the CPU op with itself


def test_backbone_amp_section(tmp_path):
    r = _section(tmp_path, "backbone_amp")
    assert set(r) >= {"fp32", "bf16", "fp16"}
    for name in ("bf16", "fp16"):
        assert r[name]["finite"] and r[name]["grad_cosine"] > 0.99
        assert r[name]["out_dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[name]
    assert r["fp32"]["out_dtype"] == "float32"


def test_fast_path_section(tmp_path):
    r = _section(tmp_path, "fast_path")
    assert [i["shape"] for i in r["inputs"]] == [[2, 3, 32, 32], [1, 3, 32, 48]]
    assert all(i["max_abs_diff"] < 1e-4 for i in r["inputs"])
    assert r["sdpa"] == {"skipped": "CPU: the fast path uses matmul + softmax there"}
    assert r["img_s"]["fast"] > 0 and r["speedup"] > 0


def test_probe_extraction_section(tmp_path):
    r = _section(tmp_path, "probe_extraction")
    assert r["images"] > 1000  # the digits' train split
    assert r["pipeline_img_s"] > 0 and r["raw_forward_img_s"] > 0
    assert r["pipeline_vs_raw_ratio"] == pytest.approx(r["pipeline_img_s"] / r["raw_forward_img_s"],
                                                       rel=1e-3)


def test_classification_section(tmp_path):
    r = _section(tmp_path, "classification")
    assert set(r["img_s"]) == {"tinyvit-21m", "swin-t", "tinyvit-21m fast"}
    assert r["paper_v100_img_s"] == {"tinyvit-21m": 1571, "swin-t": 1393}
    assert r["paper_tinyvit_vs_swin"] == pytest.approx(1571 / 1393, rel=1e-5)
    assert r["tinyvit_vs_swin"] == pytest.approx(r["img_s"]["tinyvit-21m"] / r["img_s"]["swin-t"],
                                                 rel=1e-3)


@pytest.mark.slow
def test_every_section_runs_on_the_stand_in(tmp_path):
    report, _ = _run(tmp_path, budget_s=float("inf"))  # the 8 minutes are a GPU's
    assert list(report["sections"]) == list(gpu_check.SECTIONS)
    bad = {k: v for k, v in report["sections"].items() if v["status"] != "ok"}
    assert not bad, json.dumps(bad, indent=1)[:4000]
    s = {k: v["result"] for k, v in report["sections"].items()}
    cascade = s["cascade"]
    assert cascade["tinyvit_21m"]["iters"] == 1 and cascade["swin_t"]["finite"]
    assert cascade["s_per_iter_ratio"] > 0
    for name in ("mask_rcnn", "upernet"):
        assert s[name]["checkpoints"] == ["iter_1.pth"] and s[name]["first_loss"] > 0
    assert "coco/bbox_mAP" in s["mask_rcnn"]["evaluation"] and "mIoU" in s["upernet"]["evaluation"]
    distill = s["distill"]
    assert distill["store_img_s"] > 0 and distill["labels_img_s"] > 0
    assert distill["save_logits_img_s"] > 0 and set(distill["accuracy"]) == {"teacher", "store", "labels"}


def test_detector_config_restores_coco_budgets_size_and_amp(tmp_path):
    from mmengine.config import Config

    root = gpu_check.scenes(tmp_path / "scenes")
    path = "det_configs/cascade_tinyvit21m.py"
    cfg = gpu_check.detector_config(path, root, iters=30, scale=(1333, 800), batch=2,
                                    work_dir=str(tmp_path / "w"), amp=True)
    original = Config.fromfile(str(ROOT / path))
    assert cfg.model.train_cfg.rpn_proposal == original.model.train_cfg.rpn_proposal
    assert [s["num"] for s in (st["sampler"] for st in cfg.model.train_cfg.rcnn)] == [512] * 3
    resize = [s for s in cfg.train_dataloader.dataset.pipeline if s["type"] == "Resize"]
    assert resize == [dict(type="Resize", scale=(1333, 800), keep_ratio=False)]
    assert cfg.train_dataloader.batch_size == 2 and cfg.train_cfg.max_iters == 30
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.dtype == "float16"
    assert cfg.model.roi_head.bbox_head[0].num_classes == 4  # still the scenes' classes
    small = gpu_check.detector_config(path, root, iters=1, scale=(128, 96), batch=1,
                                      work_dir=str(tmp_path / "w"), amp=False, coco_budgets=False)
    assert small.model.train_cfg.rpn_proposal.max_per_img <= 200  # the overlay's budgets
    assert small.optim_wrapper.type == "OptimWrapper"
