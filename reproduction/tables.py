"""Build the report's tables from what was read: runs, probe records, the benchmark report.

Every builder is a pure function of its inputs plus a :class:`Notes` it appends to; rows are
sorted so the same inputs give the same tables. Published rows come first, marked
"published", then ours; a run that is in progress, crashed, failed, malformed or only a
dumped config keeps its row with "—" in every number, and an expected run that is absent gets a
"missing" row. Runs of one config are marked "(duplicate)" and name each other. Everything not
in the numbers is listed in the notes at the end of the report.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from linear_probe.results import METRIC_SHORT
from tinyvit_backbone.complexity import METHOD as COMPLEXITY_METHOD
from tinyvit_backbone.complexity import classifier_complexity
from tinyvit_backbone.tabular import Cell, Column, Table, num, text

from . import published as pub
from .bench_report import PATHS, BenchReport, machine_text
from .probes import (
    ProbeResults,
    Record,
    dataset_order,
    kshot_stats,
)
from .runs import Run

PROTOCOL_NOTE = ("mocov3 = MoCo v3's linear probe (the paper's); cdfsl = cdfsl's finetune.py "
                 "(the paper's); clip-lbfgs = the CLIP L-BFGS sweep on cached features (fast); "
                 "lbfgs-fast = L-BFGS episodes on cached features (fast).")
STATUS_ROW = {"complete": "ours", "in progress": "in progress", "crashed": "crashed",
              "malformed": "malformed", "failed": "failed", "config only": "config only"}


@dataclass
class Notes:
    """What the report lists after the tables (each a sorted list of one-line strings)."""

    missing: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    config_only: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {k: sorted(set(v)) for k, v in vars(self).items()}


def _pct(v: float | None) -> Cell:
    """A COCO fraction as percent; -1 (COCOeval: no objects of that size) as n/a."""
    if v is None:
        return Cell()
    return Cell(text="n/a") if v < 0 else num(100.0 * v)


def run_label(run: Run) -> str:
    """The run / source cell: its name, where its numbers come from, and the other runs of
    its config."""
    label = run.name
    if run.status == "complete" and run.eval_source:
        label = f"{run.name} ({run.eval_source})"
    if run.duplicates:
        label += "; same config as " + ", ".join(run.duplicates)
    return label


def row_label(run: Run) -> str:
    """The row cell: the run's status, and "(duplicate)" when another run has its config."""
    return STATUS_ROW[run.status] + (" (duplicate)" if run.duplicates else "")


def natural_key(s: str | None) -> tuple:
    """'TinyViT-5M' before 'TinyViT-21M': digit runs compare as numbers."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t.lower())
                 for t in re.split(r"(\d+)", s or "") if t)


def _run_sort_key(run: Run) -> tuple:
    c = run.config
    return (natural_key(c.backbone if c else None), natural_key(c.model if c else None),
            run.name)


# ---------------------------------------------------------------------------- COCO
def coco_table(runs: list[Run], notes: Notes) -> Table:
    cols = [Column("row"), Column("backbone"), Column("params (M)", True, 1), Column("detector"),
            Column("schedule"), Column("pretrained"), Column("dataset"),
            *(Column(n, True, 1) for n in ("box AP", "AP50", "AP75", "APs", "APm", "APl")),
            Column("mask AP", True, 1), Column("run / source")]
    table = Table("coco", "COCO detection: box and mask AP (%)", cols)
    for t6 in pub.TABLE6:
        table.add_row([text("published"), text(t6.backbone), num(t6.params_m),
                       text("Cascade Mask R-CNN"), text("1x"),
                       text(pub.PRETRAINING_TEXT[t6.pretraining] if t6.pretraining else None),
                       text("COCO"), *(num(getattr(t6, name)) for name, _ in pub.TABLE6_METRICS),
                       num(t6.mask_ap), text(t6.source)])
    for p in pub.COCO:
        table.add_row([text("published"), text(p.backbone), num(p.backbone_params_m),
                       text(p.detector), text(p.schedule), Cell(), text("COCO"), num(p.box_ap),
                       *(Cell() for _ in range(5)), num(p.mask_ap), text(p.source)])
    det = sorted((r for r in runs if r.task == "det"), key=_run_sort_key)
    for run in det:
        c = run.config
        m = run.metrics
        segm = "coco/segm_mAP" in m
        table.add_row([
            text(row_label(run)), text(c and c.backbone), num(c and c.backbone_params_m),
            text(c and c.model), text(c and c.schedule), text(c and c.pretrained),
            text(c and c.dataset),
            *(_pct(m.get(f"coco/bbox_{s}")) for s in ("mAP", "mAP_50", "mAP_75", "mAP_s",
                                                      "mAP_m", "mAP_l")),
            _pct(m.get("coco/segm_mAP")) if segm else Cell(), text(run_label(run))])
    table.footnotes = [
        "Published rows: Table 6 of the TinyViT paper (every column) and Swin's model zoo (box "
        "and mask AP only). Published params are as printed (Swin-T 28M, TinyViT-21M 21M); ours "
        "count the backbone alone, from its config.",
        "n/a: COCOeval found no objects of that size (it writes -1).",
    ]
    return table


# ---------------------------------------------------------------------------- segmentation
def segmentation_table(runs: list[Run], notes: Notes) -> Table:
    cols = [Column("row"), Column("backbone"), Column("params (M)", True, 1), Column("decoder"),
            Column("dataset"), Column("schedule"), Column("pretrained"), Column("mIoU", True, 2),
            Column("aAcc", True, 2), Column("mAcc", True, 2), Column("run / source")]
    table = Table("segmentation", "Semantic segmentation: mIoU, aAcc, mAcc (%)", cols)
    for p in pub.SEGMENTATION:
        table.add_row([text("published"), text(p.backbone), num(p.backbone_params_m),
                       text(p.decoder), text(p.dataset), text(p.schedule), Cell(), num(p.miou),
                       Cell(), Cell(), text(p.source)])
    for run in sorted((r for r in runs if r.task == "seg"), key=_run_sort_key):
        c = run.config
        m = run.metrics
        table.add_row([text(row_label(run)), text(c and c.backbone),
                       num(c and c.backbone_params_m), text(c and c.model),
                       text(c and c.dataset), text(c and c.schedule), text(c and c.pretrained),
                       num(m.get("mIoU")), num(m.get("aAcc")), num(m.get("mAcc")),
                       text(run_label(run))])
    table.footnotes = [f"Published mIoU is single-scale; with multi-scale + flip testing "
                       f"{pub.SEGMENTATION[0].backbone} {pub.SEGMENTATION[0].decoder} reaches "
                       f"{pub.SEGMENTATION[0].miou_ms} ({pub.SEGMENTATION[0].source})."]
    return table


def note_runs(runs: list[Run], notes: Notes) -> None:
    """List every run that gave no numbers, runs of one config, and runs whose params could
    not be counted."""
    lists = {"in progress": notes.in_progress, "crashed": notes.crashed,
             "malformed": notes.malformed, "failed": notes.failed,
             "config only": notes.config_only}
    for run in runs:
        if run.status in lists:
            lists[run.status].append(f"{run.name}: {run.reason}")
        if run.config and run.config.params_note:
            notes.warnings.append(f"{run.name}: {run.config.params_note}")
        if run.task is None and run.status in ("complete", "in progress"):
            notes.warnings.append(f"{run.name}: neither detection nor segmentation (no "
                                  "default_scope mmdet/mmseg, no metrics); in no table")
        if run.duplicates:
            group = sorted([run.name, *run.duplicates])
            notes.warnings.append(
                f"{', '.join(group)}: runs of the same config (they differ only in work_dir, "
                "launcher, resume, load_from or randomness), each a row marked (duplicate); "
                "keep one, or report them as repeats")


# ---------------------------------------------------------------------------- classification
def _model_meta(records: list[Record]) -> dict[str, tuple]:
    """{model: (arch text, pretraining key)} from the first record of each model."""
    out: dict[str, tuple] = {}
    for rec in sorted(records, key=lambda r: (r.model, r.origin)):
        if rec.model not in out:
            arch = rec.arch if isinstance(rec.arch, str) else ("custom" if rec.arch else None)
            out[rec.model] = (arch, rec.pretraining)
    return out


def _meta_cells(meta: tuple) -> list[Cell]:
    return [text(meta[0]), text(pub.PRETRAINING_TEXT[meta[1]])]


def _protocol(rec: Record) -> str:
    return rec.protocol + (f" ({rec.backbone_mode})" if rec.backbone_mode else "")


def _header_with_metric(ds: str, metrics: set[str]) -> str:
    m = sorted(metrics)[0]
    return ds if m == "top1" else f"{ds} ({METRIC_SHORT[m]})"


def linear_probe_table(results: ProbeResults, notes: Notes) -> Table:
    recs = [r for r in results.records if r.task == "linear_probe"]
    datasets = sorted({r.dataset for r in recs}, key=dataset_order)
    metric_of: dict[str, set[str]] = {}
    for r in recs:
        metric_of.setdefault(r.dataset, set()).add(r.metric)
    for ds, ms in sorted(metric_of.items()):
        if len(ms) > 1:
            notes.warnings.append(f"linear probe {ds}: records use different metrics "
                                  f"({', '.join(sorted(ms))}); the column mixes them")
    cols = [Column("row"), Column("model"), Column("protocol"), Column("arch"),
            Column("pretraining")]
    cols += [Column(_header_with_metric(d, metric_of[d]), True, 1) for d in datasets]
    if len(datasets) > 1:
        cols.append(Column(f"mean ({len(datasets)} datasets)", True, 1))
    table = Table("linear_probe", "Linear probe per dataset and protocol (%, the dataset's "
                  "official metric)", cols)
    by = {(r.model, _protocol(r), r.dataset): r for r in recs}
    meta = _model_meta(recs)
    for model, protocol in sorted({(r.model, _protocol(r)) for r in recs}):
        cells = [text("ours"), text(model), text(protocol), *_meta_cells(meta[model])]
        for d in datasets:
            r = by.get((model, protocol, d))
            cells.append(num(r.value) if r else Cell())
        if len(datasets) > 1:
            vals = [by[(model, protocol, d)].value for d in datasets
                    if (model, protocol, d) in by]
            cells.append(num(sum(vals) / len(vals)) if len(vals) == len(datasets) else Cell())
        table.add_row(cells)
    table.footnotes = ["Protocols: " + PROTOCOL_NOTE] + (
        ["The mean is over every dataset of the table, only for rows with all of them."]
        if len(datasets) > 1 else [])
    return table


def kshot_table(results: ProbeResults, notes: Notes) -> Table:
    stats = kshot_stats(results.records)
    ks = sorted({k for per in stats.values() for k in per})
    cols = [Column("row"), Column("model"), Column("protocol"), Column("dataset"),
            Column("seeds")]
    cols += [Column(f"k={k}", True, 1, with_err=True) for k in ks]
    table = Table("kshot", "k-shot linear probe by k (%, mean ± std over seeds)", cols)
    for (model, protocol, ds) in sorted(stats, key=lambda m: (m[0], m[1], dataset_order(m[2]))):
        per = stats[(model, protocol, ds)]
        seeds = sorted({s for st in per.values() for s in st.seeds})
        cells = [text("ours"), text(model), text(protocol), text(ds),
                 text(",".join(map(str, seeds)))]
        for k in ks:
            st = per.get(k)
            cells.append(num(st.mean, st.std) if st else Cell())
            if st is not None and len(st.seeds) < len(seeds):
                lacking = sorted(set(seeds) - set(st.seeds))
                notes.missing.append(f"k-shot: {model}: {ds} k={k}: seed(s) "
                                     f"{','.join(map(str, lacking))} (mean over the others)")
        table.add_row(cells)
    table.footnotes = ["std is the sample standard deviation over seeds; none with one seed."]
    return table


def episodes_table(results: ProbeResults, notes: Notes) -> Table:
    recs = [r for r in results.records if r.task == "episodes"]
    settings = sorted({(r.n_way, r.k) for r in recs})
    cols = [Column("row"), Column("model"), Column("protocol"), Column("dataset"),
            Column("episodes")]
    cols += [Column(f"{n}-way {k}-shot", True, 1, with_err=True) for n, k in settings]
    table = Table("episodes", "Few-shot episodes (%, mean ± 95% CI over episodes)", cols)
    by = {(r.model, _protocol(r), r.dataset, r.n_way, r.k): r for r in recs}
    groups = sorted({(r.model, _protocol(r), r.dataset) for r in recs},
                    key=lambda m: (m[0], m[1], dataset_order(m[2])))
    for model, protocol, ds in groups:
        counts = sorted({r.episodes for r in recs
                         if (r.model, _protocol(r), r.dataset) == (model, protocol, ds)
                         and r.episodes is not None})
        cells = [text("ours"), text(model), text(protocol), text(ds),
                 text(",".join(map(str, counts)))]
        for n, k in settings:
            r = by.get((model, protocol, ds, n, k))
            cells.append(num(r.value, r.ci95) if r else Cell())
        table.add_row(cells)
    table.footnotes = ["Protocols: " + PROTOCOL_NOTE]
    return table


# ---------------------------------------------------------------------------- models
def models_table(bench: BenchReport, notes: Notes) -> Table:
    cols = [Column("model"), Column("input"), Column("params (M)", True, 2),
            Column("GMACs", True, 2), Column("GMACs (paper)", True, 1)]
    cols += [Column(f"img/s {p}", True, 1) for p in PATHS]
    cols += [Column("V100 img/s (paper)", True, 0),
             Column("IN-1k top-1, IN-21k distill (paper)", True, 1),
             Column("IN-1k top-1, IN-1k only (paper)", True, 1)]
    table = Table("models", "Official TinyViT models: counted size, measured throughput, "
                  "published accuracy", cols)
    for p in pub.MODELS:
        cx = classifier_complexity(p.arch, p.input_size)
        measured = bench.throughput.get((p.arch, p.input_size), {})
        table.add_row([text(p.name), text(str(p.input_size)), num(cx.params_m), num(cx.gmacs),
                       num(p.gmacs), *(num(measured.get(path)) for path in PATHS),
                       num(p.v100_images_per_s), num(p.top1_in22k_distill), num(p.top1_in1k)])
        if bench.source and "backbone" not in measured:
            notes.missing.append(f"benchmark: no backbone images/s for {p.name} at "
                                 f"{p.input_size} in {bench.source}")
    if bench.source is None:
        notes.missing.append("benchmark: no report given (--bench results/bench/report.json); "
                             "the img/s columns are empty")
    notes.malformed.extend(bench.problems)
    table.footnotes = [
        f"params and GMACs: {COMPLEXITY_METHOD}.",
        "img/s: the project's benchmark (" + (bench.source or "not given") + "), "
        + machine_text(bench.machine) + "; 'backbone' = the mmdet/mmseg backbone, 'fast' = "
        "its fused inference path, 'timm' = timm's classifier.",
        "(paper) columns: " + pub.MODELS_SOURCE + ".",
    ]
    return table
