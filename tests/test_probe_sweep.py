"""Weight-decay search: the binary grid search, the val split carved from train, leakage."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

from linear_probe.sweep import (
    CLIP_C_GRID,
    WD_GRID,
    balanced_val_split,
    binary_grid_search,
    sweep_weight_decay,
)


def test_binary_search_finds_the_peak_with_few_evaluations():
    calls = []

    def f(i):
        calls.append(i)
        return -float((i - 37) ** 2)

    best, scores = binary_grid_search(f, 97)
    assert best == 37
    assert calls[:7] == [96, 80, 64, 48, 32, 16, 0]  # coarse points, strong -> weak first
    assert len(calls) == len(set(calls)) <= 7 + 2 * 4
    assert set(scores) == set(calls)


def test_binary_search_ties_go_to_stronger_regularisation():
    best, _ = binary_grid_search(lambda i: 1.0, 97)
    assert best == 96
    best, _ = binary_grid_search(lambda i: 1.0 if i in (48, 64) else 0.0, 97)
    assert best == 64


def test_balanced_val_split_is_disjoint_stratified_and_seeded():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    fit, val = balanced_val_split(labels, 0.2, seed=3)
    assert np.intersect1d(fit, val).size == 0
    assert np.array_equal(np.union1d(fit, val), np.arange(len(labels)))
    counts = {c: int((labels[val] == c).sum()) for c in range(4)}
    assert counts == {0: 2, 1: 1, 2: 0, 3: 1}  # 20% rounded, >= 1, singleton kept for training
    assert all((labels[fit] == c).any() for c in range(4))
    again = balanced_val_split(labels, 0.2, seed=3)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(balanced_val_split(np.repeat(np.arange(3), 50), 0.2, seed=4)[1],
                              balanced_val_split(np.repeat(np.arange(3), 50), 0.2, seed=5)[1])
    fit_m, val_m = balanced_val_split(np.zeros((50, 3)), 0.2, seed=0, multilabel=True)
    assert len(val_m) == 10 and np.intersect1d(fit_m, val_m).size == 0


@pytest.fixture(scope="module")
def pixels():
    X, y = load_digits(return_X_y=True)
    return X[:600].astype(np.float32), y[:600]


def test_sweep_on_clip_grid_reports_C_and_refits_on_all_rows(pixels):
    X, y = pixels
    res = sweep_weight_decay(X, y, grid="clip")
    assert res.C in CLIP_C_GRID
    # the final fit keeps the chosen C on all train rows: lambda = 1 / (C n_train)
    assert res.weight_decay == pytest.approx(1.0 / (res.C * len(y)))
    assert set(res.val_scores) <= set(CLIP_C_GRID) and res.fits == len(res.val_scores) + 1
    assert res.split_sizes["train"] + res.split_sizes["val"] == len(y)
    assert res.val_score == max(res.val_scores.values())


def test_sweep_on_wd_grid_and_fixed_weight_decay(pixels):
    X, y = pixels
    res = sweep_weight_decay(X, y, grid="wd")
    assert res.C is None and res.weight_decay in WD_GRID
    fixed = sweep_weight_decay(X, y, fixed_weight_decay=0.05)
    assert fixed.weight_decay == 0.05 and fixed.fits == 1 and not fixed.val_scores
    assert fixed.split_sizes == {"train": len(y), "val": 0}
    with pytest.raises(ValueError, match="weight-decay grid"):
        sweep_weight_decay(X, y, grid="bogus")
    with pytest.raises(ValueError, match="no validation rows"):
        sweep_weight_decay(X[:3], np.array([0, 1, 2]))


def test_sweep_sees_only_the_rows_it_is_given(pixels, monkeypatch):
    """Rows passed to the solver are train rows; the val rows are train rows too, disjoint."""
    import linear_probe.sweep as sweep
    X, y = pixels
    seen = []
    real = sweep.fit_lbfgs

    def spy(Xf, yf, *args, **kwargs):
        seen.append(np.asarray(Xf).shape[0])
        return real(Xf, yf, *args, **kwargs)

    monkeypatch.setattr(sweep, "fit_lbfgs", spy)
    res = sweep.sweep_weight_decay(X, y)
    fit, val = balanced_val_split(y)
    assert set(seen[:-1]) == {len(fit)} and seen[-1] == len(y)
    assert res.split_sizes == {"train": len(fit), "val": len(val)}
