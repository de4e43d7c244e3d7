"""Metrics of the transfer suites on hand-made cases (values worked out by hand)."""
import numpy as np
import pytest

from linear_probe.loaders import voc_targets
from linear_probe.metrics import (
    average_precision_11point,
    compute_metrics,
    mean_average_precision_11point,
    mean_per_class_accuracy,
    score,
    topk_accuracy,
)

SCORES = np.array([[0.1, 0.9, 0.0],   # label 1: top-1 right
                   [0.8, 0.1, 0.1],   # label 0: top-1 right
                   [0.2, 0.3, 0.5],   # label 0: wrong, and not in the top 2 either
                   [0.25, 0.4, 0.35]])  # label 2: wrong at top-1, right at top-2
LABELS = np.array([1, 0, 0, 2])


def test_topk_accuracy():
    assert topk_accuracy(SCORES, LABELS, 1) == pytest.approx(50.0)
    assert topk_accuracy(SCORES, LABELS, 2) == pytest.approx(75.0)
    assert topk_accuracy(SCORES, LABELS, 3) == pytest.approx(100.0)


def test_mean_per_class_differs_from_top1_on_imbalanced_classes():
    # predictions 0, 0, 1, 1 for labels 0, 0, 0, 1: class 0 recall 2/3, class 1 recall 1
    scores = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = np.array([0, 0, 0, 1])
    assert topk_accuracy(scores, labels) == pytest.approx(75.0)
    assert mean_per_class_accuracy(scores, labels) == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_11point_ap_by_hand():
    # ranking TP, FP, TP, FP: precision at recall <= 0.5 is 1, at recall 1.0 it is 2/3
    # -> 6 thresholds (0 .. 0.5) at 1, 5 thresholds (0.6 .. 1.0) at 2/3
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    targets = np.array([1, 0, 1, 0])
    expected = 100 * (6 * 1.0 + 5 * (2 / 3)) / 11
    assert average_precision_11point(scores, targets) == pytest.approx(expected)
    # a "difficult" (-1) entry is ignored even when ranked first
    assert average_precision_11point(np.r_[0.95, scores], np.r_[-1, targets]) == pytest.approx(expected)
    assert average_precision_11point(scores, np.array([1, 1, 0, 0])) == pytest.approx(100.0)


def test_map_skips_classes_without_positives_and_needs_one():
    scores = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.3], [0.1, 0.7, 0.4]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert mean_average_precision_11point(scores, targets) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision_11point(scores, np.zeros_like(targets))


def test_compute_metrics_top5_only_beyond_five_classes():
    rng = np.random.default_rng(0)
    five = compute_metrics(rng.random((20, 5)), rng.integers(0, 5, 20))
    assert set(five) == {"top1", "mean_per_class"}
    six = compute_metrics(rng.random((20, 6)), rng.integers(0, 6, 20))
    assert set(six) == {"top1", "top5", "mean_per_class"}
    assert set(compute_metrics(rng.random((4, 3)), np.array([[1, 0, 0]] * 4), multilabel=True)) == {"map11"}
    with pytest.raises(ValueError, match="unknown metric"):
        score(SCORES, LABELS, "top3")


def test_voc_targets_difficult_only_is_ignored():
    ann = {"annotation": {"object": [
        {"name": "dog", "difficult": "0"},
        {"name": "cat", "difficult": "1"},
        {"name": "person", "difficult": "1"},
        {"name": "person", "difficult": "0"},
    ]}}
    t = voc_targets(ann)
    from linear_probe.loaders import VOC_CLASSES
    assert t[VOC_CLASSES.index("dog")] == 1
    assert t[VOC_CLASSES.index("cat")] == -1
    assert t[VOC_CLASSES.index("person")] == 1
    assert (t != 0).sum() == 3
    single = voc_targets({"annotation": {"object": {"name": "car", "difficult": "0"}}})
    assert single[VOC_CLASSES.index("car")] == 1 and single.sum() == 1
