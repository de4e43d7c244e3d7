"""The fast protocols on cached features — the ``clip-lbfgs`` linear probe and k-shot probes,
the ``lbfgs-fast`` few-shot episodes — as functions that extract (or reuse cached) features,
fit, score and return result records (:mod:`linear_probe.results`), plus :func:`run_suite`,
which runs all three for the wider suite (and the demo). The paper's own protocols are
:func:`linear_probe.mocov3.run_mocov3` and :func:`linear_probe.cdfsl.run_cdfsl`."""
from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Sequence

import numpy as np

from tinyvit_backbone.progress import progress_bar

from .device import select_device
from .fewshot import confidence95, run_episodes, sample_episodes, sample_kshot
from .metrics import compute_metrics
from .recipes import CDFSL_EPISODES, CDFSL_QUERIES, FEWSHOT_WEIGHT_DECAY
from .registry import dataset_spec
from .results import CLIP_LBFGS, LBFGS_FAST, append_jsonl, make_record
from .settings import FeatureSettings, as_model_spec, base_fields, extraction_fields
from .sweep import apply_normalisation, sweep_weight_decay


def _num_classes(entry, labels: np.ndarray, multilabel: bool) -> int:
    if multilabel:
        return int(labels.shape[1])
    names = entry.classes
    return len(names) if names else int(labels.max()) + 1


def _finish(records: list[dict], output) -> list[dict]:
    if output:
        append_jsonl(output, records)
    return records


def _train_test(info) -> tuple[str, str]:
    if info.train_split is None or info.test_split is None:
        raise ValueError(f"{info.name} has no train / test split (splits: {list(info.splits)}); "
                         "it is meant for episodes: python -m linear_probe episodes ...")
    return info.train_split, info.test_split


# --------------------------------------------------------------------------- linear probe
def linear_probe(
    model,
    dataset: str,
    *,
    settings: FeatureSettings | None = None,
    feature_norm: str = "standardize",
    grid: str = "clip",
    seed: int = 0,
    weight_decay: float | None = None,
    output=None,
) -> dict:
    """``clip-lbfgs`` linear probe: weight-decay sweep on a val carved from the train split,
    refit on all of it, scored on the test split by the dataset's official metric (one
    record). ``weight_decay`` fixes lambda and skips the search."""
    settings = settings or FeatureSettings()
    spec = as_model_spec(model)
    t_start = time.perf_counter()
    info = dataset_spec(dataset)
    train_split, test_split = _train_test(info)
    ex = settings.extract(spec, dataset, [train_split, test_split])
    train, test = ex.splits[train_split], ex.splits[test_split]
    C = _num_classes(train, train.labels, info.multilabel)
    res = sweep_weight_decay(train.features, train.labels, metric=info.metric,
                             multilabel=info.multilabel, num_classes=C, grid=grid,
                             feature_norm=feature_norm, seed=seed, device=select_device(settings.device),
                             progress=settings.progress, fixed_weight_decay=weight_decay)
    t0 = time.perf_counter()
    scores = res.head.logits(apply_normalisation(test.features, feature_norm)).cpu()
    metrics = compute_metrics(scores, test.labels, info.multilabel)
    timings = {"extract_s": ex.extract_s, "sweep_s": res.sweep_s, "fit_s": res.final_fit_s,
               "eval_s": time.perf_counter() - t0, "total_s": time.perf_counter() - t_start}
    record = make_record(
        **base_fields("linear_probe", CLIP_LBFGS, spec, settings, info.metric,
                      **extraction_fields(ex)),
        split_sizes={**res.split_sizes, "test": len(test.labels)}, seed=seed,
        weight_decay=res.weight_decay, metrics=metrics, timings=timings, solver="lbfgs",
        feature_norm=feature_norm, num_classes=C, converged=bool(res.head.converged),
        val_score=res.val_score, val_scores=res.val_scores, fits=res.fits, wd_grid=res.grid,
        C=res.C)
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
    info = dataset_spec(dataset)
    if info.multilabel:
        raise ValueError(f"{info.name} is multi-label: k images per class is undefined; use "
                         "the linear probe")
    train_split, test_split = _train_test(info)
    ex = settings.extract(spec, dataset, [train_split, test_split])
    train, test = ex.splits[train_split], ex.splits[test_split]
    C = _num_classes(train, train.labels, False)
    device = select_device(settings.device)
    X_test = apply_normalisation(test.features, feature_norm)
    records = []
    bar = progress_bar(total=len(ks) * len(seeds), desc=f"k-shot {info.name}",
                       enabled=settings.progress, leave=False)
    for k in ks:
        for seed in seeds:
            bar.update(1)
            bar.set_postfix(k=k, seed=seed)
            t_start = time.perf_counter()
            shots = sample_kshot(train.labels, k, seed, train.classes)
            res = sweep_weight_decay(train.features[shots], train.labels[shots],
                                     metric=info.metric, num_classes=C, grid=grid,
                                     feature_norm=feature_norm, seed=seed, device=device,
                                     fixed_weight_decay=FEWSHOT_WEIGHT_DECAY if k < 2 else None)
            t0 = time.perf_counter()
            metrics = compute_metrics(res.head.logits(X_test).cpu(), test.labels)
            timings = {"extract_s": ex.extract_s, "sweep_s": res.sweep_s, "fit_s": res.final_fit_s,
                       "eval_s": time.perf_counter() - t0, "total_s": time.perf_counter() - t_start}
            records.append(make_record(
                **base_fields("kshot", CLIP_LBFGS, spec, settings, info.metric,
                              **extraction_fields(ex)),
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
    n_query: int = CDFSL_QUERIES,
    n_episodes: int = CDFSL_EPISODES,
    seed: int = 0,
    weight_decay: float = FEWSHOT_WEIGHT_DECAY,
    feature_norm: str = "l2",
    split: str | None = None,
    settings: FeatureSettings | None = None,
    output=None,
) -> list[dict]:
    """``lbfgs-fast`` N-way K-shot episodes (one record per K); see
    :mod:`linear_probe.fewshot`. The paper's protocol is :func:`linear_probe.cdfsl.run_cdfsl`."""
    settings = settings or FeatureSettings()
    spec = as_model_spec(model)
    info = dataset_spec(dataset)
    split = split or info.episodes_split
    if split is None:
        raise ValueError(f"{info.name} defines no split for episodes; pass --split")
    if info.multilabel:
        raise ValueError(f"{info.name} is multi-label; episodes need one class per image")
    ex = settings.extract(spec, dataset, [split])
    entry = ex.splits[split]
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
            **base_fields("episodes", LBFGS_FAST, spec, settings, "top1", **extraction_fields(ex)),
            split_sizes={"train": n_way * k, "val": 0, "test": n_way * n_query}, k=int(k),
            seed=int(seed), n_way=int(n_way), episodes=int(n_episodes),
            weight_decay=float(weight_decay), metrics={"top1": mean, "mean_per_class": mean},
            ci95=confidence95(accs), timings=timings, solver="lbfgs", feature_norm=feature_norm,
            split=split, n_query=int(n_query), std=float(accs.std())))
    return _finish(records, output)


# --------------------------------------------------------------------------- suite
def feasible_shots(labels: np.ndarray, ks: Sequence[int], n_query: int = CDFSL_QUERIES) -> list[int]:
    """The K of ``ks`` whose episodes the split can hold (K + queries <= its smallest class)."""
    smallest = int(np.bincount(labels).min()) if labels.ndim == 1 else 0
    return [k for k in ks if k + n_query <= smallest]


def run_suite(
    model,
    dataset: str = "digits",
    output=None,
    cache_dir=None,
    quick: bool = True,
    *,
    settings: FeatureSettings | None = None,
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
    """The fast protocols on one dataset: ``clip-lbfgs`` sweep, k-shot probes and
    ``lbfgs-fast`` episodes.

    ``model``: :class:`ModelSpec`, dict of its fields, or 'tinyvit-5m' / 'timm:<name>'.
    ``settings`` gives every feature setting; without it, the keyword arguments
    (``cache_dir``, ``data_root``, ``device``, ``image_size``, ``progress``, ``backend``)
    make one.
    ``quick`` (demo scale): k = 1, 5, 10 x ``seeds``; 5-way episodes with K = 5, 20 and 100
    episodes. Otherwise k = 1, 5, 10, 20, 50 and K = 5, 20, 50 with 600 episodes (cdfsl); K
    values the episode split cannot hold (K + 15 queries > smallest class) are skipped with a
    warning (digits' test split has 54 images per class: K = 50 is skipped).
    Features are extracted once per split and cached, so a rerun only refits the heads.
    Returns the records (also appended to ``output`` when given).
    """
    if settings is None:
        settings = FeatureSettings(data_root=data_root, cache_dir=cache_dir, device=device,
                                   image_size=image_size, progress=progress, backend=backend)
    spec = as_model_spec(model)
    ks = ks if ks is not None else ((1, 5, 10) if quick else (1, 5, 10, 20, 50))
    episode_ks = episode_ks if episode_ks is not None else ((5, 20) if quick else (5, 20, 50))
    n_episodes = n_episodes if n_episodes is not None else (100 if quick else CDFSL_EPISODES)
    records = [linear_probe(spec, dataset, settings=settings, output=output)]
    records += kshot(spec, dataset, ks, seeds, settings=settings, output=output)
    split = dataset_spec(dataset).episodes_split
    if split is not None:
        labels = settings.extract(spec, dataset, [split]).splits[split].labels
        feasible = feasible_shots(labels, episode_ks)
        if len(feasible) < len(episode_ks):
            warnings.warn(f"{dataset}/{split}: skipping episodes with K = "
                          f"{sorted(set(episode_ks) - set(feasible))}: the smallest class has "
                          f"fewer than K + {CDFSL_QUERIES} images", stacklevel=2)
        records += episodes(spec, dataset, feasible, n_episodes=n_episodes, settings=settings,
                            output=output)
    return records


def summarise(records: list[dict]) -> list[str]:
    """Human-readable lines: one per linear probe / episode record, k-shot as mean ± the
    sample standard deviation over seeds (n - 1, as the k-shot tables print it; none for one
    seed)."""
    lines = []
    by_k: dict[tuple, list[float]] = {}
    for r in records:
        value = r["metrics"][r["metric"]]
        where = f"{r['model']} {r['dataset']} [{r['protocol']}]"
        if r["task"] == "kshot":
            by_k.setdefault((where, r["k"], r["metric"]), []).append(value)
        elif r["task"] == "episodes":
            lines.append(f"{where} {r['n_way']}-way {r['k']}-shot episodes: "
                         f"{value:.2f} ± {r['ci95']:.2f} ({r['episodes']} episodes)")
        else:
            wd = "" if r.get("weight_decay") is None else f" (weight decay {r['weight_decay']:.2g})"
            lines.append(f"{where} linear probe: {r['metric']} {value:.2f}{wd}")
    for (where, k, metric), values in by_k.items():
        if len(values) > 1:
            spread = f" ± {statistics.stdev(values):.2f} (sample std over {len(values)} seeds)"
        else:
            spread = " (1 seed, no std)"
        lines.append(f"{where} {k}-shot: {metric} {statistics.fmean(values):.2f}{spread}")
    return lines


__all__ = ["FeatureSettings", "as_model_spec", "episodes", "feasible_shots", "kshot",
           "linear_probe", "run_suite", "summarise"]
