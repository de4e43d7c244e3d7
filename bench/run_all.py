"""Run every benchmark under bench/ and write one JSON and one Markdown report.

    python bench/run_all.py [--quick] [--only backbone distill] [--out results/bench]

Each ``bench/bench_<name>.py`` exposes ``run(quick) -> list[Figure]`` (bench/common.py) and
measures its baseline in the same run. The report carries every figure as a ratio against its
baseline, the machine, thread settings and library versions. A benchmark that fails is reported
as failed and the others still run; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import Figure, describe, machine_info  # noqa: E402
from tinyvit_backbone.files import atomic_write_text  # noqa: E402
from tinyvit_backbone.tabular import Column, Table, text  # noqa: E402
from tinyvit_backbone.tabular import to_markdown as table_markdown  # noqa: E402


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in (ROOT / "bench").glob("bench_*.py"))


def _import(name: str):
    return importlib.import_module(f"bench.bench_{name}")


def run_benchmarks(names: list[str], quick: bool, load=_import) -> dict:
    results, failures, seconds = [], {}, {}
    for name in names:
        start = time.perf_counter()
        print(f"[bench] {name}{' (quick)' if quick else ''} ...", flush=True)
        try:
            module = load(name)
            figures: list[Figure] = module.run(quick=quick)
            results += [f.to_dict() for f in figures]
            for f in figures:
                print(f"[bench]   {describe(f)}", flush=True)
        except Exception:  # a broken benchmark must not hide the others' figures
            failures[name] = traceback.format_exc(limit=8)
            print(f"[bench] {name} FAILED:\n{failures[name]}", file=sys.stderr, flush=True)
        seconds[name] = round(time.perf_counter() - start, 1)
    return dict(quick=quick, machine=machine_info(), seconds=seconds, figures=results,
                failures=failures)


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# Benchmark report", "",
             f"Machine: {m['processor']}, {m['cpu_count']} CPUs, torch {m['torch']} "
             f"({m['torch_threads']} threads){', GPU ' + m['cuda'] if m.get('cuda') else ''}; "
             f"timm {m.get('timm')}, mmdet {m.get('mmdet')}, mmseg {m.get('mmseg')}, "
             f"mmengine {m.get('mmengine')}, scikit-learn {m.get('sklearn')}."
             + (f" Environment: {m['env']}." if m.get("env") else ""),
             f"Mode: {'quick' if report['quick'] else 'full'}. Every ratio compares two figures "
             "measured in this run; speedup > 1 means better than the baseline.", ""]
    table = Table("bench", "figures", [Column("bench"), Column("figure"),
                                       Column("value", numeric=True), Column("baseline"),
                                       Column("baseline value", numeric=True),
                                       Column("speedup", numeric=True), Column("goal")])
    for f in report["figures"]:
        goal = "" if f["goal"] is None else f"≥ {f['goal']}x {'✓' if f['meets_goal'] else '✗ missed'}"
        table.add_row([text(f["bench"]), text(f["name"]), text(f"{f['value']:.4g} {f['unit']}"),
                       text(f["baseline"]), text(f"{f['baseline_value']:.4g}"),
                       text(f"{f['speedup']:.3f}x"), text(goal)])
    lines.append(table_markdown(table, heading_level=0).rstrip("\n"))
    lines += ["", "Seconds per benchmark: "
              + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()) + "."]
    if report["failures"]:
        lines += ["", "## Failed", ""]
        for name, tb in report["failures"].items():
            lines += [f"### {name}", "", "```", tb.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes in all")
    parser.add_argument("--only", nargs="+", help=f"subset of: {' '.join(discover())}")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"),
                        help="folder for report.json and report.md (default: results/bench of "
                             "the checkout)")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; available: {names}")
        names = [n for n in names if n in args.only]
    report = run_benchmarks(names, args.quick)
    out = Path(args.out)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(out / "report.md", to_markdown(report))
    print(f"[bench] wrote {out / 'report.json'} and {out / 'report.md'}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
