"""Progressive model shrinking from the command line. One command per job:

    # params, MACs (and measured img/s) of architectures, e.g. to check the counter
    python -m tinyvit_backbone.scaling measure 5m 11m 21m --throughput
    # shrink a seed under limits, one target per value, largest first
    python -m tinyvit_backbone.scaling search --seed-arch 21m --max-params 21M 11M 5.4M \\
        --compare 21m 11m 5m --out results/shrinking
    # remake the tables from a search record
    python -m tinyvit_backbone.scaling report results/shrinking/search.json

Numbers take SI suffixes (5.4M, 1.3G, 2e6); ``none`` leaves a target without that limit.
Results are one JSON object on stdout; progress goes to stderr (:mod:`tinyvit_backbone.cli`).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from ..cli import add_runtime_flags, run_commands, subcommands
from ..complexity import METHOD as COMPLEXITY_METHOD
from ..device import select_device
from .measure import CostModel, DeviceThroughput, count_macs, count_params
from .proxy import SnipProxy, TrainingProxy
from .report import load_result, write_outputs, write_tables
from .search import Constraints, SearchError, search
from .space import FACTORS, SearchSpace, arch_key, canonical

SUFFIXES = {"K": 1e3, "M": 1e6, "G": 1e9}


def parse_number(text: str) -> float | None:
    """'5.4M' -> 5.4e6, '1.3G' -> 1.3e9, '2e6' -> 2e6, 'none' -> None."""
    t = text.strip()
    if t.lower() in ("none", "-", ""):
        return None
    scale = SUFFIXES.get(t[-1].upper(), None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number (examples: 5.4M, 1.3G, 2e6, 1500, none)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: limits must be > 0")
    return value


def _per_target(values: list | None, n: int, flag: str) -> list:
    if not values:
        return [None] * n
    if len(values) != n:
        raise ValueError(f"{flag} has {len(values)} values but there are {n} targets: give one "
                         "per target (use 'none' to leave a target without this limit)")
    return values


def build_targets(args) -> list[Constraints]:
    lists = [v for v in (args.max_params, args.max_macs, args.min_throughput) if v]
    if not lists:
        raise ValueError("give --max-params and/or --max-macs (one value per target, largest "
                         "model first)")
    n = len(lists[0])
    params = _per_target(args.max_params, n, "--max-params")
    macs = _per_target(args.max_macs, n, "--max-macs")
    thr = _per_target(args.min_throughput, n, "--min-throughput")
    names = _per_target(args.names, n, "--names")
    return [Constraints(max_params=p, max_macs=m, min_throughput=t, name=name)
            for p, m, t, name in zip(params, macs, thr, names)]


def _throughput(args, progress: bool | None = False) -> DeviceThroughput | None:
    if args.no_throughput:
        return None
    return DeviceThroughput(batch_size=args.throughput_batch_size,
                            resolution=args.throughput_resolution or args.resolution,
                            device=args.device, warmup=args.throughput_warmup,
                            repeat=args.throughput_repeat, num_classes=args.num_classes,
                            amp=args.amp is not False, progress=progress)


def cmd_measure(args) -> dict:
    thr = None if not args.throughput else _throughput(args, progress=args.progress is not False)
    rows = []
    for number, name in enumerate(args.archs, 1):
        arch = canonical(name)
        row = dict(arch=name, key=arch_key(arch), **arch,
                   params=count_params(arch, args.num_classes),
                   macs=count_macs(arch, args.resolution, args.num_classes))
        if thr is not None:
            logging.info("%d/%d %s: measuring img/s on %s, %d warmup + %d timed batches of %d "
                         "at %d px", number, len(args.archs), name, select_device(args.device),
                         thr.warmup, thr.repeat, thr.batch_size, thr.resolution)
            row["throughput_img_s"] = thr(arch)
        rows.append(row)
        logging.info("%s: %.3fM params, %.3f GMACs%s", name, row["params"] / 1e6,
                     row["macs"] / 1e9, f", {row['throughput_img_s']:.1f} img/s"
                     if thr is not None else "")
    return dict(resolution=args.resolution, num_classes=args.num_classes,
                counter=COMPLEXITY_METHOD,
                throughput=None if thr is None else thr.settings(), results=rows)


def cmd_search(args) -> dict:
    targets = build_targets(args)
    select_device(args.device)  # a bad --device fails here, before any work
    space = SearchSpace(factors=tuple(args.factors), min_dim=args.min_dim,
                        min_depth=args.min_depth)
    cost = CostModel(resolution=args.resolution, num_classes=args.num_classes,
                     throughput_fn=_throughput(args))
    if args.proxy == "train":
        proxy = TrainingProxy(steps=args.proxy_steps, batch_size=args.proxy_batch_size,
                              lr=args.proxy_lr, resolution=args.proxy_resolution,
                              holdout_fraction=args.holdout_fraction, seed=args.seed,
                              device=args.device)
    else:
        proxy = SnipProxy(batch_size=args.proxy_batch_size, resolution=args.proxy_resolution,
                          holdout_fraction=args.holdout_fraction, seed=args.seed,
                          device=args.device)
    compare = {}
    if args.compare:
        refs = _per_target(args.compare, len(targets), "--compare")
        for target, ref in zip(targets, refs):
            arch = canonical(ref)
            compare[target.label] = dict(arch=ref, params=cost.params(arch),
                                         macs=cost.macs(arch))
    result = search(args.seed_arch, targets, cost=cost, proxy=proxy, space=space,
                    candidates_per_round=args.candidates_per_round,
                    round_ratio=args.round_ratio, band=args.band, seed=args.seed,
                    progress=args.progress is not False)
    result.settings["compare"] = compare
    result.settings["torch_threads"] = torch.get_num_threads()
    paths = write_outputs(result, args.out)
    chosen = {label: dict(arch=c.arch, params=c.params, macs=c.macs, throughput_img_s=c.throughput,
                          score=c.score, file=paths[f"arch {label}"],
                          reference=compare.get(label))
              for label, c in result.chosen_candidates().items()}
    return dict(chosen=chosen, files=paths, settings=result.settings)


def cmd_report(args) -> dict:
    result = load_result(args.record)
    out = args.out or os.path.dirname(os.path.abspath(args.record))
    return dict(files=write_tables(result, out))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinyvit_backbone.scaling",
        description="Progressive model shrinking: measure architectures, shrink a seed\n"
                    "architecture under limits, remake the tables of a search.",
        epilog="examples:" + __doc__.split("\n", 1)[1].split("\n\nNumbers")[0]
        + "\n\nNumbers take SI suffixes (5.4M, 1.3G, 2e6); none leaves a target without that "
          "limit.", formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = subcommands(parser)

    def cost_flags(p):
        p.add_argument("--resolution", type=int, default=224,
                       help="input side for MACs (and throughput unless "
                       "--throughput-resolution) (default 224)")
        p.add_argument("--num-classes", type=int, default=1000,
                       help="classifier head used for counting (default 1000, as in the paper)")
        p.add_argument("--throughput-batch-size", type=int, default=64,
                       help="images per timed batch (default 64)")
        p.add_argument("--throughput-resolution", type=int, default=None,
                       help="input side for the throughput (default: --resolution)")
        p.add_argument("--throughput-warmup", type=int, default=2,
                       help="untimed batches first (default 2)")
        p.add_argument("--throughput-repeat", type=int, default=5,
                       help="timed batches; img/s = batch size / their median time (default 5)")
        p.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: torch's choice); 1 on a shared machine")
        add_runtime_flags(p, workers=False,
                          amp_help="fp16 autocast for the CUDA throughput (default on)")

    m = sub.add_parser("measure", help="params, MACs and measured img/s of architectures")
    m.add_argument("archs", nargs="+", help="5m, 11m, 21m or arch JSON files")
    m.add_argument("--throughput", action="store_true", help="also measure img/s")
    cost_flags(m)
    m.set_defaults(func=cmd_measure, no_throughput=False)

    s = sub.add_parser("search", help="shrink a seed architecture under limits")
    s.add_argument("--seed-arch", default="21m", help="5m, 11m, 21m or an arch JSON file (default %(default)s)")
    s.add_argument("--max-params", nargs="+", type=parse_number, metavar="N",
                   help="parameter limit per target, largest first (e.g. 21M 11M 5.4M)")
    s.add_argument("--max-macs", nargs="+", type=parse_number, metavar="N",
                   help="MAC limit per target at --resolution (e.g. 4.3G 2G 1.3G)")
    s.add_argument("--min-throughput", nargs="+", type=parse_number, metavar="IMG_S",
                   help="measured images/s floor per target")
    s.add_argument("--names", nargs="+", help="target names (default: from the limits)")
    s.add_argument("--compare", nargs="+", metavar="ARCH",
                   help="a reference architecture per target, counted the same way and shown "
                   "next to the result (e.g. 21m 11m 5m)")
    s.add_argument("--out", required=True, help="folder for arch_*.json, search.json, tables")
    s.add_argument("--proxy", choices=["train", "snip"], default="train",
                   help="train: short training on the embedded digits, held-out accuracy "
                   "(default); snip: zero-cost saliency at initialisation")
    s.add_argument("--proxy-steps", type=int, default=100,
                   help="training steps per candidate of the train proxy (default 100)")
    s.add_argument("--proxy-batch-size", type=int, default=32,
                   help="digits per proxy step (default 32)")
    s.add_argument("--proxy-lr", type=float, default=1e-3,
                   help="learning rate of the train proxy (default 1e-3)")
    s.add_argument("--proxy-resolution", type=int, default=32,
                   help="side in pixels of the proxy's digits (default 32; 224 to rank window "
                        "sizes, on a GPU)")
    s.add_argument("--holdout-fraction", type=float, default=0.2,
                   help="part of the digits train split held out for the proxy score (default "
                        "%(default)s)")
    s.add_argument("--candidates-per-round", type=int, default=6,
                   help="candidates contracted and scored per round (default 6)")
    s.add_argument("--round-ratio", type=float, default=0.7,
                   help="a round shrinks a limit to at least this fraction of the current model "
                        "(default %(default)s)")
    s.add_argument("--band", type=float, default=0.1,
                   help="drop candidates more than this fraction inside every limit (default "
                        "%(default)s)")
    s.add_argument("--factors", nargs="+", choices=FACTORS, default=list(FACTORS),
                   help="what a contraction may change (default: all of them)")
    s.add_argument("--min-dim", type=int, default=32,
                   help="smallest embed dim of a stage (default 32)")
    s.add_argument("--min-depth", type=int, default=1,
                   help="fewest blocks in a stage (default 1)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the candidate sampling and the proxy (default 0)")
    s.add_argument("--no-throughput", action="store_true",
                   help="do not measure img/s (no --min-throughput then)")
    cost_flags(s)
    s.set_defaults(func=cmd_search)

    r = sub.add_parser("report", help="remake candidates.csv / .md from a search.json")
    r.add_argument("record", help="search.json written by `search`")
    r.add_argument("--out", default=None, help="folder for the tables (default: the record's)")
    r.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    def run(args):
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        return args.func(args)

    return run_commands(parser, {name: run for name in ("measure", "search", "report")}, argv,
                        errors=(ValueError, SearchError, FloatingPointError))


if __name__ == "__main__":
    sys.exit(main())
