"""`tools/gpu_check.py` on a CPU: its sections, limits, requirements and report hold.

The GPU-only calls go through ``bench.gpu_check.Gpu``; :class:`CpuStandIn` replaces them, and
``Sizes.tiny()`` shrinks every section, so the same code paths run here in seconds (the
detector and distillation sections, a minute or two, are marked slow). The sections of the
runner tests are functions of this module: a section's own process imports them from here.
"""
import gc
import json
import os
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest
import torch

from bench import gpu_check

ROOT = Path(__file__).resolve().parents[1]
OPENMMLAB = ("mmengine", "mmcv", "mmdet", "mmseg", "mmsegmentation")


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


def _run(tmp_path, gpu=None, **kwargs) -> tuple[dict, dict]:
    out = tmp_path / "report.json"
    kwargs.setdefault("isolate", False)
    report = gpu_check.run_check(gpu or CpuStandIn(), gpu_check.Sizes.tiny(), out,
                                 log=lambda _: None, machine={"test": True}, **kwargs)
    return report, json.loads(out.read_text())


def _sections(*specs) -> dict:
    """{name: Section} from (name, function[, needs[, limit_s]]) tuples."""
    out = {}
    for name, fn, *rest in specs:
        needs = rest[0] if rest else ()
        limit = rest[1] if len(rest) > 1 else 60.0
        out[name] = gpu_check.Section(name, f"title of {name}", fn, tuple(needs), limit)
    return out


# ----------------------------------------------------------------------- sections of the tests
def ok_section(ctx):
    return dict(problems=[], value=1 / 3, nested={"ratio": float("nan")}, shape=(2, 3))


def failed_section(ctx):
    return dict(problems=["max |diff| 1.0e-02 > 1e-04"], diff=0.01)


def raising_section(ctx):
    raise RuntimeError("CUDA error: out of memory")


def report_reader_section(ctx):
    """What the report on disk says while this section runs."""
    on_disk = json.loads(Path(os.environ["GPU_CHECK_TEST_REPORT"]).read_text())
    return dict(problems=[], complete=on_disk["complete"],
                statuses={k: v["status"] for k, v in on_disk["sections"].items()})


def stuck_section(ctx):
    """Starts a process of its own (as tools/train.py or DataLoader workers are), then hangs."""
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    Path(os.environ["GPU_CHECK_TEST_PIDS"]).write_text(f"{os.getpid()} {helper.pid}")
    time.sleep(300)


def crashing_section(ctx):
    print("about to crash", flush=True)
    os._exit(7)


def pythonpath_section(ctx):
    import gpu_check_pythonpath_probe  # only on the PYTHONPATH the check was started with
    return dict(problems=[], value=gpu_check_pythonpath_probe.VALUE)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie whose parent is gone no longer runs


# ----------------------------------------------------------------------- the runner
def test_report_records_every_outcome(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_TEST_REPORT", str(tmp_path / "report.json"))
    sections = _sections(("a", ok_section), ("b", failed_section), ("c", raising_section),
                         ("d", report_reader_section))
    report, on_disk = _run(tmp_path, sections=sections)
    assert on_disk == report
    assert report["format"] == gpu_check.REPORT_FORMAT and report["format_version"] == 2
    assert report["complete"] is True and report["ok"] is False and report["within_budget"]
    assert report["gpu"] == {"name": "cpu stand-in"} and report["machine"] == {"test": True}
    assert report["sizes"]["det_scale"] == list(gpu_check.Sizes.tiny().det_scale)
    a, b, c, d = (report["sections"][k] for k in "abcd")
    assert a["status"] == "ok" and a["title"] == "title of a" and a["problems"] == []
    assert a["result"] == {"value": 0.333333, "nested": {"ratio": "nan"}, "shape": [2, 3]}
    assert a["needs"] == [] and a["limit_s"] == 60.0
    assert b["status"] == "failed" and b["problems"] == ["max |diff| 1.0e-02 > 1e-04"]
    assert b["result"] == {"diff": 0.01}
    assert c["status"] == "error" and c["error"] == "RuntimeError: CUDA error: out of memory"
    assert "Traceback" in c["traceback"]
    assert all(isinstance(e["seconds"], float) for e in (a, b, c, d))
    # the report on disk was rewritten after each section: the fourth saw the first three
    assert d["result"] == {"complete": False, "statuses": {"a": "ok", "b": "failed",
                                                           "c": "error", "d": "pending"}}
    summary = gpu_check.summary(report, tmp_path / "report.json")
    assert summary["sections"] == {"a": "ok", "b": "failed", "c": "error", "d": "ok"}
    assert not summary["ok"] and gpu_check.exit_status(report) == 1


def test_exit_status_is_0_when_every_section_is_ok_or_skipped(tmp_path):
    sections = _sections(("a", ok_section), ("b", ok_section, ["tinyvit_no_such_package"]))
    report, _ = _run(tmp_path, sections=sections)
    assert [e["status"] for e in report["sections"].values()] == ["ok", "skipped"]
    assert report["ok"] is True and gpu_check.exit_status(report) == 0
    for bad in ("failed", "error", "timed_out"):
        assert gpu_check.exit_status(dict(report, ok=False, sections={"a": {"status": bad}})) == 1


def test_a_section_with_a_missing_requirement_is_skipped_with_the_reason(tmp_path, monkeypatch):
    unavailable = dict(kind="unavailable", reason="mmcv is not installed (neither mmcv nor mmcv-lite)")
    monkeypatch.setattr(gpu_check, "plan_mmcv_ops", lambda device_type: unavailable)
    sections = _sections(("missing", ok_section, ["timm", "tinyvit_no_such_package"]),
                         ("no_ops", ok_section, ["mmcv_ops"]), ("after", ok_section))
    report, _ = _run(tmp_path, sections=sections)
    missing, no_ops, after = report["sections"].values()
    assert missing["status"] == "skipped"
    assert missing["reason"] == "needs tinyvit_no_such_package, which is not installed"
    assert no_ops["status"] == "skipped"
    assert no_ops["reason"] == f"needs mmcv's nms / RoIAlign: {unavailable['reason']}"
    assert report["mmcv_ops"] == unavailable
    assert after["status"] == "ok" and report["ok"] is True


def test_without_a_gpu_cuda_sections_are_skipped_and_the_others_run(tmp_path):
    cpu = gpu_check.CpuOnly("torch sees no CUDA GPU (test)")
    sections = _sections(("gpu", ok_section, ["cuda", "tinyvit_no_such_package"]),
                         ("cpu", ok_section, ["timm"]))
    report, _ = _run(tmp_path, gpu=cpu, sections=sections)
    gpu, cpu_entry = report["sections"].values()
    assert gpu["status"] == "skipped"
    assert gpu["reason"] == ("needs a CUDA GPU: torch sees no CUDA GPU (test); needs "
                             "tinyvit_no_such_package, which is not installed")
    assert cpu_entry["status"] == "ok"
    assert report["gpu"] == {"name": None, "cuda": False, "reason": "torch sees no CUDA GPU (test)"}
    assert gpu_check.exit_status(report) == 0


def test_sections_after_the_budget_are_skipped(tmp_path):
    now = [0.0]

    def takes_100_s(ctx):
        now[0] += 100
        return dict(problems=[])

    sections = _sections(*((name, takes_100_s) for name in "abcd"))
    report, _ = _run(tmp_path, sections=sections, budget_s=150, clock=lambda: now[0])
    statuses = {k: v["status"] for k, v in report["sections"].items()}
    assert statuses == {"a": "ok", "b": "ok", "c": "skipped", "d": "skipped"}
    assert report["sections"]["c"]["reason"] == "the check's budget of 150 s is spent (200 s elapsed)"
    assert report["within_budget"] is False and report["ok"] is True  # skipped is not failed


def test_interrupted_run_keeps_the_finished_sections(tmp_path):
    def interrupted(ctx):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, sections=_sections(("a", ok_section), ("b", interrupted), ("c", ok_section)))
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["complete"] is False
    assert [e["status"] for e in on_disk["sections"].values()] == ["ok", "interrupted", "pending"]
    assert on_disk["sections"]["a"]["result"]["shape"] == [2, 3]


def test_a_section_past_its_limit_is_stopped_with_its_processes_and_the_next_runs(tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    monkeypatch.setenv("GPU_CHECK_TEST_PIDS", str(pids))
    monkeypatch.setenv("GPU_CHECK_TEST_REPORT", str(tmp_path / "report.json"))
    sections = _sections(("stuck", stuck_section, [], 20.0), ("crash", crashing_section),
                         ("next", report_reader_section))
    start = time.monotonic()
    report, _ = _run(tmp_path, sections=sections, isolate=True)
    stuck, crash, after = report["sections"].values()
    assert stuck["status"] == "timed_out"
    assert stuck["reason"] == "stopped after 20 s: its own limit"
    assert 20 <= stuck["seconds"] < 35 and time.monotonic() - start < 120
    section_pid, helper_pid = map(int, pids.read_text().split())
    assert not _alive(section_pid) and not _alive(helper_pid)
    assert crash["status"] == "error" and "exit status 7" in crash["error"]
    assert crash["output_tail"][-1] == "about to crash"
    # the report was rewritten after each section, so the next one read both outcomes
    assert after["status"] == "ok"
    assert after["result"]["statuses"] == {"stuck": "timed_out", "crash": "error", "next": "pending"}
    assert report["ok"] is False and gpu_check.exit_status(report) == 1


def test_the_budget_stops_a_section_before_its_own_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("GPU_CHECK_TEST_PIDS", str(tmp_path / "pids"))
    report, _ = _run(tmp_path, sections=_sections(("stuck", stuck_section, [], 600.0)),
                     isolate=True, budget_s=15)
    entry = report["sections"]["stuck"]
    assert entry["status"] == "timed_out"
    assert entry["reason"] == "stopped after 15 s: what was left of the check's budget"


def test_sigterm_stops_the_running_section_and_keeps_the_report(tmp_path):
    """``timeout`` and batch schedulers end a run with SIGTERM: the section's processes go with
    it, and the report says where the run stopped."""
    pids, out = tmp_path / "pids", tmp_path / "report.json"
    script = ("import sys; from pathlib import Path; from bench import gpu_check; "
              "from tests.test_gpu_check import CpuStandIn, _sections, ok_section, stuck_section; "
              "gpu_check.run_check(CpuStandIn(), gpu_check.Sizes.tiny(), Path(sys.argv[1]), "
              "sections=_sections(('a', ok_section), ('stuck', stuck_section), ('c', ok_section)), "
              "machine={}, log=lambda _: None)")
    from bench.common import subprocess_env
    check = subprocess.Popen([sys.executable, "-c", script, str(out)], cwd=ROOT,
                             env=subprocess_env(ROOT, GPU_CHECK_TEST_PIDS=str(pids)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not pids.exists() and time.monotonic() < deadline and check.poll() is None:
        time.sleep(0.2)
    check.send_signal(signal.SIGTERM)
    _, stderr = check.communicate(timeout=60)
    assert "KeyboardInterrupt: stopped by signal SIGTERM" in stderr
    section_pid, helper_pid = map(int, pids.read_text().split())
    assert not _alive(section_pid) and not _alive(helper_pid)
    report = json.loads(out.read_text())
    assert [e["status"] for e in report["sections"].values()] == ["ok", "interrupted", "pending"]
    assert report["complete"] is False


def test_section_processes_keep_the_pythonpath(tmp_path, monkeypatch):
    """Packages installed with ``pip install --target DIR`` are on PYTHONPATH: every process the
    check starts keeps them (the checkout is put before them, not instead of them)."""
    (tmp_path / "gpu_check_pythonpath_probe.py").write_text("VALUE = 42\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    report, _ = _run(tmp_path, sections=_sections(("probe", pythonpath_section)), isolate=True)
    assert report["sections"]["probe"]["result"] == {"value": 42}, report["sections"]["probe"]


def test_train_cli_keeps_the_pythonpath(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen.update(cmd=cmd, **kwargs)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/opt/target-dir", str(ROOT)]))
    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    gpu_check.train_cli("det_configs/mask_rcnn_tinyvit21m_1x.py", "scenes", "work", iters=2,
                        size=96, batch=1, amp=True, arch="5m", timeout=30)
    assert seen["env"]["PYTHONPATH"] == os.pathsep.join([str(ROOT), "/opt/target-dir"])
    assert seen["cmd"][1:4] == ["-m", "tinyvit_backbone.mmcv_standin", str(ROOT / "tools/train.py")]
    assert seen["cmd"][-3:] == ["--amp", "--arch", "5m"] and seen["timeout"] == 30


def test_a_real_section_runs_in_its_own_process(tmp_path):
    report, _ = _run(tmp_path, only=["classification"], isolate=True)
    entry = report["sections"]["classification"]
    assert entry["status"] == "ok", entry
    assert set(entry["result"]["img_s"]) == {"tinyvit-21m", "swin-t", "tinyvit-21m fast"}


def test_the_module_docstring_lists_every_section_with_its_needs_and_limit():
    import re

    lines = gpu_check.__doc__.splitlines()
    borders = [i for i, line in enumerate(lines) if line.startswith("=====")]
    spans = [m.span() for m in re.finditer("=+", lines[borders[0]])]
    rows = [[line[a:b].strip() if i < len(spans) - 1 else line[a:].strip()
             for i, (a, b) in enumerate(spans)] for line in lines[borders[1] + 1:borders[2]]]
    assert [r[0] for r in rows] == list(gpu_check.SECTIONS)
    for name, needs, limit, _ in rows:
        section = gpu_check.SECTIONS[name]
        assert needs.split(", ") == list(section.needs) and limit == f"{section.limit_s:.0f} s", name


# ----------------------------------------------------------------------- the command line
def _python_without_openmmlab(tmp_path) -> Path:
    """A venv holding this environment's packages except mmengine, mmcv, mmdet and mmseg (and
    the project's editable install): a GPU node's own torch, timm and onnxruntime."""
    env = tmp_path / "venv"
    venv.create(env, with_pip=False, symlinks=True)
    target = next(env.glob("lib/python*/site-packages"))
    source = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    for entry in source.iterdir():
        name = entry.name.lower()
        if name.startswith(OPENMMLAB) or name.endswith(".pth") or "editable" in name \
                or name.startswith("tinyvit"):
            continue
        (target / entry.name).symlink_to(entry)
    return env / "bin" / "python"


def test_command_without_gpu_or_openmmlab_runs_what_it_can(tmp_path):
    """No GPU and no OpenMMLab package at all: the sections that need CUDA, mmengine, mmdet or
    mmseg are skipped with their reasons, ONNX Runtime's runs, and the exit status is 0."""
    python = _python_without_openmmlab(tmp_path)
    out = tmp_path / "out" / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([str(python), str(ROOT / "tools/gpu_check.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads(run.stdout)
    report = json.loads(out.read_text())
    assert summary["report"] == str(out) and summary["ok"] is True and summary["gpu"] is None
    assert summary["sections"] == {name: "ok" if name == "onnxruntime" else "skipped"
                                   for name in gpu_check.SECTIONS}
    sections = report["sections"]
    assert sections["classification"]["reason"].startswith("needs a CUDA GPU: torch")
    assert "needs mmengine, which is not installed" in sections["backbone_amp"]["reason"]
    assert "needs mmdet, which is not installed" in sections["cascade"]["reason"]
    assert "needs mmseg, which is not installed" in sections["upernet"]["reason"]
    ort = sections["onnxruntime"]["result"]
    assert ort["providers"]["CPUExecutionProvider"]["max_abs_diff"] < 1e-4
    assert "[gpu-check] onnxruntime: ok" in run.stderr


def test_unknown_section_is_bad_input(tmp_path):
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, str(ROOT / "tools/gpu_check.py"), "--only", "nms",
                          "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 2
    assert "unknown section(s) ['nms']" in run.stderr and "mmcv_ops" in run.stderr
    assert run.stdout == "" and not out.exists()


# ----------------------------------------------------------------------- each section, tiny
def _section(tmp_path, name) -> dict:
    report, _ = _run(tmp_path, only=[name])
    entry = report["sections"][name]
    assert entry["status"] == "ok", entry
    return entry


def test_mmcv_ops_section(tmp_path):
    entry = _section(tmp_path, "mmcv_ops")
    r = entry["result"]
    assert r["nms_same_keep"] is True and 0 < r["nms_kept"] <= r["nms_boxes"]
    assert r["roi_align_max_abs_diff"] == 0.0  # the stand-in compares the CPU op with itself
    kind = entry["mmcv_ops"]["kind"]
    assert r["mmcv_ops"] == {"kind": kind,
                             "proves_mmcv_kernels": kind != "stand-in (torchvision kernels)"}


def test_backbone_amp_section(tmp_path):
    r = _section(tmp_path, "backbone_amp")["result"]
    assert set(r) >= {"fp32", "bf16", "fp16"}
    for name in ("bf16", "fp16"):
        assert r[name]["finite"] and r[name]["grad_cosine"] > 0.99
        assert r[name]["out_dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[name]
    assert r["fp32"]["out_dtype"] == "float32"


def test_fast_path_section(tmp_path):
    r = _section(tmp_path, "fast_path")["result"]
    assert [i["shape"] for i in r["inputs"]] == [[2, 3, 32, 32], [1, 3, 32, 48]]
    assert all(i["max_abs_diff"] < 1e-4 for i in r["inputs"])
    assert r["sdpa"] == {"skipped": "CPU: the fast path uses matmul + softmax there"}
    assert r["img_s"]["fast"] > 0 and r["speedup"] > 0


def test_probe_extraction_section(tmp_path):
    r = _section(tmp_path, "probe_extraction")["result"]
    assert r["images"] > 1000  # the digits' train split
    assert r["pipeline_img_s"] > 0 and r["raw_forward_img_s"] > 0
    assert r["pipeline_vs_raw_ratio"] == pytest.approx(r["pipeline_img_s"] / r["raw_forward_img_s"],
                                                       rel=1e-3)


def test_classification_section(tmp_path):
    r = _section(tmp_path, "classification")["result"]
    assert set(r["img_s"]) == {"tinyvit-21m", "swin-t", "tinyvit-21m fast"}
    assert r["paper_v100_img_s"] == {"tinyvit-21m": 1571, "swin-t": 1393}
    assert r["paper_tinyvit_vs_swin"] == pytest.approx(1571 / 1393, rel=1e-5)
    assert r["tinyvit_vs_swin"] == pytest.approx(r["img_s"]["tinyvit-21m"] / r["img_s"]["swin-t"],
                                                 rel=1e-3)


def test_onnxruntime_section(tmp_path):
    r = _section(tmp_path, "onnxruntime")["result"]
    cpu = r["providers"]["CPUExecutionProvider"]
    assert cpu["session_providers"] == ["CPUExecutionProvider"]
    assert cpu["max_abs_diff"] < 1e-4 and cpu["ms_per_batch"] > 0
    assert r["export_check_max_abs_diff"] < 1e-4 and r["image_size"] == 32


def test_cdfsl_section(tmp_path):
    r = _section(tmp_path, "cdfsl")["result"]
    assert r["device"] == "cpu" and r["epochs"] == 1 and r["ways"] == 5 and r["shots"] == 5
    assert r["steps"] == 7  # 25 support images in mini-batches of 4
    assert 0 <= r["query_accuracy"] <= 100 and r["s_per_step"] > 0 and r["bare_s_per_step"] > 0
    assert r["recipe_episode_s_extrapolated"] == pytest.approx(700 * r["s_per_step"], rel=1e-3)
    together = r["together"]
    assert together["episodes"] == 2 and together["epochs"] == 1
    assert len(together["accuracies_together"]) == len(together["accuracies_one_at_a_time"]) == 2
    assert together["speedup"] == pytest.approx(
        together["one_at_a_time_s_per_episode"] / together["together_s_per_episode"], rel=1e-3)
    assert r["precision"].startswith("float32")


def test_mocov3_section(tmp_path):
    r = _section(tmp_path, "mocov3")["result"]
    assert r["images"] == 24 and r["batch"] == 8 and r["augmentation"]["style"] == "mocov3-train"
    assert r["loop_img_s"] > 0 and r["raw_forward_img_s"] > 0
    assert r["loop_vs_raw_forward"] == pytest.approx(r["loop_img_s"] / r["raw_forward_img_s"],
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
    assert cascade["s_per_iter_ratio"] > 0 and cascade["mmcv_ops"]["kind"]
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
