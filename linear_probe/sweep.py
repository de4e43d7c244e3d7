"""Weight-decay search on a validation split carved from train, then a final fit on train + val.

The search is the CLIP paper's parametric binary search: evaluate 7 coarse points spread over
a 97-point log grid, then repeatedly evaluate the two grid neighbours at half the previous step
around the best point until the step is one grid cell (about 15 fits instead of 97). Ties go
to the stronger regularisation. Grids (:data:`GRIDS`, ``--wd-grid``):

* ``clip`` (default): the CLIP paper's ``C`` in ``logspace(-6, 6, 97)`` (8 steps per decade),
  i.e. lambda = 1 / (C n) for the n rows being fitted (see :mod:`linear_probe.solver`); the
  final fit on train + val keeps the chosen C, exactly as the CLIP protocol does with
  scikit-learn. Same search space as that protocol, so accuracies compare solver to solver.
* ``wd``: CLIP_benchmark's lambda in ``logspace(-6, 2, 97)``, independent of n.

Fits are warm-started from the solution at the nearest point already fitted, and the coarse
points are visited from strong to weak regularisation (a regularisation path), which is where
most of the speed over the from-scratch scikit-learn sweep comes from.

No test data enters here: callers pass the train split only, the validation rows are carved
from it (:func:`balanced_val_split`), and the final fit uses all train rows.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .metrics import score
from .solver import LinearHead, fit_lbfgs, l2_normalise, standardisation

WD_GRID = np.logspace(-6, 2, 97)
CLIP_C_GRID = np.logspace(-6, 6, 97)
GRIDS = {"clip": ("C", CLIP_C_GRID), "wd": ("lambda", WD_GRID)}
COARSE_POINTS = 7
VAL_FRACTION = 0.2


def balanced_val_split(labels, fraction: float = VAL_FRACTION, seed: int = 0,
                       multilabel: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices ``0..n-1`` into (fit, val), sorted.

    Single-label: per class, ``max(1, round(fraction * n_c))`` rows go to val when the class has
    at least 2 rows (so every class keeps a training row), none otherwise. Multi-label: a
    seeded random ``fraction`` of rows (classes overlap, so no per-class quota exists).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n = len(labels)
    if multilabel:
        perm = rng.permutation(n)
        n_val = max(1, int(round(fraction * n)))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            continue
        n_val = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
        val.append(rng.choice(idx, n_val, replace=False))
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    fit = np.setdiff1d(np.arange(n), val, assume_unique=True)
    return fit, val


def validation_loss(logits: torch.Tensor, labels, multilabel: bool = False) -> float:
    """Mean cross-entropy (multi-label: masked binary cross-entropy summed over classes)."""
    import torch.nn.functional as F
    labels = torch.as_tensor(np.asarray(labels))
    if multilabel:
        mask = (labels >= 0).float()
        bce = F.binary_cross_entropy_with_logits(logits.float(), labels.clamp(min=0).float(),
                                                 reduction="none")
        return float((bce * mask).sum() / len(labels))
    return float(F.cross_entropy(logits.float(), labels.long()))


def binary_grid_search(evaluate: Callable[[int], float], n_points: int,
                       coarse: int = COARSE_POINTS) -> tuple[int, dict[int, float]]:
    """Maximise ``evaluate(index)`` over grid indices ``0..n_points-1`` (CLIP's search).

    Scores may be tuples (compared lexicographically: a metric, then a tie-breaker). The
    coarse indices are evaluated from the highest down: on an increasing lambda grid that is
    strong to weak regularisation, the order in which warm starts help most. Remaining ties go
    to the larger index. Returns the best index and the score of every evaluated index.
    """
    if n_points < 1:
        raise ValueError("empty grid")
    coarse_idx = sorted({int(round(i)) for i in np.linspace(0, n_points - 1, min(coarse, n_points))},
                        reverse=True)
    scores: dict[int, float] = {}

    def best() -> int:
        # highest score; ties -> larger index (= stronger regularisation on an increasing grid)
        return max(scores, key=lambda i: (scores[i], i))

    for i in coarse_idx:
        scores[i] = evaluate(i)
    step = max(1, (n_points - 1) // max(1, len(coarse_idx) - 1) // 2)
    while True:
        centre = best()
        for j in (centre + step, centre - step):
            if 0 <= j < n_points and j not in scores:
                scores[j] = evaluate(j)
        if step == 1:
            break
        step //= 2
    return best(), scores


@dataclass
class SweepResult:
    weight_decay: float
    head: LinearHead
    val_score: float | None  # None when the weight decay was fixed (no search)
    val_scores: dict[float, float] = field(default_factory=dict)  # grid value (C or lambda) -> val
    grid: str | None = None
    C: float | None = None  # the chosen C on the clip grid
    fits: int = 0
    sweep_s: float = 0.0
    final_fit_s: float = 0.0
    split_sizes: dict[str, int] = field(default_factory=dict)


def _subset(X, idx: np.ndarray):
    if isinstance(X, torch.Tensor):
        return X[torch.from_numpy(idx).to(X.device)]
    return X[idx]  # NumPy fancy indexing reads only these rows of a memmap


def _normalisation(X, mode: str):
    """(features to fit on, shift, scale) for ``mode`` in standardize / l2 / none."""
    if mode == "standardize":
        shift, scale = standardisation(X)
        return X, shift, scale
    if mode == "l2":
        t = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.array(X, dtype=np.float32))
        return l2_normalise(t), None, None
    if mode == "none":
        return X, None, None
    raise ValueError(f"feature norm must be 'standardize', 'l2' or 'none', got {mode!r}")


def apply_normalisation(X, mode: str):
    """The per-sample part of ``mode`` for evaluation rows (standardisation lives in the head)."""
    if mode == "l2":
        t = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.array(X, dtype=np.float32))
        return l2_normalise(t)
    return X


def sweep_weight_decay(
    X,
    y,
    *,
    metric: str = "top1",
    multilabel: bool = False,
    num_classes: int | None = None,
    grid: str = "clip",
    feature_norm: str = "standardize",
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
    device=None,
    max_iter: int = 1000,
    tol: float = 1e-4,
    progress: bool = False,
    fixed_weight_decay: float | None = None,
) -> SweepResult:
    """Search lambda on a val split carved from (X, y), then refit on all of (X, y).

    ``X`` (n, d) and ``y`` are the train split only. ``grid`` names one of :data:`GRIDS`. With
    ``fixed_weight_decay`` the search is skipped and that lambda is used (required when the
    split leaves no val row, e.g. 1-shot). ``feature_norm``: 'standardize' (mean / std of the
    rows being fitted, folded into the head), 'l2' (unit-RMS rows, no sample statistics) or
    'none'.
    """
    from tinyvit_backbone.progress import progress_bar

    if grid not in GRIDS:
        raise ValueError(f"weight-decay grid must be one of {sorted(GRIDS)}, got {grid!r}")
    kind, values = GRIDS[grid]
    y = np.asarray(y)
    if num_classes is None and not multilabel:
        num_classes = int(y.max()) + 1
    fit_idx, val_idx = balanced_val_split(y, val_fraction, seed, multilabel)
    do_search = fixed_weight_decay is None and len(val_idx) > 0 and len(fit_idx) > 0
    t0 = time.perf_counter()
    val_scores: dict[float, float] = {}
    fits = 0
    best_head = None
    chosen_C = None
    if do_search:
        # lambdas in increasing order (index up = stronger), as binary_grid_search expects
        points = values[::-1] if kind == "C" else values
        lambdas = 1.0 / (points * len(fit_idx)) if kind == "C" else points
        X_fit, shift, scale = _normalisation(_subset(X, fit_idx), feature_norm)
        X_val = apply_normalisation(_subset(X, val_idx), feature_norm)
        y_fit, y_val = y[fit_idx], y[val_idx]
        heads: dict[int, LinearHead] = {}
        bar = progress_bar(total=len(points), desc="weight-decay sweep", enabled=bool(progress),
                           leave=False)

        def evaluate(i: int) -> float:
            nonlocal fits
            nearest = min(heads, key=lambda j: abs(j - i)) if heads else None
            head = fit_lbfgs(X_fit, y_fit, float(lambdas[i]), num_classes=num_classes,
                             multilabel=multilabel, init=heads.get(nearest), shift=shift,
                             scale=scale, max_iter=max_iter, tol=tol, device=device)
            heads[i] = head
            fits += 1
            logits = head.logits(X_val).cpu()
            s = score(logits, y_val, metric, multilabel)
            bar.update(1)
            bar.set_postfix(wd=f"{lambdas[i]:.1e}", val=f"{s:.2f}")
            # ties in the metric (frequent on small vals: 10 val images score in steps of 10%)
            # are broken by the val loss, not blindly towards the strongest regularisation
            return s, -validation_loss(logits, y_val, multilabel)

        best_i, scores = binary_grid_search(evaluate, len(points))
        bar.close()
        if kind == "C":
            chosen_C = float(points[best_i])
            wd = 1.0 / (chosen_C * len(y))  # the same C on all train rows, as in CLIP
        else:
            wd = float(lambdas[best_i])
        val_scores = {float(points[i]): s[0] for i, s in sorted(scores.items())}
        best_head = heads[best_i]
        best_score = scores[best_i][0]
    else:
        if fixed_weight_decay is None:
            raise ValueError("no validation rows could be carved from the training data (every "
                             "class has a single sample); pass a fixed weight decay")
        wd, best_score = float(fixed_weight_decay), None  # no search: no val score
    sweep_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    X_all, shift, scale = _normalisation(X, feature_norm)
    # warm start from the chosen fit (converted to the refit's standardisation by fit_lbfgs)
    head = fit_lbfgs(X_all, y, wd, num_classes=num_classes, multilabel=multilabel, init=best_head,
                     shift=shift, scale=scale, max_iter=max_iter, tol=tol, device=device)
    fits += 1
    return SweepResult(weight_decay=wd, head=head, val_score=best_score, val_scores=val_scores,
                       grid=grid if do_search else None, C=chosen_C, fits=fits, sweep_s=sweep_s, final_fit_s=time.perf_counter() - t1,
                       split_sizes={"train": int(len(fit_idx) if do_search else len(y)),
                                    "val": int(len(val_idx) if do_search else 0)})
