"""`make demo`: the paper's pipeline in miniature on the embedded data (see reproduction.demo).

    python tools/demo.py [--out results/demo] [--fresh] [--stages distill detect ...] [--quick]

A rerun reuses what is done (logit store, trained students, detector / segmenter checkpoints,
cached features) unless --fresh is given. --quick keeps its own folder (results/demo-quick), so
it never touches the full demo's results; a folder that holds a demo made with other settings
(another --quick, another machine kind) is started afresh, with a line that says so.
"""
import argparse
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    try:
        from reproduction.demo import STAGES, DemoError, DemoSettings, format_summary, run_demo
        from tinyvit_backbone.checkpoint import CheckpointError
        from tinyvit_backbone.device import select_device
        from tinyvit_backbone.distill import DistillError
    except ImportError as err:
        print(f"demo: a required package is missing ({err}). Set up the environment with "
              "`make demo` (it runs tools/bootstrap.sh) or `./tools/bootstrap.sh`.", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="output folder (default results/demo, with --quick "
                        "results/demo-quick, in the checkout)")
    parser.add_argument("--fresh", action="store_true", help="start over: redo every stage instead of reusing "
                        "what the folder holds")
    parser.add_argument("--stages", nargs="+", choices=STAGES, metavar="STAGE",
                        help="the stages to run, in the order given, among " + ", ".join(STAGES)
                             + " (default: all of them; detect, segment and probe need the "
                               "students of the distill stage, which reuses them when done)")
    parser.add_argument("--quick", action="store_true",
                        help="every stage in seconds (a smoke check, numbers meaningless), in "
                             "its own folder")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(ROOT, "results", "demo-quick" if args.quick else "demo")
    # Library deprecation chatter (pkg_resources, mmseg's build_loss, ...) would bury the
    # progress lines; real errors still surface.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    stages = args.stages or list(STAGES)
    settings = DemoSettings.for_device(select_device())
    if args.quick:
        settings = settings.reduced()
    start = time.perf_counter()
    try:
        summary = run_demo(args.out, config_root=ROOT, settings=settings, fresh=args.fresh,
                           stages=stages,
                           bench_report=os.path.join(ROOT, "results", "bench", "report.json"))
    except (DemoError, DistillError, CheckpointError, FileNotFoundError) as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f"  wall time {time.perf_counter() - start:.0f} s; everything is in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
