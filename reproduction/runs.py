"""Read mmengine work_dirs of mmdet / mmseg runs into one :class:`Run` each, or say why not.

Layout written by mmengine 0.10's ``Runner`` (checked against a real run, see the tests)::

    WORK_DIR/<config>.py                       the dumped config (flattened, no _base_)
    WORK_DIR/last_checkpoint, epoch_N.pth / iter_N.pth
    WORK_DIR/<YYYYmmdd_HHMMSS>/<ts>.log         one folder per launch (train, resume or test)
    WORK_DIR/<ts>/vis_data/scalars.json         JSON lines, appended as the run goes:
        training lines  {"lr", "loss", ..., "epoch"?, "iter" (global), "step"}
        evaluation lines {"coco/bbox_mAP", ... | "mIoU", "aAcc", ..., "step"}
    WORK_DIR/<ts>/vis_data/<ts>.json            the same lines again
    WORK_DIR/<ts>/vis_data/config.py            the config of that launch
    WORK_DIR/<ts>/<ts>.json                     test launches (tools/test.py): one JSON object
                                                with the test metrics

How a run is judged (the newest launch decides):

* **complete**: a test launch wrote its metrics, or the training reached its end (epoch-based:
  a training line of epoch ``max_epochs``; iteration-based: one within the last logging
  interval of ``max_iters``) and an evaluation line follows it. mmengine's train loops always
  validate after the last epoch / iteration when a val loop exists.
* **in progress**: training lines stop before the end, or the end was reached but no
  evaluation line follows yet (still evaluating), or the newest launch has written no line
  yet, and something in the run was written within the last :data:`STALE_MINUTES` minutes.
* **crashed**: the same, but nothing in the newest launch folder or at the work dir root (log,
  scalars, checkpoints) was written for :data:`STALE_MINUTES` minutes. mmengine writes no
  closing line and does not log the exception that kills a run (it goes to the launcher's
  stderr), so silence is the only sign a dead run leaves in its work dir. A healthy run writes
  its log at least every logging interval, during evaluation too (a minute or two on a GPU, a
  quarter of an hour for a large config on a laptop CPU), so an hour of silence means the
  process is gone, or hangs. A run that died while building (no dataset, no weights) has a log
  and no training line: "crashed while starting".
* **failed**: the newest ``.log`` ends in a Python traceback (a launcher that sends stderr into
  the log leaves one).
* **config only**: a dumped config and no ``<YYYYmmdd_HHMMSS>/`` folder. mmengine creates the
  log folder before it dumps the config, so such a run never logged (or its logs were removed).
* **malformed**: no readable dumped config, a line of scalars.json that is not JSON (except an
  unterminated last line, which is a write in progress), or the evaluation used lacks the
  metrics its table needs or has values out of range (COCO: fractions 0-1 or -1, seg: percent).

:func:`read_runs` reads many work dirs at once: a name shared by work dirs under different
parents is told apart by the path from their common folder (``a/work_dirs/x``,
``b/work_dirs/x``), and runs of the same dumped config (apart from where and how it was
launched: ``work_dir``, ``launcher``, ``resume``, ``load_from``, ``randomness``) list each other
in ``duplicates``, so a table can say that two rows are one setting.

A malformed or unfinished run contributes no numbers at all.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field

from .run_config import ConfigError, RunConfig, describe_config, load_config

TIMESTAMP = re.compile(r"^\d{8}_\d{6}$")
BOOKKEEPING = frozenset({"step", "epoch", "iter", "lr", "base_lr", "data_time", "time", "memory",
                         "eta", "grad_norm"})
COCO_SUFFIXES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
SEG_REQUIRED = ("mIoU", "aAcc")
SEG_OPTIONAL = frozenset({"mAcc"})  # IoUMetric writes it with the default iou_metrics
STALE_MINUTES = 60.0  # silence after which a run that has not ended counts as crashed
# Where and how a config was launched, not what it trains: left out when comparing runs.
LAUNCH_KEYS = frozenset({"work_dir", "launcher", "resume", "load_from", "randomness"})
_DUMPED_CONFIG = re.compile(r"^model = ", re.M)


class RunError(Exception):
    """A run that cannot be read; ``status`` says how to report it."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Run:
    """One work_dir. ``metrics`` holds the chosen evaluation as written by mmengine (COCO as
    fractions, segmentation in percent) and is empty unless ``status == 'complete'``."""

    name: str
    status: str
    reason: str = ""
    config: RunConfig | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    eval_source: str | None = None
    config_digest: str | None = None  # of the dumped config without LAUNCH_KEYS
    duplicates: list[str] = field(default_factory=list)  # other runs of the same config

    @property
    def task(self) -> str | None:
        if any(k.startswith("coco/") for k in self.metrics):
            return "det"
        if "mIoU" in self.metrics:
            return "seg"
        return self.config.task if self.config else None


@dataclass
class Launch:
    """One ``<ts>`` folder: its scalars in order, its test metrics, whether its log crashed."""

    name: str
    entries: list[tuple[str, dict, str]]  # ("train" | "eval", line, "file:lineno")
    test_metrics: dict | None
    test_origin: str | None
    crashed: str | None
    partial_tail: bool


# ------------------------------------------------------------------------------ discovery
def is_work_dir(path: str) -> bool:
    """A folder the Runner wrote: a ``<YYYYmmdd_HHMMSS>/`` launch folder or ``last_checkpoint``.
    (A root ``*.py`` alone is not enough: a folder of scripts has those too.)"""
    if not os.path.isdir(path):
        return False
    if os.path.exists(os.path.join(path, "last_checkpoint")):
        return True
    return any(TIMESTAMP.match(d) and os.path.isdir(os.path.join(path, d))
               for d in os.listdir(path))


def _is_dumped_run(path: str) -> bool:
    """A folder holding only what mmengine dumps first: ``<name>.py`` (or any ``*.py`` with a
    top-level ``work_dir``, as tools/train.py dumps it) with a top-level ``model`` (a folder
    of configs or scripts has neither)."""
    name = os.path.basename(os.path.normpath(path))
    for py in glob.glob(os.path.join(glob.escape(path), "*.py")):
        try:
            with open(py, encoding="utf-8", errors="replace") as f:
                text = f.read(1 << 20)
        except OSError:
            continue
        if _DUMPED_CONFIG.search(text) and (os.path.basename(py) == f"{name}.py"
                                            or re.search(r"^work_dir = ", text, re.M)):
            return True
    return False


def find_work_dirs(paths: list[str]) -> list[str]:
    """Each path is a work_dir, or a folder whose direct children are work_dirs (such as
    mmdet's ``work_dirs/``); a child holding only a dumped config (:func:`_is_dumped_run`) is
    a run that has not logged, and a folder with only a dumped ``*.py`` and no work dir inside
    is one too. Sorted by name, duplicates removed."""
    found: dict[str, str] = {}
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"work dir not found: {path} (pass a folder written by "
                                    "mmengine's Runner, or a folder holding such folders)")
        if is_work_dir(path):
            found[os.path.realpath(path)] = path
            continue
        kids = [os.path.join(path, d) for d in sorted(os.listdir(path))]
        kids = [k for k in kids if is_work_dir(k) or (os.path.isdir(k) and _is_dumped_run(k))]
        if not kids and glob.glob(os.path.join(glob.escape(path), "*.py")):
            kids = [path]
        if not kids:
            raise FileNotFoundError(
                f"{path} is not an mmengine work dir (no <YYYYmmdd_HHMMSS>/ folder, no "
                "last_checkpoint, no dumped <config>.py) and holds none: pass the --work-dir "
                "of a run, or the folder holding them")
        for kid in kids:
            found[os.path.realpath(kid)] = kid
    return sorted(found.values(), key=lambda p: (os.path.basename(os.path.normpath(p)), p))


# ------------------------------------------------------------------------------ parsing
def _read_json_lines(path: str, rel: str) -> tuple[list[tuple[dict, str]], bool]:
    """-> ([(line, origin)], partial_tail). ``partial_tail``: the text after the last newline is
    not (yet) JSON, i.e. a line being written; it is skipped. Raises RunError for any other
    line that is not a JSON object."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    partial = False
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines):  # no newline after it: mmengine has not finished this write
                partial = True
                break
            raise RunError("malformed", f"{rel}:{i} is not a JSON line ({err.msg}); "
                                        "fix or delete that line") from None
        if not isinstance(obj, dict):
            raise RunError("malformed", f"{rel}:{i} holds a JSON {type(obj).__name__}, "
                                        "expected an object of scalars")
        out.append((obj, f"{rel}:{i}"))
    return out, partial


def _log_crash(log_path: str) -> str | None:
    """The exception line when the log ends in a traceback, else None."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    idx = tail.rfind("Traceback (most recent call last)")
    if idx < 0:
        return None
    after = [ln for ln in tail[idx:].splitlines() if ln.strip()]
    if any(" - mmengine - " in ln for ln in after):
        return None  # the run logged on after it: a handled exception, not the end
    return after[-1].strip() if after else "traceback"


def read_launch(work_dir: str, name: str) -> Launch:
    folder = os.path.join(work_dir, name)
    scalars = os.path.join(folder, "vis_data", "scalars.json")
    if not os.path.exists(scalars):  # an older layout or a custom vis backend
        scalars = os.path.join(folder, "vis_data", f"{name}.json")
    entries: list[tuple[str, dict, str]] = []
    partial = False
    if os.path.exists(scalars):
        rel = os.path.relpath(scalars, work_dir)
        lines, partial = _read_json_lines(scalars, rel)
        for obj, origin in lines:
            kind = "train" if any(k == "loss" or k.startswith("loss_") for k in obj) else "eval"
            if kind == "eval" and not (set(obj) - BOOKKEEPING):
                continue  # nothing but timings: not an evaluation
            entries.append((kind, obj, origin))
    test_metrics = test_origin = None
    test_json = os.path.join(folder, f"{name}.json")
    if os.path.exists(test_json):
        test_origin = os.path.relpath(test_json, work_dir)
        try:
            with open(test_json, encoding="utf-8") as f:
                test_metrics = json.load(f)
        except json.JSONDecodeError as err:
            raise RunError("malformed", f"{test_origin} is not JSON ({err.msg}); rerun "
                                        "tools/test.py for this work dir") from None
        if not isinstance(test_metrics, dict):
            raise RunError("malformed", f"{test_origin} holds a JSON "
                                        f"{type(test_metrics).__name__}, expected an object")
    log = os.path.join(folder, f"{name}.log")
    return Launch(name, entries, test_metrics, test_origin,
                  _log_crash(log) if os.path.exists(log) else None, partial)


def find_config(work_dir: str, launches: list[str]) -> str:
    """The dumped config: the only ``*.py`` at the root, or the one named after the work dir,
    else the newest launch's ``vis_data/config.py``."""
    root = sorted(glob.glob(os.path.join(glob.escape(work_dir), "*.py")))
    if len(root) == 1:
        return root[0]
    named = os.path.join(work_dir, os.path.basename(os.path.normpath(work_dir)) + ".py")
    if named in root:
        return named
    for ts in reversed(launches):
        candidate = os.path.join(work_dir, ts, "vis_data", "config.py")
        if os.path.exists(candidate):
            return candidate
    if root:
        raise RunError("malformed", "several configs at the work dir root ("
                       + ", ".join(os.path.basename(p) for p in root)
                       + ") and no <ts>/vis_data/config.py to choose; keep the run's own")
    raise RunError("malformed", "no dumped config (<config>.py, written by mmengine's Runner "
                                "at the work dir root); was this folder written by mmengine?")


# ------------------------------------------------------------------------------ checking
def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_metrics(metrics: dict, origin: str, cfg: RunConfig) -> dict[str, float]:
    """The metrics a table needs, validated; raises RunError('malformed')."""
    keys = set(metrics)
    out: dict[str, float] = {}
    coco = {k for k in keys if k.startswith("coco/")}
    if coco or cfg.task == "det":
        prefixes = ["bbox"]
        if cfg.wants_segm or any(k.startswith("coco/segm_") for k in coco):
            prefixes.append("segm")
        for prefix in prefixes:
            for suffix in COCO_SUFFIXES:
                key = f"coco/{prefix}_{suffix}"
                if key not in metrics:
                    raise RunError("malformed", f"{origin}: evaluation lacks {key} (mmdet's "
                                   f"CocoMetric writes coco/{prefix}_mAP ... _l); found "
                                   f"{sorted(k for k in keys if k not in BOOKKEEPING)}")
                v = metrics[key]
                if not _finite(v) or not (0.0 <= v <= 1.0 or v == -1):
                    raise RunError("malformed", f"{origin}: {key} = {v!r}, expected a fraction "
                                   "in 0-1 (or -1 when COCO has no such objects)")
                out[key] = float(v)
        return out
    if "mIoU" in keys or cfg.task == "seg":
        for key in SEG_REQUIRED:
            if key not in metrics:
                raise RunError("malformed", f"{origin}: evaluation lacks {key} (mmseg's "
                               f"IoUMetric writes aAcc, mIoU, mAcc); found "
                               f"{sorted(k for k in keys if k not in BOOKKEEPING)}")
        for key in (*SEG_REQUIRED, *(SEG_OPTIONAL & keys)):
            v = metrics[key]
            if not _finite(v) or not 0.0 <= v <= 100.0:
                raise RunError("malformed", f"{origin}: {key} = {v!r}, expected percent 0-100")
            out[key] = float(v)
        return out
    raise RunError("malformed", f"{origin}: no COCO (coco/bbox_mAP) or segmentation (mIoU) "
                   f"metric; found {sorted(k for k in keys if k not in BOOKKEEPING)}")


def _progress_text(cfg: RunConfig, line: dict | None) -> str:
    if line is None:
        return "no training line yet"
    if cfg.loop == "epoch":
        return f"epoch {line.get('epoch', '?')}/{cfg.max_progress}"
    return f"iter {line.get('iter', line.get('step', '?'))}/{cfg.max_progress}"


def _training_ended(cfg: RunConfig, line: dict) -> bool:
    if cfg.loop == "epoch":
        return _finite(line.get("epoch")) and line["epoch"] >= cfg.max_progress
    it = line.get("iter", line.get("step"))
    return _finite(it) and it > cfg.max_progress - cfg.log_interval


def judge(work_dir: str, cfg: RunConfig, launches: list[Launch]) -> tuple[dict, str]:
    """-> (metrics as written, where they came from); raises RunError otherwise."""
    if not launches:
        raise RunError("config only", "a dumped config and no <YYYYmmdd_HHMMSS>/ log folder: "
                       "mmengine writes that folder before the config, so this run never "
                       "logged (or its logs were removed); start it with tools/train.py CONFIG "
                       f"--work-dir {work_dir}")
    newest = launches[-1]
    if newest.crashed:
        raise RunError("failed", f"{newest.name}/{newest.name}.log ends in a traceback: "
                                 f"{newest.crashed}")
    if newest.test_metrics is not None:
        return newest.test_metrics, f"test {newest.name}"
    trains = [(i, e) for i, e in enumerate(newest.entries) if e[0] == "train"]
    if not trains:
        evals = [e for e in newest.entries if e[0] == "eval"]
        if evals:  # a val-only launch (Runner.val())
            return evals[-1][1], f"val {newest.name}"
        raise RunError("in progress", f"{newest.name}: started, no results written yet")
    if cfg.loop is None:
        raise RunError("malformed", "the dumped config has no train_cfg (max_epochs / "
                                    "max_iters), so the end of training cannot be told")
    last_i, (_, last, _) = trains[-1]
    progress = _progress_text(cfg, last)
    if not _training_ended(cfg, last):
        tail = " (last line still being written)" if newest.partial_tail else ""
        raise RunError("in progress", f"{progress}{tail}")
    after = [e for e in newest.entries[last_i + 1:] if e[0] == "eval"]
    if not after:
        raise RunError("in progress", f"training reached {progress}; no evaluation line after "
                       "it yet (still evaluating, or it stopped: evaluate the last checkpoint "
                       "with tools/test.py CONFIG CHECKPOINT --work-dir " + work_dir + ")")
    # The step of an iteration-based val line is 0 unless log_metric_by_epoch=False, so the
    # position after the last training line, not the step, says it is the final evaluation.
    return after[-1][1], f"final val, {cfg.loop} {cfg.max_progress}"


def launch_names(work_dir: str) -> list[str]:
    """The ``<YYYYmmdd_HHMMSS>`` launch folders of a work dir, oldest first."""
    return sorted(d for d in os.listdir(work_dir)
                  if TIMESTAMP.match(d) and os.path.isdir(os.path.join(work_dir, d)))


def eval_lines(work_dir: str, metric: str | None = None) -> list[dict]:
    """Every evaluation line of every launch, oldest first (only those holding ``metric`` when
    given); training lines and timing-only lines are left out. Raises :class:`RunError` for a
    line that is not JSON."""
    if not os.path.isdir(work_dir):
        return []
    lines = [obj for ts in launch_names(work_dir)
             for kind, obj, _ in read_launch(work_dir, ts).entries if kind == "eval"]
    return [obj for obj in lines if metric is None or metric in obj]


def last_write(work_dir: str, launch: str | None) -> float:
    """The newest modification time (s since the epoch) in the launch folder (log, scalars,
    test metrics) or at the work dir root (checkpoints, ``last_checkpoint``)."""
    newest = 0.0
    tops = [os.path.join(work_dir, launch)] if launch else []
    for top in tops:
        for folder, _, files in os.walk(top):
            for f in files:
                try:
                    newest = max(newest, os.path.getmtime(os.path.join(folder, f)))
                except OSError:  # removed while we look
                    pass
    for entry in os.scandir(work_dir):
        if entry.is_file():
            try:
                newest = max(newest, entry.stat().st_mtime)
            except OSError:
                pass
    return newest


def _crashed(reason: str, launch: str, started: bool, name: str, minutes: float) -> str:
    silence = (f"nothing was written for over {minutes:g} min, so the process is gone or hangs "
               "(mmengine logs no exception: look in the launcher's output or the job's "
               "stderr)")
    if not started:
        return (f"crashed while starting: launch {launch} logged no training line, and "
                f"{silence}; fix the cause and rerun")
    return (f"{reason}; {silence}; resume it with tools/train.py CONFIG --work-dir {name} "
            "--resume")


def config_digest(cfg: dict) -> str:
    """What a run trains and tests: its dumped config without :data:`LAUNCH_KEYS`."""
    kept = {k: v for k, v in cfg.items() if k not in LAUNCH_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def read_run(work_dir: str, *, name: str | None = None, now: float | None = None,
             stale_minutes: float = STALE_MINUTES) -> Run:
    """Never raises for a bad run: the status and reason say what is wrong. ``now`` (default:
    the clock) and ``stale_minutes`` decide when a silent run counts as crashed."""
    name = name or os.path.basename(os.path.normpath(work_dir))
    cfg = digest = None
    launches: list[Launch] = []
    try:
        launches_names = launch_names(work_dir)
        cfg_path = find_config(work_dir, launches_names)
        try:
            loaded = load_config(cfg_path)
            cfg = describe_config(loaded)
        except ConfigError as err:
            raise RunError("malformed", str(err).replace(work_dir + os.sep, "")) from None
        digest = config_digest(loaded)
        launches = [read_launch(work_dir, ts) for ts in launches_names]
        metrics, source = judge(name, cfg, launches)
        return Run(name, "complete", "", cfg, check_metrics(metrics, source, cfg), source,
                   digest)
    except RunError as err:
        status, reason = err.status, err.reason
        if status == "in progress" and launches:
            now = time.time() if now is None else now
            if now - last_write(work_dir, launches[-1].name) > 60.0 * stale_minutes:
                started = any(kind == "train" for kind, _, _ in launches[-1].entries)
                status, reason = "crashed", _crashed(reason, launches[-1].name, started, name,
                                                     stale_minutes)
        return Run(name, status, reason, cfg, config_digest=digest)


def run_names(work_dirs: list[str]) -> list[str]:
    """One name per work dir: its folder name, or where two share it, the path from their
    common folder (``a/work_dirs/x`` and ``b/work_dirs/x``), so no two rows look alike."""
    names = [os.path.basename(os.path.normpath(d)) for d in work_dirs]
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(n, []).append(i)
    for idx in groups.values():
        if len(idx) < 2:
            continue
        full = [os.path.abspath(work_dirs[i]) for i in idx]
        common = os.path.commonpath(full)
        for i, path in zip(idx, full):
            names[i] = os.path.relpath(path, common).replace(os.sep, "/")
    return names


def read_runs(work_dirs: list[str], *, now: float | None = None,
              stale_minutes: float = STALE_MINUTES) -> list[Run]:
    """:func:`read_run` for each work dir (as :func:`find_work_dirs` lists them), with names
    told apart (:func:`run_names`) and runs of one config listing each other."""
    now = time.time() if now is None else now
    runs = [read_run(d, name=n, now=now, stale_minutes=stale_minutes)
            for d, n in zip(work_dirs, run_names(work_dirs))]
    same: dict[str, list[Run]] = {}
    for run in runs:
        if run.config_digest:
            same.setdefault(run.config_digest, []).append(run)
    for group in same.values():
        for run in group:
            run.duplicates = sorted(r.name for r in group if r is not run)
    return runs
