"""`make demo`: the paper's pipeline in miniature on the embedded data (see reproduction.demo).

    python tools/demo.py [--out results/demo] [--fresh] [--stages distill detect ...]

A rerun reuses what is done (logit store, trained students, detector / segmenter checkpoints,
cached features) unless --fresh is given.
"""
import argparse
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo"))
    parser.add_argument("--fresh", action="store_true", help="start over instead of reusing")
    parser.add_argument("--stages", nargs="+", help="subset, in order (default: all)")
    parser.add_argument("--quick", action="store_true", help="seconds-long stages (smoke check)")
    args = parser.parse_args(argv)
    # Library deprecation chatter (pkg_resources, mmseg's build_loss, ...) would bury the
    # progress lines; real errors still surface.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        from reproduction.demo import STAGES, DemoError, DemoSettings, format_summary, run_demo
        from tinyvit_backbone.checkpoint import CheckpointError
        from tinyvit_backbone.device import select_device
        from tinyvit_backbone.distill import DistillError
    except ImportError as err:
        print(f"demo: a required package is missing ({err}). Set up the environment with "
              "`make demo` (it runs tools/bootstrap.sh) or `./tools/bootstrap.sh`.", file=sys.stderr)
        return 2
    stages = args.stages or list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; stages are {' '.join(STAGES)}")
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
