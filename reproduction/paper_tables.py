"""The paper's transfer tables in its own layout, each published row followed by ours.

* Table 6 — COCO val2017, Cascade Mask R-CNN 1x: rows Swin-T, TinyViT-21M (IN-1k),
  TinyViT-21M (IN-21k ⚗); columns params, IN-1k top-1, AP, AP50, AP75, APS, APM, APL.
* Table 5 — linear probe (CIFAR-10, CIFAR-100, Flowers, Cars, Pets; top-1) and cdfsl few-shot
  (5-way 5/20/50-shot on ISIC, EuroSAT, CropD, ChestX; mean over episodes ± 95% CI); rows
  IN-1k, IN-1k ⚗, IN-21k, IN-21k ⚗.

Only results made with the paper's protocol enter: for Table 6 complete Cascade Mask R-CNN runs
of 12 epochs evaluated on COCO val2017; for Table 5 linear-probe records of protocol
``mocov3`` and 5-way episodes of protocol ``cdfsl`` (frozen or fine-tuned backbone, labelled),
all of TinyViT-21M. Everything else goes to the wider-suite tables (:mod:`.tables`), labelled
with its protocol. A published row without any result of ours is followed by a "missing" row
naming the command that fills it.
"""
from __future__ import annotations

from tinyvit_backbone.tabular import Cell, Column, Table, num, text

from . import published as pub
from .probes import ProbeResults, Record, official_variant
from .runs import Run
from .tables import Notes, row_label, run_label

PROTOCOL_LINEAR = "mocov3"
PROTOCOL_FEWSHOT = "cdfsl"

# What fills each row: the config of each detector run, the official weights of each
# pretraining (None: not released; the distillation tools make them).
TABLE6_CONFIGS = {None: "det_configs/cascade_swin-t_1x.py",
                  "in1k": "det_configs/cascade_tinyvit21m_in1k.py",
                  "in21k-distill": "det_configs/cascade_tinyvit21m.py"}
TABLE5_WEIGHTS = {"in1k": "tiny_vit_21m_1k", "in1k-distill": None, "in21k": None,
                  "in21k-distill": "tiny_vit_21m_22k_distill"}


def table6_command(pretraining: str | None) -> str:
    return (f"mim train mmdet {TABLE6_CONFIGS[pretraining]} --gpus 8 --launcher pytorch "
            "(or python tools/reproduce.py table6 --train)")


def table5_command(pretraining: str) -> str:
    weights = TABLE5_WEIGHTS[pretraining]
    if weights:
        return f"python tools/reproduce.py table5 --weights {pretraining}={weights}"
    return (f"python tools/reproduce.py table5 --weights {pretraining}=<checkpoint> (no official "
            "checkpoint: train one with python -m tinyvit_backbone.distill)")


# --------------------------------------------------------------------------------- Table 6
def table6_row(run: Run) -> str | None | bool:
    """The Table 6 row a run reproduces (its pretraining key, None for Swin-T), or False."""
    from .probes import pretraining_of

    c = run.config
    if (run.status != "complete" or c is None or c.model != "Cascade Mask R-CNN"
            or c.schedule != "1x" or c.dataset != "COCO"):
        return False
    if c.backbone == "Swin-T":
        return None
    if c.backbone == "TinyViT-21M":
        key = pretraining_of(c.pretrained, "21m")
        return key if key in ("in1k", "in21k-distill") else False
    return False


def table6(runs: list[Run], notes: Notes) -> Table:
    cols = [Column("row"), Column("backbone"), Column("params (M)", True, 0),
            Column("IN-1k top-1", True, 1),
            *(Column(n, True, 1) for n in ("AP", "AP50", "AP75", "APS", "APM", "APL")),
            Column("mask AP", True, 1), Column("run / source")]
    table = Table("table6", "Table 6: COCO 2017 val, Cascade Mask R-CNN 1x (box AP, %)", cols)
    by_row: dict = {}
    for run in runs:
        key = table6_row(run)
        if key is not False:
            by_row.setdefault(key, []).append(run)
    for p in pub.TABLE6:
        label = p.backbone + (f" ({pub.PRETRAINING_TEXT[p.pretraining]})" if p.pretraining
                              else "")
        table.add_row([text("published"), text(label), num(p.params_m), num(p.in1k_top1),
                       *(num(getattr(p, name)) for name, _ in pub.TABLE6_METRICS),
                       num(p.mask_ap), text(p.source)])
        ours = sorted(by_row.get(p.pretraining, []), key=lambda r: r.name)
        for run in ours:
            m = run.metrics
            table.add_row([text(row_label(run)), text(label), num(run.config.backbone_params_m),
                           Cell(),
                           *(num(100.0 * m[key]) if m.get(key, -1) >= 0 else Cell(text="n/a")
                             for _, key in pub.TABLE6_METRICS),
                           num(100.0 * m["coco/segm_mAP"]) if "coco/segm_mAP" in m else Cell(),
                           text(run_label(run))])
        if not ours:
            table.add_row([text("missing"), text(label), *(Cell() for _ in range(9)),
                           text(table6_command(p.pretraining))])
            notes.missing.append(f"Table 6 {label}: no complete COCO run; "
                                 + table6_command(p.pretraining))
    table.footnotes = [
        "Published params are the backbone's as the paper prints them; ours are counted from "
        "the run's config (backbone alone). IN-1k top-1 belongs to the pretrained weights, "
        "not to a detection run, so our rows leave it empty.",
        "Only complete 12-epoch Cascade Mask R-CNN runs evaluated on COCO val2017 enter this "
        "table; other runs are in the COCO table of the wider suite.",
    ]
    return table


# --------------------------------------------------------------------------------- Table 5
def _is_21m(rec: Record) -> bool:
    return official_variant(rec.arch) == "21m" or official_variant(rec.model) == "21m"


def _ours_label(rec: Record) -> str:
    mode = f", {rec.backbone_mode} backbone" if rec.backbone_mode else ""
    return f"{rec.model} ({rec.protocol}{mode})"


def _missing_table5_row(table: Table, notes: Notes, pre: str, cells: int, what: str) -> None:
    """A pretraining row of Table 5 with none of ours: a "missing" row naming the command that
    fills it, and the same in the notes."""
    table.add_row([text("missing"), text(pub.PRETRAINING_TEXT[pre]), *(Cell() for _ in range(cells)),
                   text(table5_command(pre))])
    notes.missing.append(f"Table 5 {what} of TinyViT-21M; {table5_command(pre)}")


def table5_linear(results: ProbeResults, notes: Notes) -> Table:
    datasets = pub.TABLE5_LINEAR_DATASETS
    cols = [Column("row"), Column("pretraining"), *(Column(h, True, 1) for _, h in datasets),
            Column("model / source")]
    table = Table("table5_linear",
                  "Table 5 (left): linear probe, MoCo v3 protocol (top-1, %)", cols)
    recs = [r for r in results.records if r.task == "linear_probe"
            and r.protocol == PROTOCOL_LINEAR and _is_21m(r)]
    for pre in pub.PRETRAININGS:
        values = pub.TABLE5_LINEAR[pre]
        table.add_row([text("published"), text(pub.PRETRAINING_TEXT[pre]),
                       *(num(values[ds]) for ds, _ in datasets), text(pub.TABLE5_SOURCE)])
        mine = [r for r in recs if r.pretraining == pre]
        models = sorted({r.model for r in mine})
        for model in models:
            by_ds = {r.dataset: r for r in mine if r.model == model}
            first = next(iter(by_ds.values()))
            table.add_row([text("ours"), text(pub.PRETRAINING_TEXT[pre]),
                           *(num(by_ds[ds].value) if ds in by_ds else Cell()
                             for ds, _ in datasets), text(_ours_label(first))])
            lacking = [h for ds, h in datasets if ds not in by_ds]
            if lacking:
                notes.missing.append(f"Table 5 linear probe {pub.PRETRAINING_TEXT[pre]} "
                                     f"({model}): " + ", ".join(lacking))
        if not models:
            _missing_table5_row(table, notes, pre, len(datasets),
                                f"linear probe {pub.PRETRAINING_TEXT[pre]}: no "
                                f"{PROTOCOL_LINEAR} records")
    table.footnotes = ["Ours: protocol mocov3 (MoCo v3 main_lincls: frozen backbone, "
                       "RandomResizedCrop + flip online, SGD 90 epochs, cosine, wd 0)."]
    return table


def table5_fewshot(results: ProbeResults, notes: Notes) -> Table:
    columns = [(ds, k, f"{k}-shot {h}") for k in pub.CDFSL_SHOTS
               for ds, h in pub.TABLE5_FEWSHOT_DATASETS]
    cols = [Column("row"), Column("pretraining"),
            *(Column(h, True, 1, with_err=True) for _, _, h in columns),
            Column("model / source")]
    table = Table("table5_fewshot",
                  f"Table 5 (right): cdfsl few-shot, {pub.CDFSL_WAYS}-way "
                  "(%, mean ± 95% CI over episodes)", cols)
    recs = [r for r in results.records if r.task == "episodes" and r.protocol == PROTOCOL_FEWSHOT
            and r.n_way == pub.CDFSL_WAYS and _is_21m(r)]
    for pre in pub.PRETRAININGS:
        values = pub.TABLE5_FEWSHOT[pre]
        table.add_row([text("published"), text(pub.PRETRAINING_TEXT[pre]),
                       *(num(values[(ds, k)]) for ds, k, _ in columns),
                       text(pub.TABLE5_SOURCE)])
        mine = [r for r in recs if r.pretraining == pre]
        rows = sorted({(r.model, r.backbone_mode or "") for r in mine})
        for model, mode in rows:
            by = {(r.dataset, r.k): r for r in mine
                  if r.model == model and (r.backbone_mode or "") == mode}
            first = next(iter(by.values()))
            table.add_row([text("ours"), text(pub.PRETRAINING_TEXT[pre]),
                           *(num(by[(ds, k)].value, by[(ds, k)].ci95) if (ds, k) in by else Cell()
                             for ds, k, _ in columns), text(_ours_label(first))])
            lacking = [h for ds, k, h in columns if (ds, k) not in by]
            if lacking:
                notes.missing.append(f"Table 5 few-shot {pub.PRETRAINING_TEXT[pre]} "
                                     f"({_ours_label(first)}): " + ", ".join(lacking))
            short = sorted({r.episodes for r in by.values()
                            if r.episodes is not None and r.episodes < pub.CDFSL_EPISODES})
            if short:
                notes.warnings.append(f"Table 5 few-shot {pub.PRETRAINING_TEXT[pre]} "
                                      f"({model}): {', '.join(map(str, short))} episodes, the "
                                      f"paper uses {pub.CDFSL_EPISODES}")
        if not rows:
            _missing_table5_row(table, notes, pre, len(columns),
                                f"few-shot {pub.PRETRAINING_TEXT[pre]}: no "
                                f"{PROTOCOL_FEWSHOT} episodes")
    table.footnotes = ["Ours: protocol cdfsl (finetune.py: a fresh linear layer per episode, "
                       "SGD 100 epochs in mini-batches of 4; the backbone fine-tuned or frozen, "
                       "as labelled). The paper does not say which it used."]
    return table


# --------------------------------------------------------------------------------- ablations
def ablations_table() -> Table:
    cols = [Column("study"), Column("setting"), Column("IN-1k top-1", True, 1),
            Column("source")]
    table = Table("ablations", "Ablations: ImageNet-1k top-1 of TinyViT-21M (%, published)",
                  cols)
    for a in pub.ABLATIONS:
        table.add_row([text(a.study), text(a.setting), num(a.in1k_top1), text(a.source)])
    table.footnotes = ["Published only: an IN-21k pretraining run is beyond this suite's "
                       "commands at paper scale; `python -m tinyvit_backbone.distill mini-repro` "
                       "reproduces the with / without distillation comparison in miniature."]
    return table
