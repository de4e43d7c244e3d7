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
from .runs import find_work_dirs, read_runs
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


def check_weights(weights: Mapping[str, str]) -> None:
    """Refuse, before any work, a ``--weights`` value that is no file, registry name, URL or hub
    tag (a typo); weights that are only unreachable now are listed as missing instead."""
    from tinyvit_backbone.weights import WeightsNotFoundError, classify, resolve_weights

    for row, spec in weights.items():
        if classify(spec)[0] == "path" and not os.path.isfile(spec):
            try:
                resolve_weights(spec)  # a missing local file: raises, touches no network
            except WeightsNotFoundError as err:
                raise ValueError(f"--weights {row}={spec}: {err}") from None


def _model(pre: str, weights: str):
    """The row's ModelSpec, its weights resolved (downloaded once into the cache); raises
    CheckpointError when they cannot be fetched now."""
    from linear_probe.backbones import ModelSpec

    return ModelSpec("tinyvit", arch="21m", weights=weights, label=row_label(pre),
                     pretraining=pre)


def reproduce_table5(weights: Mapping[str, str], out: str, *, data_root: str | None = None,
                     linear: bool = True, fewshot: bool = True, freeze_backbone: bool = False,
                     shots: Sequence[int] = pub.CDFSL_SHOTS, episodes: int = pub.CDFSL_EPISODES,
                     mocov3_epochs: int | None = None, image_size: int | None = None,
                     settings=None, download: bool = False, command: str | None = None,
                     run_mocov3=None, run_cdfsl=None, log: Log = _stderr) -> dict:
    """Run what the weights and the data on disk allow; write ``OUT/results.jsonl``,
    ``OUT/table5_linear.{md,csv}``, ``OUT/table5_fewshot.{md,csv}`` and ``OUT/summary.json``.

    ``download`` first fetches the missing datasets torchvision can fetch. Weights that cannot
    be fetched now (no network) and data that is not on disk leave their cells missing: the
    summary lists each with the download that provides it and ``command`` (the command line
    to rerun, default the generic one). ``mocov3_epochs`` / ``episodes`` / ``shots`` /
    ``image_size`` shrink the protocols for a smoke run (the records say so: they are then not
    the paper's numbers, and the table notes the short episodes). ``run_mocov3`` /
    ``run_cdfsl`` default to :mod:`linear_probe`'s."""
    from linear_probe.downloads import TORCHVISION, DatasetDownloadError, how_to_get
    from linear_probe.downloads import download as fetch_dataset
    from linear_probe.recipes import MOCOV3_RECIPE
    from linear_probe.registry import dataset_spec
    from linear_probe.results import PAPER_FEWSHOT, PAPER_LINEAR
    from linear_probe.settings import FeatureSettings
    from tinyvit_backbone.weights import CheckpointError

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
    rerun = command or "the same tools/reproduce.py table5 command"
    check_weights(weights)
    wanted = [(PAPER_LINEAR, linear), (PAPER_FEWSHOT, fewshot)]
    on_disk = {}
    for table, use in wanted:
        for name in table.datasets if use else ():
            spec = dataset_spec(name)
            if download and name in TORCHVISION and spec.missing_path(settings.data_root):
                log(f"[table5] {name}: downloading (torchvision)")
                try:
                    fetch_dataset(spec, settings.data_root)
                except DatasetDownloadError as err:
                    missing.append(f"data {name}: {err}")
                    on_disk[name] = False
                    continue
            gap = spec.missing_path(settings.data_root)
            on_disk[name] = gap is None
            if gap is not None:
                missing.append(f"data {name}: {how_to_get(spec, settings.data_root)}")
    for pre in pub.PRETRAININGS:
        if pre not in weights:
            missing.append(f"row {pub.PRETRAINING_TEXT[pre]}: no weights; "
                           + paper_tables.table5_command(pre))
            continue
        label = row_label(pre)
        records = _read_records(results)
        linear_todo = [name for name in (PAPER_LINEAR.datasets if linear else ())
                       if on_disk[name] and not _done(records, PAPER_LINEAR.protocol, label, name)]
        fewshot_todo = {}
        for name in PAPER_FEWSHOT.datasets if fewshot else ():
            todo = [k for k in shots if on_disk[name] and not _done(
                records, PAPER_FEWSHOT.protocol, label, name, k, freeze_backbone)]
            if todo:
                fewshot_todo[name] = todo
        done = [n for n in (PAPER_LINEAR.datasets if linear else ())
                if on_disk[n] and n not in linear_todo]
        done += [n for n in (PAPER_FEWSHOT.datasets if fewshot else ())
                 if on_disk[n] and n not in fewshot_todo]
        for name in done:
            log(f"[table5] {label} {name}: done, kept")
        if not linear_todo and not fewshot_todo:
            continue
        try:
            model = _model(pre, weights[pre])
        except CheckpointError as err:
            missing.append(f"row {pub.PRETRAINING_TEXT[pre]}: weights not downloadable now: "
                           f"{err} Then rerun {rerun}.")
            log(f"[table5] {label}: weights not available now, its cells stay missing")
            continue
        for name in linear_todo:
            log(f"[table5] {label} {name}: mocov3 linear probe")
            run_mocov3(model, name, recipe=recipe, settings=settings, work_dir=work_dir,
                       output=results)
            ran.append(f"{pre} {name} mocov3")
        for name, todo in fewshot_todo.items():
            log(f"[table5] {label} {name}: cdfsl {todo}-shot, "
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


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def preflight_table6(configs: Sequence[str], gpus: int, gpu_count: int) -> list[str]:
    """What stops the Table 6 trainings before they start: too few GPUs, or the COCO files the
    configs read (each problem with the command or download that fixes it)."""
    from tinyvit_backbone.config_data import data_problem, missing_data

    from .run_config import ConfigError, load_config

    problems = []
    if gpu_count == 0:
        problems.append(
            f"--gpus {gpus}: torch sees no GPU on this machine. The Cascade Mask R-CNN 1x "
            f"recipe trains on GPUs (SyncBN heads, mixed precision, 12 COCO epochs): run this "
            f"command on a machine with {gpus} GPUs. To try the recipe on this CPU, train it "
            "small on the embedded scenes: python tools/train.py det_configs/cascade_tinyvit21m.py "
            "--embedded --iters 20 --arch 5m")
    elif gpu_count < gpus:
        problems.append(
            f"--gpus {gpus}: torch sees {gpu_count} GPU(s) here. Give --gpus {gpu_count} (2 images "
            f"per GPU: a total batch of {2 * gpu_count} instead of the recipe's 16), or run on a "
            f"machine with {gpus} GPUs")
    # configs missing the same files (the three Table 6 runs share COCO) make one message
    same: dict[tuple, tuple[dict, list[str]]] = {}
    for config in configs:
        try:
            cfg = load_config(config)
        except ConfigError as err:
            problems.append(str(err))
            continue
        gap = tuple(missing_data(cfg))
        if gap:
            same.setdefault(gap, (cfg, []))[1].append(os.path.basename(config))
    problems += [data_problem(cfg, config=", ".join(names)) for cfg, names in same.values()]
    return problems


def reproduce_table6(work_dirs: Sequence[str], out: str, *, train: bool = False,
                     config_root: str = ".", gpus: int = 8, work_root: str | None = None,
                     runner: Callable[[list[str]], int] | None = None,
                     gpu_count: int | None = None, log: Log = _stderr) -> dict:
    """Collect the Table 6 runs from ``work_dirs`` (each a work dir or a folder of them);
    with ``train``, first train every row that has no complete run into
    ``WORK_ROOT/<config name>`` (default: the first of ``work_dirs``, created if missing;
    resuming a started one), after checking the GPUs (``gpu_count``, default torch's count)
    and the COCO files. Writes ``OUT/table6.{md,csv}`` and ``OUT/summary.json``."""
    runner = runner or (lambda cmd: subprocess.run(cmd).returncode)
    gone = [d for d in work_dirs if not os.path.isdir(d)]
    if gone and not train:
        raise FileNotFoundError(
            f"--work-dirs: {', '.join(gone)} not found. Give the folders your Table 6 runs "
            "were trained into (mmengine work dirs, or folders holding them), or add --train "
            "to train the missing rows into the first one")
    work_root = work_root or (work_dirs[0] if work_dirs else "work_dirs")
    trained: list[str] = []
    dirs = [d for d in work_dirs if os.path.isdir(d)]
    if train:
        have = {paper_tables.table6_row(r) for r in read_runs(find_work_dirs(dirs))} if dirs \
            else set()
        todo = {pre: os.path.join(config_root, config)
                for pre, config in paper_tables.TABLE6_CONFIGS.items() if pre not in have}
        if todo:
            problems = preflight_table6(list(todo.values()), gpus,
                                        _gpu_count() if gpu_count is None else gpu_count)
            if problems:
                raise RuntimeError(f"--train: {len(todo)} run(s) to train, none started:\n- "
                                   + "\n- ".join(problems))
            if not os.path.isdir(work_root):
                os.makedirs(work_root)
                log(f"[table6] created {work_root}/ for the training runs")
        for config in todo.values():
            name = os.path.splitext(os.path.basename(config))[0]
            wd = os.path.join(work_root, name)
            extra = ["--work-dir", wd] + (["--resume"] if os.path.isfile(
                os.path.join(wd, "last_checkpoint")) else [])
            cmd = train_command(config, gpus, extra)
            log("[table6] training: " + " ".join(cmd))
            code = runner(cmd)
            if code != 0:
                again = ("it resumes from the last checkpoint" if os.path.isfile(
                    os.path.join(wd, "last_checkpoint")) else "it starts this run again")
                raise RuntimeError(f"training {config} failed (exit status {code}); its log is "
                                   f"in {wd}/<timestamp>/; fix the error above and rerun the "
                                   f"same command: {again}")
            trained.append(wd)
            dirs.append(wd)
    os.makedirs(out, exist_ok=True)
    found = find_work_dirs(sorted(set(dirs))) if dirs else []
    # read together, as the table maker does: same-named work dirs get told-apart names, and
    # runs of one config are marked as duplicates of each other
    runs = read_runs(found)
    notes = Notes()
    table = paper_tables.table6(runs, notes)
    files = _write_tables([table], out)
    summary = dict(table="Table 6", trained=trained,
                   runs={r.name: r.status for r in runs},
                   duplicates={r.name: r.duplicates for r in runs if r.duplicates},
                   missing=notes.as_dict()["missing"], files=files)
    atomic_write_json(os.path.join(out, "summary.json"), summary)
    return summary


def summary_text(summary: dict) -> str:
    return json.dumps(summary, indent=2, default=str)
