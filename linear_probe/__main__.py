"""Command line: ``python -m linear_probe <command> ...`` (console script ``tinyvit-probe``).

Commands (one per job, CLIP_benchmark style; one JSON result per run on stdout):

* ``datasets``  the registry and its groups: metric, splits, on disk or not, how to get each.
* ``download``  fetch datasets with torchvision's downloaders, or print where to get them.
* ``extract``   compute (or find cached) features of dataset splits.
* ``mocov3``    the paper's linear probe: MoCo v3's SGD recipe, online augmentation, 90 epochs.
* ``sweep``     the fast linear probe: CLIP's L-BFGS weight-decay sweep on cached features.
* ``kshot``     k-shot linear probes (the same sweep on k images per class), per (k, seed).
* ``episodes``  N-way K-shot episodes: ``cdfsl`` (the paper's fine-tuning) or ``lbfgs-fast``.
* ``suite``     sweep + kshot + lbfgs-fast episodes for one model (the wider suite, the demo).

``--dataset`` takes names, groups (``paper-linear``, ``paper-fewshot``, ``transfer``,
``imagenet``, ``embedded``) and ``imagefolder:<dir>``. Examples::

    python -m linear_probe mocov3 --arch 21m --weights tiny_vit_21m_22k_distill.pth \\
        --dataset paper-linear --download
    torchrun --nproc-per-node 8 -m linear_probe mocov3 --arch 21m --weights w.pth --dataset cifar100
    python -m linear_probe episodes --arch 21m --weights w.pth --dataset paper-fewshot --k 5 20 50
    python -m linear_probe sweep --model timm:resnet50 --dataset transfer
"""
from __future__ import annotations

import argparse
import sys

from tinyvit_backbone.cli import add_runtime_flags, run_commands, subcommands

from .paths import default_cache_dir, default_data_root, default_work_dir
from .recipes import (
    CDFSL_EPISODES,
    CDFSL_QUERIES,
    CDFSL_RECIPE,
    CDFSL_SHOTS,
    CDFSL_WAYS,
    FEWSHOT_WEIGHT_DECAY,
    MOCOV3_RECIPE,
)
from .results import CDFSL, LBFGS_FAST, PRETRAININGS

DEFAULT_OUTPUT = "results/linear_probe.jsonl"
INTERRUPTED = ("interrupted: rerun the same command to resume (feature extraction, mocov3 epochs "
               "and fine-tuned cdfsl episodes continue where they stopped)")


# --------------------------------------------------------------------------- arguments
def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tinyvit",
                   help="'tinyvit' (this project's TinyViT) or 'timm:<name>' (any timm model; "
                        "default %(default)s)")
    g.add_argument("--arch", default=None,
                   help="TinyViT arch: 5m | 11m | 21m | a JSON file with embed_dims / depths / "
                        "num_heads / window_sizes (default 21m)")
    g.add_argument("--weights", default=None,
                   help="weights: a registry name (python -m tinyvit_backbone.weights list), an "
                        "http(s) URL, a timm/ hub tag, or a file (official, timm "
                        ".pth/.safetensors or OpenMMLab); omitted = random init "
                        "(digest 'random')")
    g.add_argument("--label", default=None, help="model name in the results (default e.g. tinyvit-21m)")
    g.add_argument("--init-seed", type=int, default=0, help="seed of the random init (no --weights)")
    g.add_argument("--pretraining", choices=PRETRAININGS, default=None,
                   help="what the weights were pretrained on, recorded with the results (the "
                        "rows of the paper's Table 5)")


def _dataset_args(p: argparse.ArgumentParser, *, download: bool = True) -> argparse._ArgumentGroup:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", nargs="+", required=True, metavar="NAME",
                   help="dataset names, groups or imagefolder:<dir> (python -m linear_probe "
                        "datasets lists them)")
    g.add_argument("--data-root", default=default_data_root(),
                   help="folder holding the datasets (default $TINYVIT_DATA or ./data)")
    if download:
        g.add_argument("--download", action="store_true",
                       help="fetch missing datasets first with torchvision's downloaders "
                            "(checksum-verified; $TINYVIT_DATA_MIRROR redirects them)")
    return g


def _feature_args(p: argparse.ArgumentParser, *, batch_size: bool = True) -> None:
    g = _dataset_args(p)
    g.add_argument("--cache-dir", default=default_cache_dir(),
                   help="feature cache (default $TINYVIT_CACHE or ./work_dirs/features)")
    g.add_argument("--feature-layer", default="pooled",
                   help="'pooled' (pre-logits: pooled final stage + head norm; default) or "
                        "'stage<i>' (stage i's feature map, average-pooled)")
    g.add_argument("--image-size", type=int, default=None,
                   help="input side in pixels (default: the dataset's, else the model's)")
    if batch_size:
        g.add_argument("--batch-size", type=int, default=None,
                       help="extraction batch (default 64 on CPU, 256 on GPU)")
    g.add_argument("--backend", choices=("auto", "torch", "onnxruntime"), default="auto",
                   help="CPU runtime of the extraction: torch (the fused fast path), onnxruntime "
                        "(the model exported to ONNX; needs the [onnx] extra) or auto (default)")
    add_runtime_flags(p, workers=None,
                      amp_help="bfloat16 autocast of the backbone (float16 on GPUs without "
                               "bfloat16), recorded as 'amp'; default off: float32, as MoCo v3's "
                               "and cdfsl's originals")


def _output_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default=DEFAULT_OUTPUT,
                   help=f"JSON-lines file the records are appended to (default {DEFAULT_OUTPUT})")


def _work_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", default=default_work_dir(),
                   help="where resumable runs keep their state (default $TINYVIT_WORK_DIR or "
                        "./work_dirs/probe)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m linear_probe",
        description="Linear-probe and few-shot evaluation of frozen TinyViT / timm backbones: "
                    "the paper's protocols (mocov3, cdfsl) and fast ones on cached features.")
    sub = subcommands(parser)

    p = sub.add_parser("datasets", help="list the datasets and groups, and whether they are on disk")
    p.add_argument("--data-root", default=default_data_root(),
                   help="folder holding the datasets (default $TINYVIT_DATA or ./data)")

    p = sub.add_parser("download", help="fetch datasets (torchvision), or say where to get them")
    g = _dataset_args(p, download=False)
    g.description = "also coco and ade20k (detection / segmentation; instructions only)"

    p = sub.add_parser("extract", help="extract and cache features")
    _model_args(p)
    _feature_args(p)
    p.add_argument("--split", nargs="+", default=None,
                   help="splits to extract (default: the dataset's train and test splits)")

    r = MOCOV3_RECIPE
    p = sub.add_parser("mocov3", help="the paper's linear probe (MoCo v3 main_lincls.py)")
    _model_args(p)
    _feature_args(p, batch_size=False)
    _output_arg(p)
    _work_dir_arg(p)
    g = p.add_argument_group("MoCo v3 recipe")
    g.add_argument("--epochs", type=int, default=r.epochs,
                   help=f"passes over the train split (default {r.epochs})")
    g.add_argument("--batch-size", type=int, default=r.batch_size,
                   help=f"global batch over all processes (default {r.batch_size})")
    g.add_argument("--lr", type=float, default=r.base_lr,
                   help=f"base lr, scaled by batch / 256 (default {r.base_lr})")
    g.add_argument("--momentum", type=float, default=r.momentum,
                   help=f"SGD momentum (default {r.momentum})")
    g.add_argument("--weight-decay", type=float, default=r.weight_decay,
                   help=f"SGD weight decay of the head (default {r.weight_decay})")
    g.add_argument("--seed", type=int, default=0, help="seed of the head, order and augmentation")
    g.add_argument("--augment", choices=("pil", "device"), default="pil",
                   help="pil: main_lincls's pipeline, decoded and augmented by the loader "
                        "(default, the paper's); device: JPEG files decoded and the same crops "
                        "and flips made on the compute device (nvJPEG on a GPU), which frees a "
                        "GPU from waiting on the loader but changes pixels slightly")

    p = sub.add_parser("sweep", help="fast linear probe: CLIP's L-BFGS weight-decay sweep")
    _model_args(p)
    _feature_args(p)
    _output_arg(p)
    p.add_argument("--feature-norm", choices=("standardize", "l2", "none"), default="standardize",
                   help="standardize: mean / std of the fitted rows, folded into the head; l2: "
                        "unit-length rows; none: raw features (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="fix lambda instead of searching it (lambda = 1 / (C n) in sklearn terms)")
    p.add_argument("--wd-grid", choices=("clip", "wd"), default="clip",
                   help="search grid: clip = CLIP paper's C in logspace(-6,6,97); "
                        "wd = CLIP_benchmark's lambda in logspace(-6,2,97) (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the val split")

    p = sub.add_parser("kshot", help="k-shot linear probes over several seeds")
    _model_args(p)
    _feature_args(p)
    _output_arg(p)
    p.add_argument("--k", type=int, nargs="+", default=[1, 5, 10],
                   help="images per class, one probe per k (default 1 5 10)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of the shot sampling, one probe per (k, seed) (default 0 1 2)")
    p.add_argument("--feature-norm", choices=("l2", "standardize", "none"), default="l2",
                   help="l2: unit-length rows; standardize: mean / std of the shots, folded into "
                        "the head; none: raw features (default %(default)s)")
    p.add_argument("--wd-grid", choices=("clip", "wd"), default="clip",
                   help="weight-decay search grid on the val carved from the shots (k >= 2; "
                        "default %(default)s)")

    c = CDFSL_RECIPE
    p = sub.add_parser("episodes", help="N-way K-shot episodes: cdfsl fine-tuning or lbfgs-fast")
    _model_args(p)
    _feature_args(p)
    _output_arg(p)
    _work_dir_arg(p)
    p.add_argument("--protocol", choices=(CDFSL, LBFGS_FAST), default=CDFSL,
                   help="cdfsl: finetune.py's SGD per episode (the paper's; hours when "
                        "fine-tuned); lbfgs-fast: an L-BFGS head on cached features (seconds); "
                        "default %(default)s")
    p.add_argument("--k", type=int, nargs="+", default=list(CDFSL_SHOTS),
                   help="support images per class, one set of episodes per k (default "
                        + " ".join(map(str, CDFSL_SHOTS)) + ")")
    p.add_argument("--n-way", type=int, default=CDFSL_WAYS,
                   help="classes per episode (default %(default)s)")
    p.add_argument("--n-query", type=int, default=CDFSL_QUERIES,
                   help="query images per class and episode (default %(default)s)")
    p.add_argument("--episodes", type=int, default=CDFSL_EPISODES,
                   help="episodes per k (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the episodes (and their training)")
    p.add_argument("--split", default=None, help="split to sample (default: the dataset's)")
    g = p.add_argument_group("cdfsl")
    g.add_argument("--freeze-backbone", action="store_true",
                   help="train the head only (cdfsl's --freeze_backbone); default: fine-tune "
                        "the backbone too, as finetune.py does")
    g.add_argument("--epochs", type=int, default=c.epochs,
                   help=f"epochs over the support set per episode (default {c.epochs})")
    g.add_argument("--episodes-together", type=int, default=None, metavar="E",
                   help="fine-tuned episodes trained at once, each with its own backbone copy, "
                        "head and optimiser (same results as one at a time); default: as many "
                        "as the free memory (GPU) or the cores (CPU) allow; 1: one at a time")
    g = p.add_argument_group("lbfgs-fast")
    g.add_argument("--weight-decay", type=float, default=FEWSHOT_WEIGHT_DECAY,
                   help=f"the head's fixed lambda (default {FEWSHOT_WEIGHT_DECAY})")
    g.add_argument("--feature-norm", choices=("l2", "none"), default="l2",
                   help="l2: unit-length rows; none: raw features (default %(default)s)")

    p = sub.add_parser("suite", help="sweep + kshot + lbfgs-fast episodes for one model")
    _model_args(p)
    _feature_args(p)
    _output_arg(p)
    p.add_argument("--full", action="store_true",
                   help="paper scale (k up to 50, 600 episodes) instead of demo scale")
    return parser


# --------------------------------------------------------------------------- commands
def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _spec(args):
    from .backbones import ModelSpec
    return ModelSpec(model=args.model, arch=args.arch, weights=args.weights, label=args.label,
                     init_seed=args.init_seed, pretraining=args.pretraining)


def _settings(args, batch_size: int | None = None):
    from .settings import FeatureSettings
    return FeatureSettings(data_root=args.data_root, cache_dir=args.cache_dir,
                           feature_layer=args.feature_layer, image_size=args.image_size,
                           batch_size=batch_size, workers=args.workers, device=args.device,
                           amp=args.amp, progress=args.progress, backend=args.backend)


def _describe(result: dict) -> str:
    if result["status"] == "embedded":
        return f"{result['dataset']}: embedded, nothing to download"
    return f"{result['dataset']}: {result['status']} in {result['folder']}"


def _datasets(args) -> list[str]:
    """The datasets named (groups expanded), each fetched first with ``--download``."""
    from .registry import dataset_spec, resolve_datasets
    names = resolve_datasets(args.dataset)
    if getattr(args, "download", False):
        from .downloads import download
        for name in names:
            _log(_describe(download(dataset_spec(name), args.data_root)))
    return names


def _records_result(command: str, records: list[dict], output: str | None) -> dict:
    from .evaluate import summarise
    for line in summarise(records):
        _log(line)
    if output:
        _log(f"appended {len(records)} record(s) to {output}")
    return {"command": command, "output": output, "records": records}


def cmd_datasets(args) -> dict:
    from .downloads import MANUAL, TORCHVISION
    from .registry import GROUPS, REGISTRY, groups_of
    entries = []
    for spec in REGISTRY.values():
        missing = spec.missing_path(args.data_root)
        get = ("embedded" if spec.name == "digits" else
               "torchvision" if spec.name in TORCHVISION else "manual")
        entries.append({"name": spec.name, "title": spec.title, "groups": groups_of(spec.name),
                        "metric": spec.metric, "splits": list(spec.splits),
                        "folder": str(spec.directory(args.data_root)) if spec.folder else None,
                        "on_disk": missing is None, "missing": str(missing) if missing else None,
                        "download": get})
        where = "embedded" if not spec.folder else (f"missing {missing}" if missing else
                                                    f"ok {spec.directory(args.data_root)}")
        _log(f"{spec.name:<14} {','.join(groups_of(spec.name)):<28} {spec.metric:<15} "
             f"{get:<12} {where}")
    _log("imagefolder:<dir>  user  top1  <dir>/train/<class>/*, <dir>/test/<class>/*")
    manual = sorted(set(MANUAL) - set(REGISTRY))
    return {"command": "datasets", "data_root": args.data_root, "datasets": entries,
            "groups": {k: list(v) for k, v in GROUPS.items()}, "instructions_only": manual}


def cmd_download(args) -> dict:
    from .downloads import DENSE_DATASETS, DatasetDownloadError, dense_dataset_report, download
    from .registry import dataset_spec, resolve_datasets
    dense = [n for n in args.dataset if n in DENSE_DATASETS]
    names = resolve_datasets([n for n in args.dataset if n not in DENSE_DATASETS]) \
        if len(dense) < len(args.dataset) else []
    results, problems = [], []
    for name in names:
        try:
            results.append(download(dataset_spec(name), args.data_root))
            _log(_describe(results[-1]))
        except DatasetDownloadError as err:
            results.append({"dataset": name, "status": "failed", "error": str(err)})
            problems.append(str(err))
    for name in dense:
        report = dense_dataset_report(name, args.data_root)
        results.append(report)
        if report["instructions"]:
            problems.append(f"{name} cannot be downloaded automatically. {report['instructions']}")
    if problems:
        # every dataset was tried; the ones left need the user (exit 2, each explained)
        raise DatasetDownloadError("\n".join(problems))
    return {"command": "download", "data_root": args.data_root, "datasets": results}


def cmd_extract(args) -> dict:
    from .registry import dataset_spec
    spec, settings = _spec(args), _settings(args, args.batch_size)
    out = []
    for name in _datasets(args):
        info = dataset_spec(name)
        splits = args.split or [s for s in (info.train_split, info.test_split) if s] or list(info.splits)
        ex = settings.extract(spec, name, splits)
        for split, entry in ex.splits.items():
            out.append({"dataset": name, "split": split, "rows": int(entry.features.shape[0]),
                        "dim": int(entry.features.shape[1]), "cached": bool(entry.hit),
                        "seconds": ex.seconds[split], "path": str(entry.path)})
            state = "cached" if entry.hit else f"extracted in {ex.seconds[split]:.1f} s"
            _log(f"{name}/{split}: {out[-1]['rows']} x {out[-1]['dim']} features, {state}: {entry.path}")
    return {"command": "extract", "features": out}


def cmd_mocov3(args) -> dict | None:
    from .mocov3 import run_mocov3
    from .recipes import MoCoV3Recipe
    recipe = MoCoV3Recipe(epochs=args.epochs, batch_size=args.batch_size, base_lr=args.lr,
                          momentum=args.momentum, weight_decay=args.weight_decay)
    spec, settings = _spec(args), _settings(args)
    records = []
    for name in _datasets(args):
        record = run_mocov3(spec, name, recipe=recipe, seed=args.seed, settings=settings,
                            work_dir=args.work_dir, output=args.output, augment=args.augment,
                            log=_log)
        if record is not None:
            records.append(record)
    if not records:  # not rank 0 of a torchrun job: rank 0 reports
        return None
    return _records_result("mocov3", records, args.output)


def cmd_sweep(args) -> dict:
    from .evaluate import linear_probe
    spec, settings = _spec(args), _settings(args, args.batch_size)
    records = [linear_probe(spec, name, settings=settings, feature_norm=args.feature_norm,
                            seed=args.seed, weight_decay=args.weight_decay, grid=args.wd_grid,
                            output=args.output) for name in _datasets(args)]
    return _records_result("sweep", records, args.output)


def cmd_kshot(args) -> dict:
    from .evaluate import kshot
    spec, settings = _spec(args), _settings(args, args.batch_size)
    records = []
    for name in _datasets(args):
        records += kshot(spec, name, args.k, args.seeds, settings=settings,
                         feature_norm=args.feature_norm, grid=args.wd_grid, output=args.output)
    return _records_result("kshot", records, args.output)


def cmd_episodes(args) -> dict:
    spec, settings = _spec(args), _settings(args, args.batch_size)
    records = []
    if args.protocol == CDFSL:  # all datasets in one run: one progress bar, one ETA
        from .cdfsl import run_cdfsl
        from .recipes import CdfslRecipe
        records += run_cdfsl(spec, _datasets(args), args.k, n_way=args.n_way,
                             n_query=args.n_query, n_episodes=args.episodes, seed=args.seed,
                             freeze_backbone=args.freeze_backbone,
                             recipe=CdfslRecipe(epochs=args.epochs), split=args.split,
                             settings=settings, work_dir=args.work_dir, output=args.output,
                             together=args.episodes_together, log=_log)
        return _records_result("episodes", records, args.output)
    from .evaluate import episodes
    for name in _datasets(args):
        records += episodes(spec, name, args.k, n_way=args.n_way, n_query=args.n_query,
                            n_episodes=args.episodes, seed=args.seed,
                            weight_decay=args.weight_decay, feature_norm=args.feature_norm,
                            split=args.split, settings=settings, output=args.output)
    return _records_result("episodes", records, args.output)


def cmd_suite(args) -> dict:
    from .evaluate import run_suite
    spec, settings = _spec(args), _settings(args, args.batch_size)
    records = []
    for name in _datasets(args):
        records += run_suite(spec, name, output=args.output, quick=not args.full,
                             settings=settings)
    return _records_result("suite", records, args.output)


COMMANDS = {"datasets": cmd_datasets, "download": cmd_download, "extract": cmd_extract,
            "mocov3": cmd_mocov3, "sweep": cmd_sweep, "kshot": cmd_kshot,
            "episodes": cmd_episodes, "suite": cmd_suite}


def _shutdown() -> None:
    if "tinyvit_backbone.distributed" in sys.modules:  # a mocov3 run may have joined a group
        sys.modules["tinyvit_backbone.distributed"].shutdown_distributed()


def main(argv: list[str] | None = None) -> int:
    # CheckpointError and FewShotError are ValueErrors, DatasetNotFoundError and
    # DatasetDownloadError OSErrors: their messages say what to fix
    return run_commands(build_parser(), COMMANDS, argv, interrupted=INTERRUPTED,
                        finally_=_shutdown)


if __name__ == "__main__":
    sys.exit(main())
