"""Command line: ``python -m linear_probe <command> ...``.

Commands (one per job, CLIP_benchmark style):

* ``datasets``  list the registry: name, group, official metric, splits, on disk or not.
* ``extract``   compute (or find cached) features of dataset splits.
* ``sweep``     linear probe: weight-decay sweep on a val carved from train, refit, test.
* ``kshot``     k-shot linear probes, one record per (k, seed); prints mean ± std.
* ``episodes``  cdfsl N-way K-shot episodes, mean accuracy with 95% interval.
* ``suite``     sweep + kshot + episodes for one model (the demo's entry point).

Examples::

    python -m linear_probe sweep --model tinyvit --arch 21m --weights tiny_vit_21m.pth \\
        --dataset cifar100 --output results/probe.jsonl
    python -m linear_probe kshot --model timm:resnet50 --dataset digits --k 1 5 10 --seeds 0 1 2
    python -m linear_probe episodes --model tinyvit --arch 5m --weights w.pth --dataset eurosat \\
        --k 5 20 50 --n-way 5 --episodes 600
"""
from __future__ import annotations

import argparse
import sys

from .cache import default_cache_dir
from .datasets import REGISTRY, DatasetNotFoundError, default_data_root, get_info
from .fewshot import DEFAULT_FEWSHOT_WD, EPISODES, N_QUERY

DEFAULT_OUTPUT = "results/linear_probe.jsonl"


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tinyvit",
                   help="'tinyvit' (this project's TinyViT) or 'timm:<name>' (any timm model)")
    g.add_argument("--arch", default=None,
                   help="TinyViT arch: 5m | 11m | 21m | a JSON file with embed_dims / depths / "
                        "num_heads / window_sizes (default 21m)")
    g.add_argument("--weights", default=None,
                   help="checkpoint file (official, timm .pth/.safetensors or OpenMMLab); "
                        "omitted = random init (digest 'random')")
    g.add_argument("--label", default=None, help="model name in the results (default e.g. tinyvit-21m)")
    g.add_argument("--init-seed", type=int, default=0, help="seed of the random init (no --weights)")


def _feature_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("features")
    g.add_argument("--dataset", required=True,
                   help="registry name (python -m linear_probe datasets) or imagefolder:<dir>")
    g.add_argument("--data-root", default=default_data_root(),
                   help="folder holding the datasets (default $TINYVIT_DATA or ./data)")
    g.add_argument("--cache-dir", default=default_cache_dir(),
                   help="feature cache (default $TINYVIT_CACHE or ./work_dirs/features)")
    g.add_argument("--feature-layer", default="pooled",
                   help="'pooled' (pre-logits: pooled final stage + head norm) or 'stage<i>'")
    g.add_argument("--image-size", type=int, default=None,
                   help="input side in pixels (default: the dataset's, else the model's)")
    g.add_argument("--batch-size", type=int, default=None, help="extraction batch (64 CPU / 256 GPU)")
    g.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: auto)")
    g.add_argument("--device", default="auto", help="auto (CUDA if available) | cpu | cuda | cuda:N")
    g.add_argument("--no-amp", action="store_true", help="float32 extraction on CUDA too")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--backend", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="CPU runtime of the extraction: torch (the fused fast path), onnxruntime "
                        "(the model exported to ONNX; needs the [onnx] extra) or auto (default)")


def _output_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default=DEFAULT_OUTPUT,
                   help=f"JSON-lines file the records are appended to (default {DEFAULT_OUTPUT})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m linear_probe",
                                     description="Linear-probe and few-shot evaluation of frozen "
                                                 "TinyViT / timm backbones on cached features.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list the datasets and whether they are on disk")
    p.add_argument("--data-root", default=default_data_root())

    p = sub.add_parser("extract", help="extract and cache features")
    _model_args(p)
    _feature_args(p)
    p.add_argument("--split", nargs="+", default=None,
                   help="splits to extract (default: the dataset's train and test splits)")

    p = sub.add_parser("sweep", help="linear probe with a weight-decay sweep")
    _model_args(p)
    _feature_args(p)
    _output_arg(p)
    p.add_argument("--solver", choices=("auto", "lbfgs", "sgd"), default="auto",
                   help="lbfgs sweep, or MoCo v3's SGD recipe (auto: sgd for imagenet1k)")
    p.add_argument("--feature-norm", choices=("standardize", "l2", "none"), default="standardize")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="fix lambda instead of searching it (lambda = 1 / (C n) in sklearn terms)")
    p.add_argument("--wd-grid", choices=("clip", "wd"), default="clip",
                   help="search grid: clip = CLIP paper's C in logspace(-6,6,97); "
                        "wd = CLIP_benchmark's lambda in logspace(-6,2,97)")
    p.add_argument("--seed", type=int, default=0, help="seed of the val split")
    p.add_argument("--sgd-epochs", type=int, default=90)
    p.add_argument("--sgd-batch-size", type=int, default=1024)
    p.add_argument("--sgd-lr", type=float, default=0.1, help="base lr (x batch / 256)")

    p = sub.add_parser("kshot", help="k-shot linear probes over several seeds")
    _model_args(p)
    _feature_args(p)
    _output_arg(p)
    p.add_argument("--k", type=int, nargs="+", default=[1, 5, 10], help="images per class")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--feature-norm", choices=("l2", "standardize", "none"), default="l2")
    p.add_argument("--wd-grid", choices=("clip", "wd"), default="clip",
                   help="weight-decay search grid on the val carved from the shots (k >= 2)")

    p = sub.add_parser("episodes", help="cdfsl N-way K-shot episodes")
    _model_args(p)
    _feature_args(p)
    _output_arg(p)
    p.add_argument("--k", type=int, nargs="+", default=[5, 20, 50], help="support images per class")
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--n-query", type=int, default=N_QUERY)
    p.add_argument("--episodes", type=int, default=EPISODES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weight-decay", type=float, default=DEFAULT_FEWSHOT_WD)
    p.add_argument("--split", default=None, help="split to sample (default: the dataset's)")
    p.add_argument("--feature-norm", choices=("l2", "none"), default="l2")

    p = sub.add_parser("suite", help="sweep + kshot + episodes for one model")
    _model_args(p)
    _feature_args(p)
    _output_arg(p)
    p.add_argument("--full", action="store_true",
                   help="paper scale (k up to 50, 600 episodes) instead of demo scale")
    return parser


def _spec(args):
    from .backbones import ModelSpec
    return ModelSpec(model=args.model, arch=args.arch, weights=args.weights, label=args.label,
                     init_seed=args.init_seed)


def _settings(args):
    from .evaluate import FeatureSettings
    return FeatureSettings(data_root=args.data_root, cache_dir=args.cache_dir,
                           feature_layer=args.feature_layer, image_size=args.image_size,
                           batch_size=args.batch_size, workers=args.workers, device=args.device,
                           amp=False if args.no_amp else None, progress=not args.no_progress,
                           backend=args.backend)


def _list_datasets(data_root: str) -> None:
    rows = [("name", "group", "metric", "splits", "status")]
    for info in REGISTRY.values():
        missing = info.missing_path(data_root)
        where = info.directory(data_root) if info.folder else "(embedded)"
        status = f"missing: {missing}" if missing else f"ok {where}"
        rows.append((info.name, info.group, info.metric, ",".join(info.splits), status))
    rows.append(("imagefolder:<dir>", "user", "top1", "train,test|val", "<dir>/train/<class>/*"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + str(r[4]))


def _report(records: list[dict], output: str) -> None:
    from .evaluate import summarise
    for line in summarise(records):
        print(line)
    print(f"appended {len(records)} record(s) to {output}")


def run(args) -> None:
    if args.command == "datasets":
        _list_datasets(args.data_root)
        return
    spec, settings = _spec(args), _settings(args)
    if args.command == "extract":
        info = get_info(args.dataset)
        splits = args.split or [s for s in (info.train_split, info.test_split) if s] or list(info.splits)
        ex = settings.extract(spec, args.dataset, splits)
        for split, entry in ex.splits.items():
            state = "cached" if entry.hit else f"extracted in {ex.seconds[split]:.1f} s"
            print(f"{args.dataset}/{split}: {entry.features.shape[0]} x {entry.features.shape[1]} "
                  f"features, {state}: {entry.path}")
        return
    from . import evaluate
    if args.command == "sweep":
        records = [evaluate.linear_probe(spec, args.dataset, settings=settings, solver=args.solver,
                                         feature_norm=args.feature_norm, seed=args.seed,
                                         weight_decay=args.weight_decay, sgd_epochs=args.sgd_epochs,
                                         sgd_batch_size=args.sgd_batch_size, sgd_lr=args.sgd_lr,
                                         grid=args.wd_grid, output=args.output)]
    elif args.command == "kshot":
        records = evaluate.kshot(spec, args.dataset, args.k, args.seeds, settings=settings,
                                 feature_norm=args.feature_norm, grid=args.wd_grid,
                                 output=args.output)
    elif args.command == "episodes":
        records = evaluate.episodes(spec, args.dataset, args.k, n_way=args.n_way,
                                    n_query=args.n_query, n_episodes=args.episodes, seed=args.seed,
                                    weight_decay=args.weight_decay, feature_norm=args.feature_norm,
                                    split=args.split, settings=settings, output=args.output)
    else:  # suite
        records = evaluate.run_suite(spec, args.dataset, output=args.output,
                                     cache_dir=args.cache_dir, quick=not args.full,
                                     data_root=args.data_root, device=args.device,
                                     image_size=args.image_size, progress=not args.no_progress,
                                     backend=args.backend)
    _report(records, args.output)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except DatasetNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, OSError) as err:
        # CheckpointError and FewShotError are ValueErrors whose messages say what to fix
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a rerun resumes the extraction from its last checkpoint",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
