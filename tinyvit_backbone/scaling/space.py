"""The search space of progressive model shrinking: architectures and their contraction steps.

An architecture is the dict the backbone takes, ``{"embed_dims": [4], "depths": [4],
"num_heads": [4], "window_sizes": [4]}``. As in the paper, embedding dims move in multiples of
the head dim (32) and ``num_heads = dim / 32``; MLP ratio and MBConv expansion stay 4 (timm's
defaults), so they are not part of the dict. Stage 0 is MBConv: its window size is unused.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..backbone import HEAD_DIM, resolve_arch

FACTORS = ("embed_dims", "depths", "window_sizes")
ARCH_KEYS = ("embed_dims", "depths", "num_heads", "window_sizes")


@dataclass(frozen=True)
class Move:
    """One contraction step: ``factor`` of ``stage`` goes from ``old`` to ``new``."""

    factor: str
    stage: int
    old: int
    new: int

    def __str__(self) -> str:
        short = {"embed_dims": "dim", "depths": "depth", "window_sizes": "window"}[self.factor]
        return f"s{self.stage}.{short} {self.old}->{self.new}"


@dataclass(frozen=True)
class SearchSpace:
    """Which steps are allowed from an architecture.

    Args:
        factors: what may change, a subset of ``FACTORS``.
        dim_step: embedding-dim step in channels (the paper: 32, the head dim).
        min_dim: smallest embedding dim of any stage.
        min_depth: smallest number of blocks of any stage.
        window_choices: window sizes a stage may switch between (the paper: 7 or 14).
        monotonic_dims: keep embed dims non-decreasing from stage to stage, as in every
            official variant (a narrower late stage would waste the earlier stages' width).
    """

    factors: tuple[str, ...] = FACTORS
    dim_step: int = HEAD_DIM
    min_dim: int = HEAD_DIM
    min_depth: int = 1
    window_choices: tuple[int, ...] = (7, 14)
    monotonic_dims: bool = True

    def __post_init__(self):
        unknown = set(self.factors) - set(FACTORS)
        if unknown or not self.factors:
            raise ValueError(f"factors must be a non-empty subset of {FACTORS}, got "
                             f"{list(self.factors)}")
        if self.dim_step <= 0 or self.dim_step % HEAD_DIM:
            raise ValueError(f"dim_step must be a positive multiple of the head dim {HEAD_DIM} "
                             f"(heads = dim / {HEAD_DIM}), got {self.dim_step}")
        if self.min_dim < HEAD_DIM or self.min_depth < 1:
            raise ValueError(f"min_dim must be >= {HEAD_DIM} and min_depth >= 1, got "
                             f"{self.min_dim} and {self.min_depth}")


def canonical(arch: str | dict) -> dict[str, list[int]]:
    """The full architecture dict of ``arch`` (a variant name, dict or JSON path), with
    ``num_heads = dim / 32`` as the search keeps it; raises ValueError for dims that are not a
    multiple of 32 (the head count would not be an integer) or other head counts."""
    spec = resolve_arch(arch)
    bad = [d for d in spec["embed_dims"] if d % HEAD_DIM]
    if bad:
        raise ValueError(f"seed architecture: embed dims {spec['embed_dims']} must be multiples "
                         f"of the head dim {HEAD_DIM} (found {bad}); round them to a multiple "
                         f"of {HEAD_DIM}")
    heads = [d // HEAD_DIM for d in spec["embed_dims"]]
    # Stage 0 is MBConv: its head count is unused, whatever the file says.
    if spec["num_heads"][1:] != heads[1:]:
        raise ValueError(f"seed architecture: num_heads {spec['num_heads']} do not give the head "
                         f"dim {HEAD_DIM} the search keeps; use {heads} (dim / {HEAD_DIM}) or "
                         "leave num_heads out")
    spec["num_heads"] = heads
    return {k: [int(v) for v in spec[k]] for k in ARCH_KEYS}


def arch_key(arch: dict) -> str:
    """A short, unique label: ``d64-128-160-320_l2-2-6-2_w7-7-14-7`` (dims, depths, windows)."""
    def join(values):
        return "-".join(str(v) for v in values)
    return (f"d{join(arch['embed_dims'])}_l{join(arch['depths'])}"
            f"_w{join(arch['window_sizes'])}")


def apply_move(arch: dict, move: Move) -> dict[str, list[int]]:
    """A new architecture with ``move`` applied (heads follow the dims)."""
    new = {k: list(v) for k, v in arch.items()}
    new[move.factor][move.stage] = move.new
    new["num_heads"] = [d // HEAD_DIM for d in new["embed_dims"]]
    return new


def moves(arch: dict, space: SearchSpace) -> list[Move]:
    """Every single step the space allows from ``arch``, in a fixed order."""
    out: list[Move] = []
    dims, depths, windows = arch["embed_dims"], arch["depths"], arch["window_sizes"]
    if "embed_dims" in space.factors:
        for i, d in enumerate(dims):
            new = d - space.dim_step
            if new < space.min_dim or (space.monotonic_dims and i > 0 and new < dims[i - 1]):
                continue
            out.append(Move("embed_dims", i, d, new))
    if "depths" in space.factors:
        out += [Move("depths", i, n, n - 1) for i, n in enumerate(depths) if n > space.min_depth]
    if "window_sizes" in space.factors:
        # Stage 0 is MBConv: no attention, no window.
        for i, w in enumerate(windows[1:], start=1):
            out += [Move("window_sizes", i, w, c) for c in space.window_choices if c != w]
    return out


def random_move(arch: dict, space: SearchSpace, rng: random.Random,
                exclude: frozenset[tuple[str, int]] = frozenset()) -> Move | None:
    """A move drawn uniformly by factor, then uniformly within the factor (so that the many
    window switches do not crowd out the few depth steps); moves of an excluded
    ``(factor, stage)`` are not drawn. None when no move is left."""
    by_factor: dict[str, list[Move]] = {}
    for m in moves(arch, space):
        if (m.factor, m.stage) not in exclude:
            by_factor.setdefault(m.factor, []).append(m)
    if not by_factor:
        return None
    factor = rng.choice(sorted(by_factor))
    return rng.choice(by_factor[factor])


def changes(base: dict, arch: dict) -> list[str]:
    """The net difference from ``base`` to ``arch``, one entry per changed stage and factor,
    e.g. ``['s2.dim 384->320', 's3.depth 2->1']``."""
    return [str(Move(f, i, a, b)) for f in FACTORS
            for i, (a, b) in enumerate(zip(base[f], arch[f])) if a != b]
