"""Exercise every GPU path of the project in one run and write one JSON report.

    python tools/gpu_check.py [--out results/gpu_check/report.json] [--only SECTION ...] [--budget-s S]

The sections, what each needs and measures, and its time limit are in bench/gpu_check.py. Each
section runs in a process of its own and is stopped at its limit; one whose needs are not met
here (no GPU, a package missing) is skipped with the reason, and the others still run. Without
a GPU only the sections that need none run. mmcv's compiled ops are used where they load;
elsewhere (mmcv-lite) the detection sections run nms and RoIAlign on a labelled stand-in on
torchvision's kernels, and the report says so.

Prints one JSON summary on stdout; the log goes to stderr. Exit status 0 when every section is
ok or skipped, 1 when one failed, raised or timed out, 2 for bad input (an unknown section, a
budget that is not positive), 130 when interrupted (Ctrl-C or SIGTERM; the report keeps what
finished).
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
    Sizes,
    detect_device,
    exit_status,
    run_check,
    summary,
)
from tinyvit_backbone.cli import run_commands  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/gpu_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_check" / "report.json",
                        help="the JSON report, rewritten after every section (default "
                             "results/gpu_check/report.json)")
    parser.add_argument("--only", nargs="+", metavar="SECTION",
                        help=f"run these sections only, in the check's order: {' '.join(SECTIONS)}")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="the whole check's time limit in seconds: a section still running "
                             "then is stopped, and none starts after it (default %(default)s)")
    parser.set_defaults(command="check")
    return parser


def check(args: argparse.Namespace) -> dict:
    if args.only:
        unknown = [name for name in args.only if name not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    if not args.budget_s > 0:
        raise ValueError(f"--budget-s must be a positive number of seconds, got {args.budget_s}")
    only = None if not args.only else [name for name in SECTIONS if name in args.only]
    report = run_check(detect_device(), Sizes(), args.out, only=only, budget_s=args.budget_s,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    return summary(report, args.out)


def main(argv=None) -> int:
    return run_commands(build_parser(), {"check": check}, argv, errors=(ValueError, OSError),
                        interrupted="interrupted: the report keeps the sections that finished; "
                                    "rerun the others with --only",
                        exit_code=lambda _, result: exit_status(result))


if __name__ == "__main__":
    sys.exit(main())
