"""Few-shot sampling (k-shot sets, cdfsl N-way K-shot episodes) and the fast episode solver.

**k-shot** (ELEVATER-style, protocol ``clip-lbfgs``): for each seed, ``k`` training images per
class are drawn from the train split; the weight decay is searched on a class-balanced val
carved *from those shots only* (20%, at least one per class; none when k = 1, which then uses
:data:`FEWSHOT_WEIGHT_DECAY`), the head is refitted on all the shots, and it is scored on the
full test split. Shots are nested: for one seed, the 5 shots of a class are the first 5 of its
10 shots, so curves over k are not confounded by resampling.

**Episodes** (cdfsl, Guo et al. 2020): each episode draws ``n_way`` classes, ``k`` support and
``n_query`` (15) query images per class from one split (:func:`sample_episodes`, seeded).
Reported: mean accuracy over the episodes (600) and the 95% interval
``1.96 * std / sqrt(episodes)`` (cdfsl's formula, population std). Two protocols train the
head: ``cdfsl`` (its ``finetune.py``, :mod:`linear_probe.cdfsl`; the paper's) and the fast
``lbfgs-fast`` here (:func:`run_episodes`): a logistic-regression head with a fixed weight
decay fitted by L-BFGS on unit-RMS L2-normalised cached features, episodes solved in batches
by one L-BFGS run each (see :mod:`linear_probe.solver`), which gives each episode its own
optimum — seconds where cdfsl's SGD takes minutes, but not the paper's numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .recipes import CDFSL_EPISODES, CDFSL_QUERIES, FEWSHOT_WEIGHT_DECAY
from .solver import cpu_threads, fit_lbfgs, l2_normalise, threads_for


class FewShotError(ValueError):
    """Sampling is impossible as asked (a class has too few images); the message says why."""


def _class_name(c: int, class_names) -> str:
    return f"{class_names[c]!r} ({c})" if class_names is not None and c < len(class_names) else str(c)


def sample_kshot(labels, k: int, seed: int, class_names=None) -> np.ndarray:
    """Sorted indices of ``k`` images per class, drawn with ``seed``.

    Each class has its own generator seeded by (seed, class), so a class's shots do not depend
    on the other classes, and shots are nested across k (prefix of one permutation).
    Raises :class:`FewShotError` naming every class with fewer than ``k`` images.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise FewShotError("k-shot sampling needs single-label data (one class per image); this "
                           "dataset is multi-label")
    if k < 1:
        raise FewShotError(f"k must be >= 1, got {k}")
    classes, counts = np.unique(labels, return_counts=True)
    short = [(int(c), int(n)) for c, n in zip(classes, counts) if n < k]
    if short:
        listed = ", ".join(f"{_class_name(c, class_names)} has {n}" for c, n in short[:10])
        more = f" (+{len(short) - 10} more)" if len(short) > 10 else ""
        raise FewShotError(
            f"{k}-shot sampling needs {k} training images per class, but {listed}{more}. Use "
            f"k <= {int(counts.min())}, or remove those classes from the dataset.")
    picks = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        perm = np.random.default_rng([seed, int(c)]).permutation(len(idx))
        picks.append(idx[perm[:k]])
    return np.sort(np.concatenate(picks))


@dataclass
class Episodes:
    """Index arrays into the sampled split. ``support`` (E, n_way * k) and ``query``
    (E, n_way * n_query) are class-major: episode label of column j is ``j // k`` (support)
    and ``j // n_query`` (query). ``classes`` (E, n_way) are the dataset labels."""

    support: np.ndarray
    query: np.ndarray
    classes: np.ndarray
    n_way: int
    k: int
    n_query: int


def sample_episodes(labels, n_way: int, k: int, n_query: int = CDFSL_QUERIES,
                    episodes: int = CDFSL_EPISODES, seed: int = 0, class_names=None) -> Episodes:
    """Draw cdfsl episodes deterministically from ``seed``.

    Raises :class:`FewShotError` when fewer than ``n_way`` classes exist or a class has fewer
    than ``k + n_query`` images (every class must be able to appear in an episode).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise FewShotError("episodes need single-label data; this dataset is multi-label")
    classes, counts = np.unique(labels, return_counts=True)
    if n_way < 2:
        raise FewShotError(f"{n_way}-way episodes are degenerate (one class scores 100% "
                           "whatever the features): use --n-way 2 or more (cdfsl: 5)")
    if len(classes) < 2:
        found = (f"a single class, {_class_name(int(classes[0]), class_names)}" if len(classes)
                 else "no images")
        raise FewShotError(f"the data has {found}: episodes need two classes or more; use data "
                           "with more classes")
    if len(classes) < n_way:
        raise FewShotError(f"{n_way}-way episodes need {n_way} classes; the data has "
                           f"{len(classes)}. Use --n-way {len(classes)} or less.")
    need = k + n_query
    short = [(int(c), int(n)) for c, n in zip(classes, counts) if n < need]
    if short:
        listed = ", ".join(f"{_class_name(c, class_names)} has {n}" for c, n in short[:10])
        raise FewShotError(
            f"{k}-shot episodes with {n_query} queries need {need} images per class, but "
            f"{listed}. Lower --n-query or k (max k here: {int(counts.min()) - n_query}).")
    by_class = {int(c): np.flatnonzero(labels == c) for c in classes}
    rng = np.random.default_rng(seed)
    sup = np.empty((episodes, n_way * k), np.int64)
    qry = np.empty((episodes, n_way * n_query), np.int64)
    cls = np.empty((episodes, n_way), np.int64)
    for e in range(episodes):
        chosen = rng.choice(classes, n_way, replace=False)
        cls[e] = chosen
        for j, c in enumerate(chosen):
            pick = rng.choice(by_class[int(c)], need, replace=False)
            sup[e, j * k:(j + 1) * k] = pick[:k]
            qry[e, j * n_query:(j + 1) * n_query] = pick[k:]
    return Episodes(sup, qry, cls, n_way, k, n_query)


def run_episodes(features, episodes: Episodes, *, weight_decay: float = FEWSHOT_WEIGHT_DECAY,
                 feature_norm: str = "l2", batch: int = 100, device=None,
                 progress: bool = False) -> np.ndarray:
    """Query accuracy (%) of every episode, shape (E,). ``features`` (n, d) of the sampled split."""
    device = torch.device(device or "cpu")
    X = torch.from_numpy(np.array(features, dtype=np.float32))
    if feature_norm == "l2":
        X = l2_normalise(X)
    elif feature_norm != "none":
        raise ValueError(f"episodes support feature norm 'l2' or 'none', got {feature_norm!r}")
    X = X.to(device)
    E, n_way, k, q = len(episodes.support), episodes.n_way, episodes.k, episodes.n_query
    y_sup = torch.arange(n_way, device=device).repeat_interleave(k)
    y_qry = torch.arange(n_way, device=device).repeat_interleave(q)
    accs = np.empty(E, np.float64)
    with cpu_threads(threads_for(device, batch * n_way * (k + q) * X.shape[1] * n_way)):
        _episode_batches(X, episodes, weight_decay, batch, device, y_sup, y_qry, accs, progress)
    return accs


def _episode_batches(X, episodes, weight_decay, batch, device, y_sup, y_qry, accs, progress):
    from tinyvit_backbone.progress import progress_bar

    E, n_way, k = len(episodes.support), episodes.n_way, episodes.k
    for start in progress_bar(range(0, E, batch), desc=f"{n_way}-way {k}-shot episodes",
                              enabled=bool(progress), leave=False):
        stop = min(E, start + batch)
        sup = torch.from_numpy(episodes.support[start:stop]).to(device)
        qry = torch.from_numpy(episodes.query[start:stop]).to(device)
        head = fit_lbfgs(X[sup], y_sup.expand(stop - start, -1), weight_decay,
                         num_classes=n_way, device=device)
        pred = head.logits(X[qry]).argmax(-1)
        accs[start:stop] = (100.0 * (pred == y_qry).float().mean(-1)).cpu().numpy()


def confidence95(accs: np.ndarray) -> float:
    """cdfsl's 95% interval half-width: 1.96 * std / sqrt(n) (population std)."""
    accs = np.asarray(accs, np.float64)
    return float(1.96 * accs.std() / math.sqrt(len(accs))) if len(accs) else float("nan")
