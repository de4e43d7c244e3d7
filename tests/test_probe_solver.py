"""The L-BFGS logistic-regression solver: parity with scikit-learn and its variants."""
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from linear_probe.device import cpu_threads
from linear_probe.metrics import mean_average_precision_11point
from linear_probe.solver import (
    C_to_weight_decay,
    LinearHead,
    _loss_and_grad,
    fit_lbfgs,
    l2_normalise,
    standardisation,
    weight_decay_to_C,
)


@pytest.fixture(scope="module")
def digits():
    """Real digits as 64-d pixel features, stratified 70/30 split."""
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X.astype(np.float32), y, test_size=0.3,
                                          stratify=y, random_state=0)
    return Xtr, ytr, Xte, yte


def _acc(scores, y) -> float:
    return 100.0 * float((np.asarray(scores).argmax(1) == y).mean())


@pytest.mark.parametrize("C", [1e-3, 1e-1, 10.0])
def test_parity_with_sklearn_at_equivalent_C(digits, C):
    Xtr, ytr, Xte, yte = digits
    mu, sd = standardisation(Xtr)
    Xs, Xtes = (Xtr - mu.numpy()) / sd.numpy(), (Xte - mu.numpy()) / sd.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = LogisticRegression(C=C, max_iter=1000).fit(Xs, ytr)
    wd = C_to_weight_decay(C, len(ytr))
    head = fit_lbfgs(torch.from_numpy(Xtr), torch.from_numpy(ytr), wd, shift=mu, scale=sd)
    ours = head.logits(torch.from_numpy(Xte)).numpy()
    assert abs(_acc(ours, yte) - 100 * sk.score(Xtes, yte)) <= 0.5
    # same objective, minimised as well (both stop at max |gradient| <= 1e-4, so on the flat
    # weakly-regularised valleys the two stopping points differ by a few per mille)
    sk_w = torch.from_numpy(sk.coef_.T.astype(np.float32)).contiguous()
    sk_b = torch.from_numpy(sk.intercept_.astype(np.float32))
    sk_loss, _, _ = _loss_and_grad(sk_w, sk_b, torch.from_numpy(Xs.astype(np.float32)),
                                   torch.from_numpy(ytr), wd, False, None, None, 10**6)
    assert head.loss <= float(sk_loss) * 1.02 + 1e-4
    assert head.converged


def test_C_weight_decay_round_trip():
    assert C_to_weight_decay(weight_decay_to_C(3e-4, 1000), 1000) == pytest.approx(3e-4)


def test_standardisation_fold_equals_explicit_standardisation(digits):
    Xtr, ytr, Xte, _ = digits
    mu, sd = standardisation(Xtr)
    folded = fit_lbfgs(torch.from_numpy(Xtr), torch.from_numpy(ytr), 1e-3, shift=mu, scale=sd)
    explicit = fit_lbfgs((torch.from_numpy(Xtr) - mu) / sd, torch.from_numpy(ytr), 1e-3)
    torch.testing.assert_close(folded.weight, explicit.weight, atol=2e-3, rtol=1e-2)
    a = folded.logits(torch.from_numpy(Xte))
    b = explicit.logits((torch.from_numpy(Xte) - mu) / sd)
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.995


def test_chunked_memmap_equals_in_memory(digits, tmp_path):
    Xtr, ytr, Xte, _ = digits
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=Xtr.shape)
    mm[:] = Xtr
    mm.flush()
    ro = np.load(tmp_path / "f.npy", mmap_mode="r")
    mu, sd = standardisation(ro, chunk_rows=100)
    mu2, sd2 = standardisation(Xtr)
    torch.testing.assert_close(mu, mu2)
    torch.testing.assert_close(sd, sd2)
    streamed = fit_lbfgs(ro, ytr, 1e-2, shift=mu, scale=sd, chunk_rows=100)
    whole = fit_lbfgs(torch.from_numpy(Xtr), torch.from_numpy(ytr), 1e-2, shift=mu, scale=sd)
    torch.testing.assert_close(streamed.weight, whole.weight, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(streamed.logits(np.asarray(Xte), chunk_rows=50),
                               whole.logits(torch.from_numpy(Xte)), atol=1e-3, rtol=1e-3)


def test_batched_problems_equal_separate_fits():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(3, 30, 16, generator=gen)
    y = torch.randint(0, 4, (3, 30), generator=gen)
    y[:, :4] = torch.arange(4)  # every class present in every problem
    batched = fit_lbfgs(X, y, 1e-1, num_classes=4, tol=1e-6)
    for e in range(3):
        single = fit_lbfgs(X[e], y[e], 1e-1, num_classes=4, tol=1e-6)
        w, b = single.effective()  # raw-feature coordinates, like the batched head's
        torch.testing.assert_close(batched.weight[e], w, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(batched.bias[e], b, atol=1e-3, rtol=1e-3)
    assert batched.logits(X).shape == (3, 30, 4)


def test_multilabel_matches_sklearn_one_vs_rest():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 12)).astype(np.float32)
    W = rng.standard_normal((12, 4))
    Y = (X @ W + rng.standard_normal((400, 4)) > 0.5).astype(np.int8)
    Y[::17, 2] = -1  # ignored entries ("difficult")
    Xtr, Ytr, Xte, Yte = X[:300], Y[:300], X[300:], Y[300:]
    C = 0.5
    head = fit_lbfgs(Xtr, Ytr, C_to_weight_decay(C, 300), multilabel=True)
    ours = mean_average_precision_11point(head.logits(Xte).numpy(), Yte)
    sk_scores = np.stack([
        LogisticRegression(C=C, max_iter=1000).fit(Xtr[Ytr[:, c] >= 0], Ytr[Ytr[:, c] >= 0, c])
        .decision_function(Xte) for c in range(4)], 1)
    # per-class problems with masked rows: sklearn's mean runs over each class's own rows, ours
    # over all rows, so only the masked class's effective C differs slightly
    assert abs(ours - mean_average_precision_11point(sk_scores, Yte)) <= 0.5


def test_centring_is_an_exact_reparametrisation():
    """Raw features with a large common offset: same function as the explicitly centred fit."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(60, 8, generator=gen) + 20.0
    y = torch.arange(60) % 3
    auto = fit_lbfgs(X, y, 1e-2, tol=1e-6)
    mean = X.mean(0)
    manual = fit_lbfgs(X - mean, y, 1e-2, shift=torch.zeros(8), scale=torch.ones(8), tol=1e-6)
    torch.testing.assert_close(auto.logits(X), manual.logits(X - mean), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(auto.weight, manual.weight, atol=1e-3, rtol=1e-3)


def test_warm_start_needs_fewer_iterations(digits):
    Xtr, ytr, _, _ = digits
    X, y = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    mu, sd = standardisation(Xtr)
    prev = fit_lbfgs(X, y, 1e-2, shift=mu, scale=sd)
    cold = fit_lbfgs(X, y, 5e-3, shift=mu, scale=sd)
    warm = fit_lbfgs(X, y, 5e-3, shift=mu, scale=sd, init=prev)
    assert warm.n_iter < cold.n_iter
    with pytest.raises(ValueError, match="warm start has weight shape"):
        fit_lbfgs(X, y, 1e-2, init=LinearHead(torch.zeros(3, 10), torch.zeros(10)))


def test_bad_labels_and_threads():
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        fit_lbfgs(torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0]), 1e-2, num_classes=3)
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_l2_normalise_unit_rms():
    x = l2_normalise(torch.randn(7, 32) * 5)
    torch.testing.assert_close(x.pow(2).mean(1), torch.ones(7))
