"""Progressive model shrinking: a constrained local search from a seed architecture.

For each target (a set of limits, listed from the largest model to the smallest) the search runs
one or more rounds. A round's limits lie between the current model's figures and the target's,
each round shrinking the parameter / MAC limit by at most ``round_ratio`` (the last round of a
target uses the target's limits). In a round:

1. candidates are generated around the current model: each follows a random sequence of
   contraction steps (:mod:`.space`) from the current model until its parameters and MACs meet
   the round's limits, so it lands just under them;
2. a candidate is dropped when the last step overshot (its parameters, or MACs, fall more
   than ``band`` below the limit: it would give away capacity the limit allows) or when its
   measured throughput is under the round's floor;
3. the rest are ranked by the proxy score (ties: fewer MACs first); the best is the next
   round's current model, and after the last round of a target it is that target's result.

Every random draw comes from one ``random.Random(seed)`` and the proxies are seeded, so a fixed
seed reproduces the search (given the same throughput figures: measured throughput varies from
run to run, which matters only when a throughput floor decides a candidate's fate).
"""
from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from ..progress import progress_bar
from .measure import CostModel
from .proxy import ProxyScore
from .space import SearchSpace, apply_move, arch_key, canonical, changes, random_move

log = logging.getLogger(__name__)

Proxy = Callable[[dict], ProxyScore]


class SearchError(RuntimeError):
    """The search cannot go on (no candidate met a round's limits)."""


def format_si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


@dataclass(frozen=True)
class Constraints:
    """Limits a model must meet: at most ``max_params`` parameters and ``max_macs`` MACs, at
    least ``min_throughput`` images/s. A parameter or MAC limit is required (it is what the
    contraction steps aim at); the throughput floor filters what they reach."""

    max_params: float | None = None
    max_macs: float | None = None
    min_throughput: float | None = None
    name: str | None = None

    def __post_init__(self):
        if self.max_params is None and self.max_macs is None:
            raise ValueError("a target needs max_params or max_macs (or both)")
        for what, v in (("max_params", self.max_params), ("max_macs", self.max_macs),
                        ("min_throughput", self.min_throughput)):
            if v is not None and not v > 0:
                raise ValueError(f"target {what} must be > 0, got {v}")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return format_si(self.max_params) if self.max_params is not None else format_si(self.max_macs, "MACs")

    def describe(self) -> str:
        parts = []
        if self.max_params is not None:
            parts.append(f"params <= {format_si(self.max_params)}")
        if self.max_macs is not None:
            parts.append(f"MACs <= {format_si(self.max_macs)}")
        if self.min_throughput is not None:
            parts.append(f"img/s >= {self.min_throughput:.4g}")
        return ", ".join(parts)


@dataclass
class Candidate:
    """One architecture evaluated in one round, with its figures and fate.

    ``status``: 'chosen' (a target's result), 'next seed' (best of an intermediate round),
    'kept' (met the limits, ranked lower) or 'dropped' (see ``reason``).
    ``path``: the net changes from the round's current model (e.g. ``s2.dim 384->320``).
    """

    round: int
    target: str
    key: str
    arch: dict
    path: list[str]
    params: int
    macs: int | None = None
    throughput: float | None = None
    score: float | None = None
    proxy: dict = field(default_factory=dict)
    status: str = "dropped"
    reason: str = ""


@dataclass
class RoundInfo:
    round: int
    target: str
    limits: dict
    start_key: str
    paths_tried: int
    paths_stuck: int
    best_key: str


@dataclass
class SearchResult:
    """Everything the search did: its settings, rounds, every candidate and each target's
    chosen architecture (``chosen``: target label -> index into ``candidates``)."""

    settings: dict
    rounds: list[RoundInfo]
    candidates: list[Candidate]
    chosen: dict[str, int]

    def chosen_candidates(self) -> dict[str, Candidate]:
        return {label: self.candidates[i] for label, i in self.chosen.items()}

    def to_dict(self) -> dict:
        return dict(settings=copy.deepcopy(self.settings), rounds=[asdict(r) for r in self.rounds],
                    candidates=[asdict(c) for c in self.candidates], chosen=self.chosen)

    @classmethod
    def from_dict(cls, d: dict) -> SearchResult:
        return cls(settings=d["settings"], rounds=[RoundInfo(**r) for r in d["rounds"]],
                   candidates=[Candidate(**c) for c in d["candidates"]], chosen=d["chosen"])


def check_targets(targets: Sequence[Constraints]) -> None:
    """Targets must get stricter one after the other (the search only contracts)."""
    if not targets:
        raise ValueError("no targets: give at least one parameter or MAC limit")
    for prev, cur in zip(targets, targets[1:]):
        looser = [
            what for what, a, b, stricter in (
                ("max_params", prev.max_params, cur.max_params, lambda a, b: b <= a),
                ("max_macs", prev.max_macs, cur.max_macs, lambda a, b: b <= a),
                ("min_throughput", prev.min_throughput, cur.min_throughput, lambda a, b: b >= a))
            if a is not None and (b is None or not stricter(a, b))]
        if looser:
            raise ValueError(f"target {cur.label!r} is not at least as strict as {prev.label!r} "
                             f"in {looser}: list targets from the largest model to the smallest, "
                             "each keeping the previous one's kinds of limits")


def round_limits(current: dict, target: Constraints, round_ratio: float) -> list[Constraints]:
    """The limits of each round that leads from the ``current`` figures (params, macs,
    throughput) to ``target``: geometric steps, none shrinking a limit by more than
    ``round_ratio`` (throughput floors rise by at most 1 / ``round_ratio``); the last round's
    limits are the target's."""
    if not 0.0 < round_ratio < 1.0:
        raise ValueError(f"round_ratio must be in (0, 1), got {round_ratio}")
    pairs = [("max_params", current.get("params"), target.max_params, False),
             ("max_macs", current.get("macs"), target.max_macs, False),
             ("min_throughput", current.get("throughput"), target.min_throughput, True)]
    n = 1
    for _, now, goal, floor in pairs:
        if now is None or goal is None:
            continue
        ratio = now / goal if floor else goal / now
        if ratio < 1.0:
            n = max(n, math.ceil(math.log(ratio) / math.log(round_ratio) - 1e-9))
    rounds = [
        Constraints(**{what: (None if goal is None else goal if now is None
                              else _step(now, goal, floor, k / n))
                       for what, now, goal, floor in pairs}, name=target.label)
        for k in range(1, n)]
    rounds.append(Constraints(max_params=target.max_params, max_macs=target.max_macs,
                              min_throughput=target.min_throughput, name=target.label))
    return rounds


def _step(now: float, goal: float, floor: bool, fraction: float) -> float:
    """``fraction`` of the geometric way from ``now`` to ``goal``; a limit the model already
    meets is the goal itself."""
    if (goal <= now) if floor else (goal >= now):
        return goal
    return now * (goal / now) ** fraction


def _fits(arch: dict, limits: Constraints, cost: CostModel) -> bool:
    """Whether ``arch`` meets ``limits``; the cheap counts first, throughput only when they
    pass (it has to be measured)."""
    if limits.max_params is not None and cost.params(arch) > limits.max_params:
        return False
    if limits.max_macs is not None and cost.macs(arch) > limits.max_macs:
        return False
    return limits.min_throughput is None or cost.throughput(arch) >= limits.min_throughput


def propose(base: dict, limits: Constraints, space: SearchSpace, cost: CostModel,
            rng: random.Random, count: int, max_tries: int) -> tuple[list[tuple[dict, list[str]]], int, int]:
    """Up to ``count`` distinct architectures around ``base`` that meet ``limits``: ``base``
    itself when it already does, else the ends of random contraction paths from it.

    Returns ``([(arch, path), ...], paths_tried, paths_stuck)``; a path is stuck when no step is
    left before the limits are met.
    """
    if _fits(base, limits, cost):
        return [(base, [])], 0, 0
    found: dict[str, tuple[dict, list[str]]] = {}
    tried = stuck = 0
    while len(found) < count and tried < max_tries:
        tried += 1
        arch, switched = base, frozenset()
        while not _fits(arch, limits, cost):
            # A window switch leaves the size almost unchanged: switching a stage back and
            # forth would only lengthen the walk, so each stage switches at most once.
            move = random_move(arch, space, rng, exclude=switched)
            if move is None:
                arch = None
                break
            if move.factor == "window_sizes":
                switched = switched | {(move.factor, move.stage)}
            arch = apply_move(arch, move)
        if arch is None:
            stuck += 1
            continue
        found.setdefault(arch_key(arch), (arch, changes(base, arch)))
    return list(found.values()), tried, stuck


def _under_band(cand: Candidate, limits: Constraints, band: float) -> str:
    """Why ``cand`` lies too far inside the round's limits ('' when it does not): when it is not
    within ``band`` of any limit, the last contraction step overshot."""
    figures, near = [], []
    if limits.max_params is not None:
        figures.append(f"params {format_si(cand.params)}")
        near.append(cand.params >= (1.0 - band) * limits.max_params)
    if limits.max_macs is not None and cand.macs is not None:
        figures.append(f"MACs {format_si(cand.macs)}")
        near.append(cand.macs >= (1.0 - band) * limits.max_macs)
    if limits.min_throughput is not None and cand.throughput is not None:
        figures.append(f"{cand.throughput:.4g} img/s")
        near.append(cand.throughput * (1.0 - band) <= limits.min_throughput)
    if any(near):
        return ""
    return (f"{', '.join(figures)}: more than {band:.0%} inside every limit "
            f"({limits.describe()}); the last step overshot")


def _run_round(current: dict, limits: Constraints, info: RoundInfo, desc: str, *,
               space: SearchSpace, cost: CostModel, proxy: Proxy,
               scores: dict[str, ProxyScore], rng: random.Random, count: int, band: float,
               progress: bool) -> list[Candidate]:
    """Generate, measure, filter and rank one round's candidates; fills ``info`` (paths, best
    key) and returns the candidates, ranked ones with status 'kept' (the best's reason starts
    'best of N'). ``scores`` caches proxy scores by architecture key across rounds."""
    found, info.paths_tried, info.paths_stuck = propose(current, limits, space, cost, rng,
                                                        count, max_tries=4 * count)
    log.info("%s: %d candidates from %s", desc, len(found), info.start_key)
    batch = []
    for arch, path in progress_bar(found, desc=desc, enabled=progress, leave=False):
        cand = Candidate(round=info.round, target=info.target, key=arch_key(arch), arch=arch,
                         path=path, params=cost.params(arch), macs=cost.macs(arch),
                         throughput=cost.throughput(arch))
        # The round's current model (no path) is never "overshot": it met the limits as is.
        cand.reason = _under_band(cand, limits, band) if path else ""
        if not cand.reason:
            if cand.key not in scores:
                scores[cand.key] = proxy(arch)
            cand.score = scores[cand.key].score
            cand.proxy = dict(scores[cand.key].details)
        batch.append(cand)
    ranked = sorted((c for c in batch if not c.reason),
                    key=lambda c: (-c.score, c.macs or 0, c.params, c.key))
    if not ranked:
        why = "; ".join(f"{c.key}: {c.reason}" for c in batch) or "no path met the limits"
        raise SearchError(
            f"{desc}: no candidate met the limits from {info.start_key} ({info.paths_tried} "
            f"paths tried, {info.paths_stuck} ran out of steps; {why}). Loosen the target, "
            "widen --band, allow more --factors or lower --min-dim / --min-depth")
    for rank, cand in enumerate(ranked, start=1):
        cand.status = "kept"
        cand.reason = f"rank {rank}/{len(ranked)} by proxy score"
    ranked[0].reason = f"best of {len(ranked)}"
    info.best_key = ranked[0].key
    log.info("%s: best %s (params %s, MACs %s, score %.4g)", desc, info.best_key,
             format_si(ranked[0].params), format_si(ranked[0].macs), ranked[0].score)
    return batch


def search(
    seed_arch: str | dict,
    targets: Sequence[Constraints],
    *,
    cost: CostModel,
    proxy: Proxy,
    space: SearchSpace | None = None,
    candidates_per_round: int = 6,
    round_ratio: float = 0.7,
    band: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    proxy_settings: dict | None = None,
) -> SearchResult:
    """Shrink ``seed_arch`` progressively to meet each of ``targets`` in turn.

    Args:
        seed_arch: the starting architecture ('21m', a dict or a JSON path).
        targets: limits, from the largest model to the smallest.
        cost: params / MACs counter and throughput measurement (:class:`.CostModel`).
        proxy: ``arch -> ProxyScore``, higher is better (:mod:`.proxy`).
        space: allowed contraction steps.
        candidates_per_round: distinct candidates generated per round (at most).
        round_ratio: the most a round may shrink a limit (0.7: to 70% of the current figure).
        band: candidates more than this fraction below the round's size limit are dropped.
        seed: seeds the candidate generation.
        progress: show a progress bar per round.
        proxy_settings: recorded in the result (default: ``proxy.settings()`` when it exists).
    """
    space = space or SearchSpace()
    targets = list(targets)
    check_targets(targets)
    if candidates_per_round < 1:
        raise ValueError(f"candidates_per_round must be >= 1, got {candidates_per_round}")
    if not 0.0 <= band < 1.0:
        raise ValueError(f"band must be in [0, 1), got {band}")
    if any(t.min_throughput is not None for t in targets) and cost.throughput_fn is None:
        raise ValueError("a throughput floor was given but no throughput measurement: pass "
                         "CostModel(throughput_fn=DeviceThroughput(...))")
    if proxy_settings is None:
        proxy_settings = proxy.settings() if hasattr(proxy, "settings") else {"proxy": repr(proxy)}

    current = canonical(seed_arch)
    rng = random.Random(seed)
    scores: dict[str, ProxyScore] = {}
    candidates: list[Candidate] = []
    rounds: list[RoundInfo] = []
    chosen: dict[str, int] = {}
    for target in targets:
        figures = dict(params=cost.params(current), macs=cost.macs(current),
                       throughput=(cost.throughput(current)
                                   if target.min_throughput is not None else None))
        plan = round_limits(figures, target, round_ratio)
        for i, limits in enumerate(plan):
            last = i == len(plan) - 1
            info = RoundInfo(round=len(rounds) + 1, target=target.label, limits=asdict(limits),
                             start_key=arch_key(current), paths_tried=0, paths_stuck=0,
                             best_key="")
            desc = (f"round {info.round} [{target.label} {i + 1}/{len(plan)}] "
                    f"{limits.describe()}")
            batch = _run_round(current, limits, info, desc, space=space, cost=cost, proxy=proxy,
                               scores=scores, rng=rng, count=candidates_per_round, band=band,
                               progress=progress)
            best = next(c for c in batch if c.key == info.best_key and c.status != "dropped")
            best.status = "chosen" if last else "next seed"
            best.reason = (f"{best.reason}: result for target {target.label}" if last
                           else f"{best.reason}: seeds round {info.round + 1}")
            if last:
                chosen[target.label] = len(candidates) + batch.index(best)
            candidates.extend(batch)
            rounds.append(info)
            current = best.arch

    settings = dict(seed_arch=seed_arch if isinstance(seed_arch, str) else "dict",
                    seed_arch_spec=canonical(seed_arch),
                    targets=[dict(asdict(t), label=t.label) for t in targets],
                    space=asdict(space),
                    candidates_per_round=candidates_per_round, round_ratio=round_ratio,
                    band=band, seed=seed, cost=cost.settings(), proxy=proxy_settings)
    return SearchResult(settings=settings, rounds=rounds, candidates=candidates, chosen=chosen)
