"""Few-shot sampling (k-shot, cdfsl episodes) and the batched episode evaluation."""
import math

import numpy as np
import pytest

from linear_probe.fewshot import (
    FewShotError,
    confidence95,
    run_episodes,
    sample_episodes,
    sample_kshot,
)

LABELS = np.repeat(np.arange(6), 30)
np.random.default_rng(0).shuffle(LABELS)


def test_kshot_is_deterministic_balanced_and_nested():
    a = sample_kshot(LABELS, 5, seed=1)
    assert np.array_equal(a, sample_kshot(LABELS, 5, seed=1))
    assert not np.array_equal(a, sample_kshot(LABELS, 5, seed=2))
    assert np.bincount(LABELS[a]).tolist() == [5] * 6
    assert len(np.unique(a)) == 30
    ten = sample_kshot(LABELS, 10, seed=1)
    assert set(a) <= set(ten)  # the 5 shots are the first 5 of the 10


def test_kshot_class_draws_do_not_depend_on_other_classes():
    shots = sample_kshot(LABELS, 4, seed=0)
    fewer_classes = np.where(LABELS == 5, 4, LABELS)  # merge class 5 into 4
    other = sample_kshot(fewer_classes, 4, seed=0)
    keep = LABELS[shots] < 4
    assert np.array_equal(shots[keep], other[fewer_classes[other] < 4])


def test_kshot_error_names_the_short_classes():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 10 + [3] * 1)
    with pytest.raises(FewShotError) as err:
        sample_kshot(labels, 5, seed=0, class_names=["zero", "one", "two", "three"])
    msg = str(err.value)
    assert "5-shot" in msg and "'one' (1) has 2" in msg and "'three' (3) has 1" in msg
    assert "k <= 1" in msg and "'two'" not in msg
    with pytest.raises(FewShotError, match="multi-label"):
        sample_kshot(np.zeros((5, 3)), 1, seed=0)


def test_episodes_are_deterministic_and_disjoint():
    eps = sample_episodes(LABELS, n_way=5, k=3, n_query=4, episodes=20, seed=7)
    again = sample_episodes(LABELS, n_way=5, k=3, n_query=4, episodes=20, seed=7)
    assert np.array_equal(eps.support, again.support) and np.array_equal(eps.query, again.query)
    assert eps.support.shape == (20, 15) and eps.query.shape == (20, 20)
    for e in range(20):
        assert len(set(eps.classes[e])) == 5
        assert not set(eps.support[e]) & set(eps.query[e])
        sup_cls = LABELS[eps.support[e]].reshape(5, 3)
        qry_cls = LABELS[eps.query[e]].reshape(5, 4)
        assert (sup_cls == eps.classes[e][:, None]).all() and (qry_cls == eps.classes[e][:, None]).all()
    other = sample_episodes(LABELS, n_way=5, k=3, n_query=4, episodes=20, seed=8)
    assert not np.array_equal(eps.support, other.support)


def test_episodes_errors():
    with pytest.raises(FewShotError, match="need 7 classes"):
        sample_episodes(LABELS, n_way=7, k=1, n_query=1)
    with pytest.raises(FewShotError, match=r"need 45 images per class.*max k here: 15"):
        sample_episodes(LABELS, n_way=5, k=30, n_query=15)


def test_run_episodes_on_separable_features_and_ci():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 16)) * 5
    feats = (centres[LABELS] + rng.standard_normal((len(LABELS), 16))).astype(np.float32)
    eps = sample_episodes(LABELS, n_way=5, k=2, n_query=5, episodes=30, seed=0)
    accs = run_episodes(feats, eps, batch=7)
    assert accs.shape == (30,) and accs.min() == 100.0
    noise = rng.standard_normal((len(LABELS), 16)).astype(np.float32)
    chance = run_episodes(noise, eps)
    assert chance.mean() < 60.0
    values = np.array([50.0, 60.0, 70.0])
    assert confidence95(values) == pytest.approx(1.96 * values.std() / math.sqrt(3))
