"""The protocols' published hyper-parameters, as data (no torch: the CLI reads its defaults here).

* :class:`MoCoV3Recipe` — MoCo v3's ``main_lincls.py`` (facebookresearch/moco-v3).
* :class:`CdfslRecipe` and the ``CDFSL_*`` episode settings — cdfsl's ``finetune.py``
  (IBM/cdfsl-benchmark).
* :data:`FEWSHOT_WEIGHT_DECAY` — the fixed weight decay of the fast few-shot heads: the
  ``lbfgs-fast`` episodes and the 1-shot probes, where no val can be carved (ours).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class MoCoV3Recipe:
    """``main_lincls.py``'s linear probe (``batch_size`` is global, over all processes)."""

    epochs: int = 90
    batch_size: int = 1024
    base_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    init_std: float = 0.01

    @property
    def lr(self) -> float:
        """The initial learning rate: ``base_lr x batch_size / 256``."""
        return self.base_lr * self.batch_size / 256

    def lr_at(self, epoch: int) -> float:
        """Cosine schedule, set once per epoch."""
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))

    def with_epochs(self, epochs: int) -> MoCoV3Recipe:
        """The same recipe over ``epochs`` epochs (a shortened run; its records say so)."""
        return replace(self, epochs=int(epochs))


@dataclass(frozen=True)
class CdfslRecipe:
    """``finetune.py``'s per-episode training (``epochs`` may be lowered for a demo)."""

    epochs: int = 100
    batch_size: int = 4
    head_lr: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.9
    weight_decay: float = 0.001
    backbone_lr: float = 0.01

    def steps(self, support_size: int) -> int:
        """Optimiser steps per episode."""
        return self.epochs * math.ceil(support_size / self.batch_size)

    def with_epochs(self, epochs: int) -> CdfslRecipe:
        """The same recipe over ``epochs`` epochs per episode (a demo; its records say so)."""
        return replace(self, epochs=int(epochs))


CDFSL_WAYS = 5
CDFSL_QUERIES = 15  # query images per class
CDFSL_EPISODES = 600
CDFSL_SHOTS = (5, 20, 50)

FEWSHOT_WEIGHT_DECAY = 1e-2

MOCOV3_RECIPE = MoCoV3Recipe()
CDFSL_RECIPE = CdfslRecipe()
