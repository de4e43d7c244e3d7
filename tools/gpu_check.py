"""Exercise every GPU path of the project in one run and write one JSON report.

    python tools/gpu_check.py [--out results/gpu_check/report.json] [--only SECTION ...]

What each section measures is in bench/gpu_check.py. Needs an NVIDIA GPU (it refuses to start
without one) and mmcv built with its CUDA ops (`make env` on the GPU machine builds them).
Prints one JSON summary on stdout; exit status 0 when every section is ok, 1 when one failed,
2 for bad input (no GPU, unknown section).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_check import (  # noqa: E402
    DEFAULT_BUDGET_S,
    SECTIONS,
    Gpu,
    NoGpu,
    Sizes,
    preflight,
    run_check,
    summary,
)
from tinyvit_backbone.cli import run_commands  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_check" / "report.json",
                        help="the JSON report (rewritten after every section)")
    parser.add_argument("--only", nargs="+", metavar="SECTION",
                        help=f"run these sections only: {' '.join(SECTIONS)}")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="start no section after this many seconds (default %(default)s)")
    parser.set_defaults(command="check")
    return parser


def check(args: argparse.Namespace) -> dict:
    if args.only:
        unknown = [name for name in args.only if name not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    gpu = Gpu()
    preflight()
    report = run_check(gpu, Sizes(), args.out, only=args.only, budget_s=args.budget_s,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    return summary(report, args.out)


def main(argv=None) -> int:
    return run_commands(build_parser(), {"check": check}, argv, errors=(ValueError, OSError, NoGpu),
                        interrupted="interrupted: the report keeps the sections that finished; "
                                    "rerun to measure them all",
                        exit_code=lambda _, result: 0 if result["ok"] else 1)


if __name__ == "__main__":
    sys.exit(main())
