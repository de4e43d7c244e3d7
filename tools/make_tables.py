"""Regenerate the transfer tables (COCO, segmentation, classification transfer, models) from
run outputs, with the published numbers beside ours.

    python tools/make_tables.py --work-dirs work_dirs/ \\
        --results results/linear_probe.jsonl --bench results/bench/report.json --out results/tables

--work-dirs takes mmengine work dirs, or folders holding them. Exit status: 0 when the tables
were written (missing / in-progress / crashed / malformed runs are listed in tables.md, not
errors),
2 for bad arguments or an input path that does not exist.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dirs", nargs="*", default=[], metavar="DIR",
                   help="mmengine work dirs of mmdet / mmseg runs, or folders holding them "
                        "(default: none)")
    p.add_argument("--results", nargs="*", default=[], metavar="FILE.jsonl",
                   help="linear-probe / k-shot / episodes results (JSON lines; the probes "
                        "write results/linear_probe.jsonl by default) (default: none)")
    p.add_argument("--bench", default=None, metavar="REPORT.json",
                   help="benchmark report for measured images/s (bench/run_all.py writes "
                        "results/bench/report.json)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--stale-minutes", type=float, default=None, metavar="MIN",
                   help="a run that has not ended and wrote nothing for this long counts as "
                        "crashed, not in progress (default: 60)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from reproduction.make import make_tables
    try:
        extra = {} if args.stale_minutes is None else {"stale_minutes": args.stale_minutes}
        summary = make_tables(args.work_dirs, args.results, args.bench, args.out,
                              plots=not args.no_plots, **extra)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {len(summary[k])}" for k in
                       ("missing", "in_progress", "crashed", "malformed", "failed",
                        "config_only") if summary[k])
    print(f"wrote {len(summary['files'])} files to {args.out}"
          + (f" ({counts}; see tables.md)" if counts else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
