"""Soft-label reconstruction and the distillation loss against hand-computed values."""
import math

import pytest
import torch

from tinyvit_backbone.distill.soft_label import (
    rebuild_soft_labels,
    soft_target_cross_entropy,
    sparsify,
)


def test_rebuild_spreads_the_rest_evenly():
    # C = 5, K = 2: classes 3 and 0 hold 0.5 and 0.25; the other three share 0.25.
    target = rebuild_soft_labels(torch.tensor([[3, 0]]), torch.tensor([[0.5, 0.25]]), 5)
    expected = torch.tensor([[0.25, 0.25 / 3, 0.25 / 3, 0.5, 0.25 / 3]])
    torch.testing.assert_close(target, expected)
    assert math.isclose(float(target.sum()), 1.0, rel_tol=1e-6)


def test_rebuild_batch_and_float16_values():
    values = torch.tensor([[0.7, 0.2], [0.4, 0.4]], dtype=torch.float16)
    target = rebuild_soft_labels(torch.tensor([[1, 2], [0, 3]]), values, 4)
    v = values.float()
    rest0, rest1 = (1 - v[0].sum()) / 2, (1 - v[1].sum()) / 2
    expected = torch.stack([torch.stack([rest0, v[0, 0], v[0, 1], rest0]),
                            torch.stack([v[1, 0], rest1, rest1, v[1, 1]])])
    torch.testing.assert_close(target, expected)
    assert target.dtype == torch.float32


def test_rebuild_with_k_equal_to_c_and_rounding_overflow():
    full = rebuild_soft_labels(torch.tensor([[2, 0, 1]]), torch.tensor([[0.6, 0.3, 0.1]]), 3)
    torch.testing.assert_close(full, torch.tensor([[0.3, 0.1, 0.6]]))
    # float16 rounding can push sum(top-K) above 1: the share is clamped at 0, never negative.
    over = rebuild_soft_labels(torch.tensor([[0, 1]]), torch.tensor([[0.6, 0.4004]]), 4)
    assert float(over.min()) == 0.0
    with pytest.raises(ValueError, match="exceeds"):
        rebuild_soft_labels(torch.tensor([[0, 1, 2]]), torch.tensor([[0.3, 0.3, 0.3]]), 2)


def test_weighted_loss_leaves_samples_out():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.5, 0.5]])
    target = torch.tensor([[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]])
    kept = soft_target_cross_entropy(logits[[0, 2]], target[[0, 2]])
    weighted = soft_target_cross_entropy(logits, target, torch.tensor([1.0, 0.0, 1.0]))
    torch.testing.assert_close(weighted, kept)
    # nothing left: 0, and still a graph every process can step through
    zero = soft_target_cross_entropy(logits.requires_grad_(), target, torch.zeros(3))
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_soft_target_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    target = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    # row 0: softmax = (1/4, 3/4) -> -(0.5 ln 1/4 + 0.5 ln 3/4); row 1: -ln 1/2
    expected = (-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)) + math.log(2.0)) / 2
    assert math.isclose(float(soft_target_cross_entropy(logits, target)), expected, rel_tol=1e-6)


def test_sparsify_sorted_top_k_in_float32():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0]], dtype=torch.bfloat16)  # AMP logits
    indices, values = sparsify(logits, 2)
    probs = torch.softmax(logits.float(), -1)[0]
    assert indices.tolist() == [[1, 2]]
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, probs[[1, 2]].unsqueeze(0))
    # the full chain: sparsify -> rebuild keeps the top-K and the total mass
    target = rebuild_soft_labels(indices, values, 4)
    assert math.isclose(float(target.sum()), 1.0, abs_tol=1e-3)
    assert target[0].argmax().item() == 1
