"""Read the throughput figures of the project's benchmark report (``bench/run_all.py``).

``results/bench/report.json`` is ``{"machine": {...}, "figures": [Figure.to_dict(), ...]}``
(see ``bench/common.py``). The model table uses the figures with ``bench == "backbone"`` whose
``extra`` is ``{"model": "tinyvit-21m", "input_size": 224, "path": "backbone" | "fast" |
"timm", "images_per_s": float}``. Other figures are ignored.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

PATHS = ("backbone", "fast", "timm")


@dataclass
class BenchReport:
    """``throughput[(variant, input_size)][path]`` = images/s; ``machine`` as the report wrote
    it; ``problems`` lists what could not be used (reported, never fatal)."""

    source: str | None = None
    machine: dict = field(default_factory=dict)
    throughput: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _model_key(model: str) -> str | None:
    from .probes import official_variant
    return official_variant(model)


def read_bench_report(path: str | None) -> BenchReport:
    """None -> an empty report. A missing file raises FileNotFoundError; a file that is not
    the report's format is reported in ``problems``."""
    if path is None:
        return BenchReport()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"benchmark report not found: {path} (write it with "
                                "`python bench/run_all.py`, or leave out --bench)")
    name = os.path.basename(path)
    report = BenchReport(source=name)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        report.problems.append(f"{name}: not JSON ({err.msg}); rerun bench/run_all.py")
        return report
    if not isinstance(data, dict) or not isinstance(data.get("figures"), list):
        report.problems.append(f"{name}: expected an object with a 'figures' list "
                               "(bench/run_all.py's report.json)")
        return report
    report.machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    for i, fig in enumerate(data["figures"]):
        if not isinstance(fig, dict) or fig.get("bench") != "backbone":
            continue
        extra = fig.get("extra") or {}
        if "images_per_s" not in extra:
            continue  # a backbone figure of another kind (e.g. a latency ratio)
        ips, model, size, p = (extra.get("images_per_s"), extra.get("model"),
                               extra.get("input_size"), extra.get("path"))
        where = f"{name}: figures[{i}] ({fig.get('name')!r})"
        if (isinstance(ips, bool) or not isinstance(ips, (int, float)) or not math.isfinite(ips)
                or ips <= 0):
            report.problems.append(f"{where}: images_per_s = {ips!r}, expected a positive number")
            continue
        key = _model_key(str(model)) if model is not None else None
        if key is None or not isinstance(size, int) or p not in PATHS:
            report.problems.append(f"{where}: extra needs model 'tinyvit-5m|11m|21m', an integer "
                                   f"input_size and path in {list(PATHS)}; found {extra}")
            continue
        slot = report.throughput.setdefault((key, size), {})
        if p in slot:
            report.problems.append(f"{where}: a second {model} {size} {p} figure; the later one "
                                   "is used")
        slot[p] = float(ips)
    return report


def machine_text(machine: dict) -> str:
    """One line: processor, threads, GPU, torch — as the report recorded them."""
    if not machine:
        return "machine not recorded"
    parts = [str(machine.get("cuda") or machine.get("processor") or "unknown processor")]
    if machine.get("torch_threads") is not None and not machine.get("cuda"):
        parts.append(f"torch threads {machine['torch_threads']}")
    if machine.get("cpu_count") is not None:
        parts.append(f"{machine['cpu_count']} CPUs")
    if machine.get("torch"):
        parts.append(f"torch {machine['torch']}")
    return ", ".join(parts)
