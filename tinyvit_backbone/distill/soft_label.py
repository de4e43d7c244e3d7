"""Sparse soft labels: top-K of the teacher's softmax -> stored record -> full soft label -> loss.

Rebuilding (as the official code does): the K stored probabilities go to their classes; every
other class gets an equal share of the remaining mass, ``(1 - sum(top-K)) / (C - K)``. With K = C
there is nothing left to share. Because the stored rounding (float16, or log8's 8-bit codes) can
make ``sum(top-K)`` exceed 1 a little, the share is clamped at 0 so the target never holds a
negative "probability".

The loss is soft-target cross-entropy, ``mean_b sum_c -t[b, c] * log_softmax(z)[b, c]``, with no
temperature and no ground-truth term (timm's ``SoftTargetCrossEntropy``); samples can be left out
of the mean with a 0/1 weight (bad records skipped on request).
"""
from __future__ import annotations

import torch
from timm.loss import SoftTargetCrossEntropy


def sparsify(logits: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits (B, C) -> top-K (indices (B, K) int64, probabilities (B, K) float32).

    The softmax is taken in float32 whatever the logits' dtype (AMP); indices are sorted by
    decreasing probability. The store's value format rounds the probabilities
    (:meth:`~.record.RecordFormat.roundtrip` gives what it keeps).
    """
    probs = torch.softmax(logits.float(), dim=-1)
    values, indices = probs.topk(topk, dim=-1, largest=True, sorted=True)
    return indices, values


def rebuild_soft_labels(indices: torch.Tensor, values: torch.Tensor,
                        num_classes: int) -> torch.Tensor:
    """Full soft labels (B, C) float32 from top-K ``indices`` (B, K) and ``values`` (B, K)."""
    values = values.float()
    topk = values.shape[-1]
    if topk > num_classes:
        raise ValueError(f"top-K ({topk}) exceeds the number of classes ({num_classes})")
    if topk == num_classes:
        rest = torch.zeros_like(values[:, :1])
    else:
        rest = ((1.0 - values.sum(-1, keepdim=True)) / (num_classes - topk)).clamp_min(0.0)
    target = rest.expand(-1, num_classes).clone()
    return target.scatter_(-1, indices.long(), values)


_soft_ce = SoftTargetCrossEntropy()


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of ``sum_c -target * log_softmax(logits)`` (logits in float32).

    ``weight`` (B,) of 0 / 1 averages over the samples with weight 1 only (0 when there are none,
    so every process still takes its step)."""
    if weight is None:
        return _soft_ce(logits.float(), target)
    per_sample = torch.sum(-target * torch.log_softmax(logits.float(), dim=-1), dim=-1)
    weight = weight.to(per_sample)
    return (per_sample * weight).sum() / weight.sum().clamp_min(1.0)


__all__ = ["rebuild_soft_labels", "soft_target_cross_entropy", "sparsify"]
