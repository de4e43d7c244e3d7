"""The paper's transfer pipeline in miniature, on the embedded data (``make demo``).

Stages (each reuses its finished outputs on a rerun unless ``fresh``):

1. distill  — train a small teacher on the digits, store its top-K logits with the augmentation
   seeds, distil a small TinyViT from the store alone, and train the same student on labels
   (:func:`tinyvit_backbone.distill.run_pipeline`);
2. detect   — Mask R-CNN with the distilled student as backbone on the embedded scenes (mmdet,
   COCO metrics through pycocotools);
3. segment  — UperNet with the same backbone (mmseg, mIoU);
4. probe    — linear probe, k-shot probes and 5-way episodes on the digits for the distilled,
   the label-trained and a randomly initialised student (:mod:`linear_probe`);
5. tables   — the results tables and plots (:mod:`reproduction.make`), the paper's Table 5 and
   Table 6 layouts included, so the published rows show what a full run fills in.

Everything lands in one folder (default ``results/demo``); a short summary ends the run. The
folder remembers the settings it was made with (``settings.json``): a run with other settings
(``--quick``'s reduced ones, a GPU's) starts that folder afresh, with a line that says so,
instead of resuming outputs made for other settings. On a
machine with an NVIDIA GPU the same command uses it, with AMP and larger batches
(:meth:`DemoSettings.for_device`). The detector and segmenter configs are read from
``config_root`` (the folder holding ``det_configs/`` and ``seg_configs/``; ``tools/demo.py``
passes its checkout), so nothing here depends on where the package is installed.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from tinyvit_backbone.device import cpu_threads, select_device
from tinyvit_backbone.files import atomic_write_text

from .runs import read_run

DET_CONFIG = "det_configs/mask_rcnn_tinyvit5m_1x.py"
SEG_CONFIG = "seg_configs/upernet_tinyvit5m_8xb2_160k_ade20k_512x512.py"
# The scenes' 128-px images give 32/16/8/4-px stage maps: windows that tile them. The student's
# 32-px digit windows (8, 4, 2, 1) are resized (bicubic) to these when the backbone loads.
SCENE_WINDOWS = [8, 8, 8, 4]


@dataclass(frozen=True)
class DemoSettings:
    distill_scale: str = "demo"
    det_iters: int = 160
    seg_iters: int = 100
    lr: float = 5e-4
    image_size: int = 128
    batch_size: int = 2
    amp: bool = False
    probe_quick: bool = True
    probe_episodes: int | None = None
    torch_threads_small: int = 1  # the digits stages: tiny tensors, where threads only wait

    @classmethod
    def for_device(cls, device: torch.device) -> DemoSettings:
        """CPU: fits ~10 minutes on 2 cores. GPU: AMP, 4x the batch, more iterations."""
        if device.type == "cuda":
            return cls(det_iters=300, seg_iters=300, batch_size=8, amp=True, lr=1e-3)
        return cls()

    def reduced(self) -> DemoSettings:
        """A seconds-long version of every stage (for tests)."""
        return replace(self, distill_scale="smoke", det_iters=2, seg_iters=2, image_size=64,
                       probe_episodes=10)


class DemoError(RuntimeError):
    """Something the demo needs is missing; the message says what and how to get it."""


# ----------------------------------------------------------------------------- stages
def stage_distill(out: str, settings: DemoSettings, fresh: bool, log) -> dict:
    from tinyvit_backbone.distill import DEMO_ARCH, run_pipeline

    with cpu_threads(settings.torch_threads_small):
        result = run_pipeline(os.path.join(out, "distill"), DEMO_ARCH, scale=settings.distill_scale,
                              fresh=fresh, log=log)
    result["student_arch"] = DEMO_ARCH
    return result


def _finished_run(work_dir: str, iters: int, metric: str) -> dict | None:
    """The final metrics of a complete run of ``iters`` iterations in ``work_dir``, else None."""
    if not os.path.isdir(work_dir):
        return None
    run = read_run(work_dir)
    if run.status != "complete" or run.config is None or run.config.max_progress != iters:
        return None
    return run.metrics if metric in run.metrics else None


def stage_dense(task: str, out: str, student: dict, settings: DemoSettings, fresh: bool,
                log, config_root: str) -> dict:
    """Train and evaluate the detector ('det') or segmenter ('seg') on the embedded scenes."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from tinyvit_backbone.config_overlay import apply_overlay, ensure_scenes

    config, iters, metric = ((DET_CONFIG, settings.det_iters, "coco/bbox_mAP") if task == "det"
                             else (SEG_CONFIG, settings.seg_iters, "mIoU"))
    name = "mask_rcnn_tinyvit_demo" if task == "det" else "upernet_tinyvit_demo"
    work_dir = os.path.join(out, "work_dirs", name)
    if fresh and os.path.isdir(work_dir):
        shutil.rmtree(work_dir)
    done = None if fresh else _finished_run(work_dir, iters, metric)
    if done is not None:
        log(f"[demo]   {name}: finished run found in {work_dir}, reused")
        return done
    scenes = ensure_scenes(os.path.join(out, "data", "scenes"))
    arch = dict(copy.deepcopy(student["student_arch"]), window_sizes=SCENE_WINDOWS)
    cfg = apply_overlay(Config.fromfile(_config_path(config_root, config)), scenes, iters=iters,
                        image_size=settings.image_size, batch_size=settings.batch_size,
                        lr=settings.lr, arch=arch, backbone_checkpoint=student["weights"]["store"],
                        work_dir=work_dir)
    if settings.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.loss_scale = "dynamic"
    cfg.resume = os.path.isfile(os.path.join(work_dir, "last_checkpoint"))
    cfg.log_level = "WARNING"
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=max(1, iters // 6))
    log(f"[demo]   {name}: {iters} iterations on the embedded scenes"
        + (" (resuming)" if cfg.resume else ""))
    runner = Runner.from_cfg(cfg)
    # progress lines from here on, without the environment / config dump of the Runner's start
    runner.logger.setLevel("INFO")
    for handler in runner.logger.handlers:
        handler.setLevel("INFO")
    runner.train()
    metrics = _finished_run(work_dir, iters, metric)
    if metrics is None:
        raise DemoError(f"{name}: training ended but {work_dir} holds no final evaluation; "
                        f"rerun the demo to evaluate it ({read_run(work_dir).reason})")
    return metrics


def _config_path(config_root: str, config: str) -> str:
    path = os.path.join(config_root, config)
    if not os.path.isfile(path):
        raise DemoError(f"config {config} not found under {config_root!r}: pass the folder that "
                        "holds det_configs/ and seg_configs/ (a checkout of the project)")
    return path


def stage_probe(out: str, student: dict, settings: DemoSettings, log) -> list[dict]:
    from linear_probe import ModelSpec, run_suite

    arch = student["student_arch"]
    models = [("tinyvit-demo distilled", student["weights"]["store"]),
              ("tinyvit-demo label-trained", student["weights"]["labels"]),
              ("tinyvit-demo random init", student["weights"]["init"])]
    records = []
    with cpu_threads(settings.torch_threads_small):
        for label, weights in models:
            log(f"[demo]   probes for {label}")
            kwargs = {} if settings.probe_episodes is None else dict(n_episodes=settings.probe_episodes)
            records += run_suite(ModelSpec("tinyvit", arch=arch, weights=weights, label=label),
                                 dataset="digits", output=None,
                                 cache_dir=os.path.join(out, "probe", "features"),
                                 quick=settings.probe_quick, **kwargs)
    path = os.path.join(out, "probe", "results.jsonl")
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return records


def stage_tables(out: str, log, bench_report: str | None = None) -> dict:
    from .make import make_tables

    bench = bench_report if bench_report and os.path.isfile(bench_report) else None
    return make_tables([os.path.join(out, "work_dirs")], [os.path.join(out, "probe", "results.jsonl")],
                       bench, os.path.join(out, "tables"))


# ----------------------------------------------------------------------------- the run
STAGES = ("distill", "detect", "segment", "probe", "tables")
PAPER_TABLES = ("table6", "table5_linear", "table5_fewshot")
SETTINGS_FILE = "settings.json"
# What a demo writes into its folder; a settings change removes exactly these (the generated
# scenes in data/ do not depend on the settings and are kept).
OUTPUTS = ("distill", "work_dirs", "probe", "tables", "summary.json", SETTINGS_FILE)


def _recorded_settings(out: str) -> dict | None:
    """The settings the folder's demo was made with (settings.json, else an older demo's
    summary.json), None for a folder without a demo."""
    for name, key in ((SETTINGS_FILE, None), ("summary.json", "settings")):
        path = os.path.join(out, name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError):
                continue
            return data.get(key) if key else data
    return None


def _settings_change(out: str, settings: DemoSettings) -> str | None:
    """'det_iters 2 -> 160, ...' when ``out`` holds a demo made with other settings."""
    old = _recorded_settings(out)
    if not isinstance(old, dict):
        return None
    new = asdict(settings)
    changed = [f"{k} {old.get(k)} -> {v}" for k, v in new.items() if old.get(k, v) != v]
    return ", ".join(changed) or None


def start_afresh(out: str) -> None:
    """Remove the demo's outputs (:data:`OUTPUTS`) from ``out``, nothing else."""
    for name in OUTPUTS:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def run_demo(out: str = "results/demo", *, config_root: str, settings: DemoSettings | None = None,
             fresh: bool = False, stages=STAGES, bench_report: str | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Run the stages in order; returns (and writes to ``out/summary.json``) what they made.
    ``config_root`` holds det_configs/ and seg_configs/; ``bench_report`` (optional) is a
    ``make bench`` report.json for the models table."""
    settings = settings or DemoSettings.for_device(select_device())
    change = None if fresh else _settings_change(out, settings)
    if change:
        log(f"[demo] {out} holds a demo made with other settings ({change}): starting it "
            "afresh (give another --out to keep both)")
    if fresh or change:
        start_afresh(out)
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, SETTINGS_FILE),
                      json.dumps(asdict(settings), indent=1, sort_keys=True) + "\n")
    fresh = False  # cleared above; the stages need not clear their parts again
    summary: dict = dict(settings=asdict(settings), seconds={})
    student = None
    for number, stage in enumerate(stages, 1):
        start = time.perf_counter()
        log(f"[demo] stage {number}/{len(stages)}: {stage}")
        if stage == "distill":
            student = stage_distill(out, settings, fresh, log)
            summary["distill"] = dict(accuracy=student["accuracy"], store=student["store"])
        elif stage in ("detect", "segment"):
            if student is None:
                raise DemoError(f"stage {stage} needs the distilled student: run the distill stage")
            summary[stage] = stage_dense("det" if stage == "detect" else "seg", out, student,
                                         settings, fresh, log, config_root)
        elif stage == "probe":
            if student is None:
                raise DemoError("stage probe needs the students: run the distill stage")
            records = stage_probe(out, student, settings, log)
            summary["probe"] = {r["model"]: round(r["metrics"]["top1"], 2) for r in records
                                if r["task"] == "linear_probe"}
        elif stage == "tables":
            tables = stage_tables(out, log, bench_report)
            summary["tables"] = dict(folder=os.path.join(out, "tables"), rows=tables["tables"],
                                     missing=len(tables.get("missing", [])))
        else:
            raise DemoError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        summary["seconds"][stage] = round(time.perf_counter() - start, 1)
    atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    lines = ["", "TinyViT transfer demo — summary"]
    if "distill" in summary:
        acc = summary["distill"]["accuracy"]
        lines.append("  distillation (digits test top-1 %): " + ", ".join(
            f"{k} {v:.1f}" for k, v in acc.items()))
    if "detect" in summary:
        d = summary["detect"]
        # mmdet's CocoMetric writes fractions; the tables (and the paper) print percent
        lines.append(f"  Mask R-CNN on scenes (%): bbox mAP "
                     f"{100 * d.get('coco/bbox_mAP', float('nan')):.1f}, segm mAP "
                     f"{100 * d.get('coco/segm_mAP', float('nan')):.1f}")
    if "segment" in summary:
        lines.append(f"  UperNet on scenes: mIoU {summary['segment'].get('mIoU', float('nan')):.1f}")
    if "probe" in summary:
        lines.append("  linear probe on digits (top-1 %): " + ", ".join(
            f"{k.removeprefix('tinyvit-demo ')} {v:.1f}" for k, v in summary["probe"].items()))
    total = sum(summary["seconds"].values())
    lines.append(f"  time: {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in
                                                       summary["seconds"].items()) + ")")
    if "tables" in summary:
        folder = summary["tables"]["folder"]
        lines.append(f"  tables and plots: {folder}/tables.md")
        lines.append("  the paper's tables, published rows beside ours (a full-scale run of "
                     "tools/reproduce.py fills the missing rows):")
        for slug in PAPER_TABLES:
            path = os.path.join(folder, f"{slug}.md")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    lines += ["", *("    " + line for line in f.read().rstrip().splitlines())]
    return "\n".join(lines)
