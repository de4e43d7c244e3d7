"""Classification metrics of the transfer suites, all in percent (0-100).

* ``top1`` / ``top5``: share of samples whose label is among the 1 / 5 highest scores.
* ``mean_per_class``: top-1 recall averaged over the classes present in the targets
  (Kornblith et al. 2019 for FGVC Aircraft, Oxford-IIIT Pets, Caltech-101, Flowers-102).
* ``map11``: PASCAL VOC2007 11-point interpolated average precision, averaged over classes
  (multi-label; the VOC devkit's ``VOCevalcls``).

Inputs are ``scores`` of shape (n, classes) (logits or probabilities: only their order matters)
and either integer ``labels`` of shape (n,) or, for multi-label data, a (n, classes) matrix
with 1 = present, 0 = absent, -1 = ignored (VOC's "difficult only").
"""
from __future__ import annotations

import numpy as np

from .results import METRICS


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def topk_accuracy(scores, labels, k: int = 1) -> float:
    """Percent of rows whose label is among the ``k`` highest scores."""
    scores, labels = _np(scores), _np(labels).astype(np.int64)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(100.0 * (top == labels[:, None]).any(axis=1).mean())


def mean_per_class_accuracy(scores, labels) -> float:
    """Top-1 recall of each class present in ``labels``, averaged over those classes (%)."""
    scores, labels = _np(scores), _np(labels).astype(np.int64)
    pred = scores.argmax(axis=1)
    recalls = [(pred[labels == c] == c).mean() for c in np.unique(labels)]
    return float(100.0 * np.mean(recalls))


def average_precision_11point(scores, targets) -> float:
    """VOC2007 11-point interpolated AP of one class (%).

    ``targets``: 1 positive, 0 negative, -1 ignored. Precision is interpolated as the best
    precision at any recall >= t, for t in 0, 0.1, ..., 1.0.
    """
    scores, targets = _np(scores).astype(np.float64), _np(targets)
    keep = targets >= 0
    scores, positive = scores[keep], targets[keep] > 0
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise ValueError("11-point AP is undefined for a class without positive samples")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positive[order])
    fp = np.cumsum(~positive[order])
    recall = tp / n_pos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        reached = recall >= t
        ap += precision[reached].max() if reached.any() else 0.0
    return float(100.0 * ap / 11.0)


def mean_average_precision_11point(scores, targets) -> float:
    """11-point AP averaged over the classes (columns) that have a positive sample (%)."""
    scores, targets = _np(scores), _np(targets)
    aps = [average_precision_11point(scores[:, c], targets[:, c])
           for c in range(scores.shape[1]) if (targets[:, c] > 0).any()]
    if not aps:
        raise ValueError("mAP is undefined: no class has a positive sample")
    return float(np.mean(aps))


def compute_metrics(scores, labels, multilabel: bool = False) -> dict[str, float]:
    """Every metric that applies: ``map11`` for multi-label targets; otherwise ``top1``,
    ``mean_per_class`` and ``top5`` (only with more than 5 classes, where it is not
    trivially 100)."""
    scores = _np(scores)
    if multilabel:
        return {"map11": mean_average_precision_11point(scores, labels)}
    out = {"top1": topk_accuracy(scores, labels, 1),
           "mean_per_class": mean_per_class_accuracy(scores, labels)}
    if scores.shape[1] > 5:
        out["top5"] = topk_accuracy(scores, labels, 5)
    return out


def score(scores, labels, metric: str, multilabel: bool = False) -> float:
    """The single ``metric`` (one of :data:`METRICS`), used to rank weight decays on val."""
    if metric == "map11":
        return mean_average_precision_11point(scores, labels)
    if multilabel:
        raise ValueError(f"metric {metric!r} needs single-label targets; use 'map11'")
    if metric == "top1":
        return topk_accuracy(scores, labels, 1)
    if metric == "top5":
        return topk_accuracy(scores, labels, 5)
    if metric == "mean_per_class":
        return mean_per_class_accuracy(scores, labels)
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
