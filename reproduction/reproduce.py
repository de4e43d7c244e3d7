"""One command per paper table: run every row the given weights and data allow, then regenerate
the table with the published numbers beside ours (``tools/reproduce.py table5|table6``).

Table 5 (:func:`reproduce_table5`): for each pretraining row given weights (``in1k``,
``in1k-distill``, ``in21k``, ``in21k-distill``), TinyViT-21M is probed with the paper's
protocols: MoCo v3's linear probe on CIFAR-10, CIFAR-100, Flowers, Cars and Pets, and cdfsl's
5-way 5/20/50-shot episodes on ISIC, EuroSAT, CropDisease and ChestX (backbone fine-tuned, the
cdfsl default, or frozen). Records go to ``OUT/results.jsonl``; a rerun skips every finished
(row, dataset) and resumes unfinished ones (both protocols resume their own state).

Table 6 (:func:`reproduce_table6`): collects the three Cascade Mask R-CNN runs from mmengine work
dirs, optionally training the missing ones first (``--train``, through ``tools/train.py`` under
torchrun, one run after the other).

Rows whose weights or data are missing are listed, each with the exact command or download
that fills it; nothing is guessed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

from tinyvit_backbone.files import atomic_write_json, atomic_write_text
from tinyvit_backbone.tabular import to_csv, to_markdown

from . import paper_tables
from . import published as pub
from .probes import read_results
from .runs import find_work_dirs, read_run
from .tables import Notes

Log = Callable[[str], None]
RESULTS = "results.jsonl"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_weights(items: Sequence[str]) -> dict[str, str]:
    """``["in21k-distill=tiny_vit_21m_22k_distill", "in1k=w.pth"]`` -> {row: weights}; rows
    may be written with ``_`` too (``in21k_distill``)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower().replace("_", "-")
        if not sep or not value:
            raise ValueError(f"--weights {item!r}: write ROW=WEIGHTS, e.g. "
                             "in21k-distill=tiny_vit_21m_22k_distill")
        if key not in pub.PRETRAININGS:
            raise ValueError(f"--weights {item!r}: the row must be one of "
                             f"{', '.join(pub.PRETRAININGS)}")
        out[key] = value
    return out


# ----------------------------------------------------------------------------- Table 5
def _done(records: list[dict], protocol: str, model: str, dataset: str, k: int | None = None,
          frozen: bool | None = None) -> bool:
    return any(r.get("protocol") == protocol and r.get("model") == model
               and r.get("dataset") == dataset and (k is None or r.get("k") == k)
               and (frozen is None or bool(r.get("freeze_backbone")) == frozen)
               for r in records)


def _read_records(path: str) -> list[dict]:
    from linear_probe.results import read_jsonl

    return read_jsonl(path) if os.path.isfile(path) else []


def row_label(pretraining: str) -> str:
    return f"TinyViT-21M ({pub.PRETRAINING_TEXT[pretraining]})"


def reproduce_table5(weights: Mapping[str, str], out: str, *, data_root: str | None = None,
                     linear: bool = True, fewshot: bool = True, freeze_backbone: bool = False,
                     shots: Sequence[int] = pub.CDFSL_SHOTS, episodes: int = pub.CDFSL_EPISODES,
                     mocov3_epochs: int | None = None, image_size: int | None = None,
                     settings=None, run_mocov3=None, run_cdfsl=None,
                     log: Log = _stderr) -> dict:
    """Run what the weights and the data on disk allow; write ``OUT/results.jsonl``,
    ``OUT/table5_linear.{md,csv}``, ``OUT/table5_fewshot.{md,csv}`` and ``OUT/summary.json``.

    ``mocov3_epochs`` / ``episodes`` / ``shots`` / ``image_size`` shrink the protocols for a
    smoke run (the records say so: they are then not the paper's numbers, and the table notes
    the short episodes). ``run_mocov3`` / ``run_cdfsl`` default to :mod:`linear_probe`'s."""
    from linear_probe.backbones import ModelSpec
    from linear_probe.downloads import how_to_get
    from linear_probe.recipes import MOCOV3_RECIPE
    from linear_probe.registry import dataset_spec
    from linear_probe.results import PAPER_FEWSHOT, PAPER_LINEAR
    from linear_probe.settings import FeatureSettings

    if run_mocov3 is None:
        from linear_probe.mocov3 import run_mocov3
    if run_cdfsl is None:
        from linear_probe.cdfsl import run_cdfsl
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, RESULTS)
    work_dir = os.path.join(out, "work")
    settings = settings or FeatureSettings(data_root=data_root, image_size=image_size)
    recipe = MOCOV3_RECIPE if mocov3_epochs is None else MOCOV3_RECIPE.with_epochs(mocov3_epochs)
    missing: list[str] = []
    ran: list[str] = []
    wanted = [(PAPER_LINEAR, linear), (PAPER_FEWSHOT, fewshot)]
    on_disk = {}
    for table, use in wanted:
        for name in table.datasets if use else ():
            spec = dataset_spec(name)
            gap = spec.missing_path(settings.data_root)
            on_disk[name] = gap is None
            if gap is not None:
                missing.append(f"data {name}: {how_to_get(spec, settings.data_root)}")
    for pre in pub.PRETRAININGS:
        if pre not in weights:
            missing.append(f"row {pub.PRETRAINING_TEXT[pre]}: no weights; "
                           + paper_tables.table5_command(pre))
            continue
        model = ModelSpec("tinyvit", arch="21m", weights=weights[pre], label=row_label(pre),
                          pretraining=pre)
        records = _read_records(results)
        if linear:
            for name in PAPER_LINEAR.datasets:
                if not on_disk[name]:
                    continue
                if _done(records, PAPER_LINEAR.protocol, model.display_label(), name):
                    log(f"[table5] {model.display_label()} {name}: done, kept")
                    continue
                log(f"[table5] {model.display_label()} {name}: mocov3 linear probe")
                run_mocov3(model, name, recipe=recipe, settings=settings, work_dir=work_dir,
                           output=results)
                ran.append(f"{pre} {name} mocov3")
        if fewshot:
            for name in PAPER_FEWSHOT.datasets:
                if not on_disk[name]:
                    continue
                todo = [k for k in shots if not _done(records, PAPER_FEWSHOT.protocol,
                                                      model.display_label(), name, k,
                                                      freeze_backbone)]
                if not todo:
                    log(f"[table5] {model.display_label()} {name}: done, kept")
                    continue
                log(f"[table5] {model.display_label()} {name}: cdfsl {todo}-shot, "
                    + ("frozen" if freeze_backbone else "fine-tuned") + " backbone")
                run_cdfsl(model, name, todo, n_way=PAPER_FEWSHOT.n_way, n_episodes=episodes,
                          freeze_backbone=freeze_backbone, settings=settings, work_dir=work_dir,
                          output=results)
                ran.append(f"{pre} {name} cdfsl {todo}")
    parsed = read_results([results] if os.path.isfile(results) else [])
    notes = Notes()
    tables = [paper_tables.table5_linear(parsed, notes), paper_tables.table5_fewshot(parsed, notes)]
    files = _write_tables(tables, out)
    summary = dict(table="Table 5", ran=ran, missing=missing + notes.as_dict()["missing"],
                   warnings=notes.as_dict()["warnings"] + parsed.warnings + parsed.malformed,
                   records=len(parsed.records), files=files)
    atomic_write_json(os.path.join(out, "summary.json"), summary)
    return summary


def _write_tables(tables, out: str) -> list[str]:
    files = []
    for table in tables:
        for ext, render in (("md", to_markdown), ("csv", to_csv)):
            path = os.path.join(out, f"{table.slug}.{ext}")
            atomic_write_text(path, render(table))
            files.append(path)
    return files


# ----------------------------------------------------------------------------- Table 6
def train_command(config: str, gpus: int, extra: Sequence[str] = ()) -> list[str]:
    """The training command of one Table 6 run (torchrun over ``gpus`` processes)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    train = os.path.join(root, "tools", "train.py")
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}",
                train, config, "--launcher", "pytorch", *extra]
    return [sys.executable, train, config, *extra]


def reproduce_table6(work_dirs: Sequence[str], out: str, *, train: bool = False,
                     config_root: str = ".", gpus: int = 8, work_root: str = "work_dirs",
                     runner: Callable[[list[str]], int] | None = None,
                     log: Log = _stderr) -> dict:
    """Collect the Table 6 runs from ``work_dirs`` (each a work dir or a folder of them);
    with ``train``, first train every row that has no complete run into
    ``WORK_ROOT/<config name>`` (resuming a started one). Writes ``OUT/table6.{md,csv}`` and
    ``OUT/summary.json``."""
    runner = runner or (lambda cmd: subprocess.run(cmd).returncode)
    os.makedirs(out, exist_ok=True)
    trained: list[str] = []
    dirs = [d for d in work_dirs if os.path.isdir(d)]
    if train:
        have = {paper_tables.table6_row(read_run(d)) for d in find_work_dirs(dirs)} if dirs \
            else set()
        for pre, config in paper_tables.TABLE6_CONFIGS.items():
            if pre in have:
                continue
            name = os.path.splitext(os.path.basename(config))[0]
            wd = os.path.join(work_root, name)
            extra = ["--work-dir", wd] + (["--resume"] if os.path.isfile(
                os.path.join(wd, "last_checkpoint")) else [])
            cmd = train_command(os.path.join(config_root, config), gpus, extra)
            log("[table6] training: " + " ".join(cmd))
            code = runner(cmd)
            if code != 0:
                raise RuntimeError(f"training {config} failed (exit status {code}); its log is "
                                   f"in {wd}; rerun the same command to resume it")
            trained.append(wd)
            dirs.append(wd)
    found = find_work_dirs(sorted(set(dirs))) if dirs else []
    runs = [read_run(d) for d in found]
    notes = Notes()
    table = paper_tables.table6(runs, notes)
    files = _write_tables([table], out)
    summary = dict(table="Table 6", trained=trained,
                   runs={r.name: r.status for r in runs}, missing=notes.as_dict()["missing"],
                   files=files)
    atomic_write_json(os.path.join(out, "summary.json"), summary)
    return summary


def summary_text(summary: dict) -> str:
    return json.dumps(summary, indent=2, default=str)
