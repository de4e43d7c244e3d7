"""The three evaluations — linear probe, k-shot probe, cdfsl episodes — as functions that
extract (or reuse cached) features, fit, score and return result records
(:mod:`linear_probe.results`), plus :func:`run_suite`, which runs all three."""
from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from .backbones import ModelSpec
from .device import select_device
from .extract import Extraction, extract_splits
from .fewshot import (
    DEFAULT_FEWSHOT_WD,
    EPISODES,
    N_QUERY,
    confidence95,
    run_episodes,
    sample_episodes,
    sample_kshot,
)
from .metrics import compute_metrics
from .results import append_jsonl, make_record
from .solver import fit_sgd, standardisation
from .sweep import apply_normalisation, sweep_weight_decay


@dataclass
class FeatureSettings:
    """How features are produced and where they are cached (shared by all evaluations)."""

    data_root: str | None = None
    cache_dir: str | None = None
    feature_layer: str = "pooled"
    image_size: int | None = None
    batch_size: int | None = None
    workers: int | None = None
    device: str | None = None
    amp: bool | None = None
    progress: bool = True
    backend: str = "auto"

    def extract(self, spec: ModelSpec, dataset: str, splits: list[str]) -> Extraction:
        return extract_splits(spec, dataset, splits, data_root=self.data_root,
                              cache_dir=self.cache_dir, feature_layer=self.feature_layer,
                              image_size=self.image_size, batch_size=self.batch_size,
                              workers=self.workers, device=self.device, amp=self.amp,
                              progress=self.progress, backend=self.backend)


def as_model_spec(model) -> ModelSpec:
    """A :class:`ModelSpec` from itself, a dict of its fields, or a string such as
    ``'tinyvit-5m'`` / ``'timm:resnet18'``."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return ModelSpec(**model)
    if isinstance(model, str):
        return ModelSpec(model=model, arch=None)
    raise TypeError(f"model spec must be a ModelSpec, dict or str, got {type(model).__name__}")


def _num_classes(entry, labels: np.ndarray, multilabel: bool) -> int:
    if multilabel:
        return int(labels.shape[1])
    names = entry.classes
    return len(names) if names else int(labels.max()) + 1


def _base_fields(task: str, spec: ModelSpec, ex: Extraction, settings: FeatureSettings) -> dict:
    info = ex.info
    return {"task": task, "model": spec.display_label(), "arch": spec.arch_field(),
            "weights": spec.weights, "weights_digest": spec.weights_digest(),
            "dataset": info.name, "feature_layer": settings.feature_layer,
            "metric": "top1" if task == "episodes" else info.metric,
            "image_size": ex.image_size,
            "feature_dim": int(next(iter(ex.splits.values())).features.shape[1]),
            "cache_hit": all(e.hit for e in ex.splits.values())}


def _finish(records: list[dict], output) -> list[dict]:
    if output:
        append_jsonl(output, records)
    return records


# --------------------------------------------------------------------------- linear probe
def linear_probe(
    model,
    dataset: str,
    *,
    settings: FeatureSettings | None = None,
    solver: str = "auto",
    feature_norm: str = "standardize",
    grid: str = "clip",
    seed: int = 0,
    weight_decay: float | None = None,
    sgd_epochs: int = 90,
    sgd_batch_size: int = 1024,
    sgd_lr: float = 0.1,
    output=None,
) -> dict:
    """Linear probe on the train split, scored on the test split (one record).

    ``solver``: 'lbfgs' (weight-decay sweep on a val carved from train, refit on train + val),
    'sgd' (MoCo v3 recipe, no sweep) or 'auto' (the dataset's protocol: sgd for ImageNet-1k,
    lbfgs otherwise). ``weight_decay`` fixes lambda and skips the search.
    """
    settings = settings or FeatureSettings()
    spec = as_model_spec(model)
    t_start = time.perf_counter()
    from .datasets import get_info
    info = get_info(dataset)
    if info.train_split is None or info.test_split is None:
        raise ValueError(f"{info.name} has no train / test split (splits: {list(info.splits)}); "
                         "it is meant for episodes: python -m linear_probe episodes ...")
    ex = settings.extract(spec, dataset, [info.train_split, info.test_split])
    train, test = ex.splits[info.train_split], ex.splits[info.test_split]
    C = _num_classes(train, train.labels, info.multilabel)
    device = select_device(settings.device)
    solver = ("sgd" if info.protocol == "mocov3" else "lbfgs") if solver == "auto" else solver
    fields: dict = {}
    if solver == "lbfgs":
        res = sweep_weight_decay(train.features, train.labels, metric=info.metric,
                                 multilabel=info.multilabel, num_classes=C, grid=grid,
                                 feature_norm=feature_norm, seed=seed, device=device,
                                 progress=settings.progress, fixed_weight_decay=weight_decay)
        head, wd = res.head, res.weight_decay
        timings = {"sweep_s": res.sweep_s, "fit_s": res.final_fit_s}
        split_sizes = dict(res.split_sizes)
        fields.update(val_score=res.val_score, val_scores=res.val_scores, fits=res.fits,
                      wd_grid=res.grid, C=res.C)
    elif solver == "sgd":
        if feature_norm != "standardize":
            raise ValueError("the SGD recipe works on standardised features (--feature-norm standardize)")
        t0 = time.perf_counter()
        shift, scale = standardisation(train.features)
        wd = float(weight_decay or 0.0)
        head = fit_sgd(train.features, train.labels, num_classes=C, multilabel=info.multilabel,
                       weight_decay=wd, epochs=sgd_epochs, batch_size=sgd_batch_size,
                       base_lr=sgd_lr, shift=shift, scale=scale, seed=seed, device=device,
                       progress=settings.progress)
        timings = {"sweep_s": 0.0, "fit_s": time.perf_counter() - t0}
        split_sizes = {"train": len(train.labels), "val": 0}
        fields.update(sgd={"epochs": sgd_epochs, "batch_size": sgd_batch_size, "base_lr": sgd_lr,
                           "momentum": 0.9, "schedule": "cosine"})
    else:
        raise ValueError(f"solver must be auto, lbfgs or sgd, got {solver!r}")
    t0 = time.perf_counter()
    scores = head.logits(apply_normalisation(test.features, feature_norm)).cpu()
    metrics = compute_metrics(scores, test.labels, info.multilabel)
    timings.update(eval_s=time.perf_counter() - t0, extract_s=ex.extract_s,
                   total_s=time.perf_counter() - t_start)
    split_sizes["test"] = len(test.labels)
    record = make_record(**_base_fields("linear_probe", spec, ex, settings),
                         split_sizes=split_sizes, seed=seed, weight_decay=wd, metrics=metrics,
                         timings=timings, solver=solver, feature_norm=feature_norm,
                         num_classes=C, converged=bool(head.converged), **fields)
    return _finish([record], output)[0]


# --------------------------------------------------------------------------- k-shot
def kshot(
    model,
    dataset: str,
    ks: Sequence[int] = (1, 5, 10),
    seeds: Sequence[int] = (0, 1, 2),
    *,
    settings: FeatureSettings | None = None,
    feature_norm: str = "l2",
    grid: str = "clip",
    output=None,
) -> list[dict]:
    """k-shot linear probes (one record per (k, seed)); see :mod:`linear_probe.fewshot`."""
    settings = settings or FeatureSettings()
    spec = as_model_spec(model)
    from .datasets import get_info
    info = get_info(dataset)
    if info.multilabel:
        raise ValueError(f"{info.name} is multi-label: k images per class is undefined; use "
                         "the linear probe")
    if info.train_split is None or info.test_split is None:
        raise ValueError(f"{info.name} has no train / test split; use episodes for it")
    ex = settings.extract(spec, dataset, [info.train_split, info.test_split])
    train, test = ex.splits[info.train_split], ex.splits[info.test_split]
    C = _num_classes(train, train.labels, False)
    device = select_device(settings.device)
    X_test = apply_normalisation(test.features, feature_norm)
    records = []
    bar = tqdm(total=len(ks) * len(seeds), desc=f"k-shot {info.name}", disable=not settings.progress,
               leave=False)
    for k in ks:
        for seed in seeds:
            bar.update(1)
            bar.set_postfix(k=k, seed=seed)
            t_start = time.perf_counter()
            shots = sample_kshot(train.labels, k, seed, train.classes)
            res = sweep_weight_decay(train.features[shots], train.labels[shots],
                                     metric=info.metric, num_classes=C, grid=grid,
                                     feature_norm=feature_norm, seed=seed, device=device,
                                     fixed_weight_decay=DEFAULT_FEWSHOT_WD if k < 2 else None)
            t0 = time.perf_counter()
            metrics = compute_metrics(res.head.logits(X_test).cpu(), test.labels)
            timings = {"extract_s": ex.extract_s, "sweep_s": res.sweep_s, "fit_s": res.final_fit_s,
                       "eval_s": time.perf_counter() - t0, "total_s": time.perf_counter() - t_start}
            records.append(make_record(
                **_base_fields("kshot", spec, ex, settings),
                split_sizes={**res.split_sizes, "test": len(test.labels)}, k=int(k),
                seed=int(seed), weight_decay=res.weight_decay, metrics=metrics, timings=timings,
                solver="lbfgs", feature_norm=feature_norm, num_classes=C,
                val_score=res.val_score, wd_grid=res.grid, C=res.C))
    bar.close()
    return _finish(records, output)


# --------------------------------------------------------------------------- episodes
def episodes(
    model,
    dataset: str,
    ks: Sequence[int] = (5, 20, 50),
    *,
    n_way: int = 5,
    n_query: int = N_QUERY,
    n_episodes: int = EPISODES,
    seed: int = 0,
    weight_decay: float = DEFAULT_FEWSHOT_WD,
    feature_norm: str = "l2",
    split: str | None = None,
    settings: FeatureSettings | None = None,
    output=None,
) -> list[dict]:
    """cdfsl N-way K-shot episodes (one record per K); see :mod:`linear_probe.fewshot`."""
    settings = settings or FeatureSettings()
    spec = as_model_spec(model)
    from .datasets import get_info
    info = get_info(dataset)
    split = split or info.episodes_split
    if split is None:
        raise ValueError(f"{info.name} defines no split for episodes; pass --split")
    ex = settings.extract(spec, dataset, [split])
    entry = ex.splits[split]
    if info.multilabel:
        raise ValueError(f"{info.name} is multi-label; episodes need one class per image")
    device = select_device(settings.device)
    records = []
    for k in ks:
        t_start = time.perf_counter()
        eps = sample_episodes(entry.labels, n_way, k, n_query, n_episodes, seed, entry.classes)
        accs = run_episodes(entry.features, eps, weight_decay=weight_decay,
                            feature_norm=feature_norm, device=device, progress=settings.progress)
        mean = float(accs.mean())
        timings = {"extract_s": ex.extract_s, "fit_s": time.perf_counter() - t_start,
                   "total_s": time.perf_counter() - t_start}
        records.append(make_record(
            **_base_fields("episodes", spec, ex, settings),
            split_sizes={"train": n_way * k, "val": 0, "test": n_way * n_query}, k=int(k),
            seed=int(seed), n_way=int(n_way), episodes=int(n_episodes),
            weight_decay=float(weight_decay), metrics={"top1": mean, "mean_per_class": mean},
            ci95=confidence95(accs), timings=timings, solver="lbfgs", feature_norm=feature_norm,
            split=split, n_query=int(n_query), std=float(accs.std())))
    return _finish(records, output)


# --------------------------------------------------------------------------- suite
def run_suite(
    model,
    dataset: str = "digits",
    output=None,
    cache_dir=None,
    quick: bool = True,
    *,
    data_root=None,
    device=None,
    image_size: int | None = None,
    ks: Sequence[int] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    episode_ks: Sequence[int] | None = None,
    n_episodes: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> list[dict]:
    """Linear-probe sweep, k-shot probes and cdfsl-style episodes of one model on one dataset.

    ``model``: :class:`ModelSpec`, dict of its fields, or 'tinyvit-5m' / 'timm:<name>'.
    ``quick`` (demo scale): k = 1, 5, 10 x ``seeds``; 5-way episodes with K = 5, 20 and 100
    episodes. Otherwise k = 1, 5, 10, 20, 50 and K = 5, 20, 50 with 600 episodes (cdfsl); K
    values the episode split cannot hold (K + 15 queries > smallest class) are skipped with a
    warning (digits' test split has 54 images per class: K = 50 is skipped).
    Features are extracted once per split and cached, so a rerun only refits the heads.
    Returns the records (also appended to ``output`` when given).
    """
    settings = FeatureSettings(data_root=data_root, cache_dir=cache_dir, device=device,
                               image_size=image_size, progress=progress, backend=backend)
    spec = as_model_spec(model)
    ks = ks if ks is not None else ((1, 5, 10) if quick else (1, 5, 10, 20, 50))
    episode_ks = episode_ks if episode_ks is not None else ((5, 20) if quick else (5, 20, 50))
    n_episodes = n_episodes if n_episodes is not None else (100 if quick else EPISODES)
    records = [linear_probe(spec, dataset, settings=settings, output=output)]
    records += kshot(spec, dataset, ks, seeds, settings=settings, output=output)
    from .datasets import get_info
    split = get_info(dataset).episodes_split
    if split is not None:
        labels = settings.extract(spec, dataset, [split]).splits[split].labels
        smallest = int(np.bincount(labels).min()) if labels.ndim == 1 else 0
        feasible = [k for k in episode_ks if k + N_QUERY <= smallest]
        if len(feasible) < len(episode_ks):
            warnings.warn(f"{dataset}/{split}: skipping episodes with K = "
                          f"{sorted(set(episode_ks) - set(feasible))}: the smallest class has "
                          f"{smallest} images, fewer than K + {N_QUERY} queries", stacklevel=2)
        records += episodes(spec, dataset, feasible, n_episodes=n_episodes, settings=settings,
                            output=output)
    return records


def summarise(records: list[dict]) -> list[str]:
    """Human-readable lines: one per linear probe / episode record, k-shot as mean ± std."""
    lines = []
    by_k: dict[tuple, list[float]] = {}
    for r in records:
        value = r["metrics"][r["metric"]]
        if r["task"] == "kshot":
            by_k.setdefault((r["model"], r["dataset"], r["k"], r["metric"]), []).append(value)
        elif r["task"] == "episodes":
            lines.append(f"{r['model']} {r['dataset']} {r['n_way']}-way {r['k']}-shot episodes: "
                         f"{value:.2f} ± {r['ci95']:.2f} ({r['episodes']} episodes)")
        else:
            lines.append(f"{r['model']} {r['dataset']} linear probe: {r['metric']} {value:.2f} "
                         f"(weight decay {r['weight_decay']:.2g})")
    for (model, dataset, k, metric), values in by_k.items():
        lines.append(f"{model} {dataset} {k}-shot: {metric} {np.mean(values):.2f} ± "
                     f"{np.std(values):.2f} over {len(values)} seeds")
    return lines


__all__ = ["FeatureSettings", "as_model_spec", "episodes", "kshot", "linear_probe", "run_suite",
           "summarise"]
