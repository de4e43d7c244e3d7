"""Progressive model shrinking: search space, counters, proxies, the search and its files."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch

from tinyvit_backbone import TinyViT, build_timm_tinyvit
from tinyvit_backbone.scaling import (
    Constraints,
    CostModel,
    DeviceThroughput,
    ProxyScore,
    SearchError,
    SearchSpace,
    SnipProxy,
    TrainingProxy,
    arch_key,
    canonical,
    count_macs,
    count_params,
    load_result,
    search,
    select_device,
    write_outputs,
)
from tinyvit_backbone.scaling.proxy import proxy_arch, stage_map_sizes
from tinyvit_backbone.scaling.report import to_csv, to_markdown
from tinyvit_backbone.scaling.search import check_targets, round_limits
from tinyvit_backbone.scaling.space import apply_move, changes, moves, random_move

# A small seed keeps counting fast (~0.4 s per MAC count on one thread); 7x7 windows keep
# timm's per-window bias-index setup cheap.
SMALL = dict(embed_dims=[64, 96, 160, 224], depths=[1, 2, 3, 1], window_sizes=[7, 7, 7, 7])


def stub_throughput(arch: dict) -> float:
    """Deterministic stand-in for a measurement: narrower, shallower models are faster."""
    return 1e6 / sum(d * n for d, n in zip(arch["embed_dims"], arch["depths"]))


class StubProxy:
    """Scores by a fixed function of the architecture; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, arch: dict) -> ProxyScore:
        self.calls += 1
        return ProxyScore(score=sum(arch["depths"]) * 1000 + sum(arch["embed_dims"]),
                          details={})


# ---------------------------------------------------------------------------- space
def test_canonical_sets_heads_from_dims_and_rejects_odd_dims():
    arch = canonical("21m")
    assert arch["num_heads"] == [3, 6, 12, 18]
    assert set(arch) == {"embed_dims", "depths", "num_heads", "window_sizes"}
    with pytest.raises(ValueError, match="multiples of the head dim 32"):
        canonical(dict(embed_dims=[64, 80, 160, 320], depths=[2, 2, 6, 2]))
    with pytest.raises(ValueError, match="head dim 32"):
        canonical(dict(embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                       num_heads=[1, 2, 5, 10]))


def test_moves_respect_the_space():
    arch = canonical(dict(embed_dims=[32, 64, 64, 96], depths=[1, 2, 1, 1],
                          window_sizes=[7, 7, 14, 7]))
    ms = moves(arch, SearchSpace())
    dim_moves = {(m.stage, m.new) for m in ms if m.factor == "embed_dims"}
    # stage 0 is at min_dim; stage 2 cannot go below stage 1 (monotonic); stage 1 and 3 can
    assert dim_moves == {(1, 32), (3, 64)}
    assert {(m.stage, m.new) for m in ms if m.factor == "depths"} == {(1, 1)}
    windows = [m for m in ms if m.factor == "window_sizes"]
    assert {m.stage for m in windows} == {1, 2, 3}  # never stage 0 (MBConv)
    assert all(m.new in (7, 14) and m.new != m.old for m in windows)
    only_depth = moves(arch, SearchSpace(factors=("depths",)))
    assert {m.factor for m in only_depth} == {"depths"}


def test_apply_move_keeps_heads_and_changes_are_net():
    base = canonical("11m")
    move = next(m for m in moves(base, SearchSpace()) if m.factor == "embed_dims" and m.stage == 3)
    new = apply_move(base, move)
    assert new["embed_dims"][3] == 416 and new["num_heads"][3] == 13
    assert base["embed_dims"][3] == 448  # the input is not modified
    assert changes(base, new) == ["s3.dim 448->416"]


def test_random_move_is_seeded_and_honours_exclusions():
    arch = canonical("21m")
    draws = [str(random_move(arch, SearchSpace(), random.Random(3))) for _ in range(2)]
    assert draws[0] == draws[1]
    exclude = frozenset(("window_sizes", i) for i in range(4))
    for seed in range(20):
        m = random_move(arch, SearchSpace(factors=("window_sizes",)), random.Random(seed), exclude)
        assert m is None


def test_search_space_rejects_bad_settings():
    with pytest.raises(ValueError, match="factors"):
        SearchSpace(factors=("mlp_ratio",))
    with pytest.raises(ValueError, match="multiple of the head dim"):
        SearchSpace(dim_step=16)


# ---------------------------------------------------------------------------- measure
def test_counter_reproduces_official_sizes():
    """The project's counter on timm's classifier (1000 classes, 224px) against the paper's
    5.4M / 11M / 21M parameters and 1.3 / 2.0 / 4.3 GMACs (printed to one decimal)."""
    published = {"5m": (5.4e6, 1.3), "11m": (11e6, 2.0), "21m": (21e6, 4.3)}
    for name, (params, gmacs) in published.items():
        arch = canonical(name)
        p = count_params(arch)
        assert p == sum(t.numel() for t in build_timm_tinyvit(arch, 1000).parameters())
        assert abs(p / params - 1) < 0.02, (name, p)
        assert round(count_macs(arch) / 1e9, 1) == gmacs, name


def test_mac_count_includes_attention():
    """A 14x14 window at stage 2 attends over 196 tokens instead of 49: the same weights, more
    MACs: the fused attention kernel is counted too."""
    seven = canonical(dict(SMALL, window_sizes=[7, 7, 7, 7]))
    fourteen = canonical(dict(SMALL, window_sizes=[7, 7, 14, 7]))
    assert count_macs(fourteen) > count_macs(seven) * 1.01


def test_select_device_on_cpu():
    assert select_device(None).type == "cpu"  # conftest hides GPUs
    assert select_device("auto").type == "cpu"
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no GPU"):
        select_device("cuda")
    with pytest.raises(ValueError, match="not a device name"):
        select_device("tpu9")


def test_device_throughput_measures_a_positive_rate():
    thr = DeviceThroughput(batch_size=2, resolution=32, warmup=0, repeat=1, device="cpu")
    assert thr(canonical(SMALL)) > 0
    assert thr.settings()["device"] == "cpu"
    with pytest.raises(ValueError, match="batch_size"):
        DeviceThroughput(batch_size=0)


def test_cost_model_caches_and_uses_the_injected_throughput():
    calls = []

    def fn(arch):
        calls.append(arch_key(arch))
        return 123.0

    cost = CostModel(throughput_fn=fn)
    arch = canonical(SMALL)
    assert cost.throughput(arch) == cost.throughput(dict(arch)) == 123.0
    assert len(calls) == 1
    assert CostModel().throughput(arch) is None


# ---------------------------------------------------------------------------- proxies
def test_proxy_clamps_windows_to_stage_maps():
    assert stage_map_sizes(32) == [8, 4, 2, 1]
    assert stage_map_sizes(224) == [56, 28, 14, 7]
    assert proxy_arch(canonical("5m"), 32)["window_sizes"] == [7, 4, 2, 1]
    assert proxy_arch(canonical("5m"), 224)["window_sizes"] == [7, 7, 14, 7]


def test_training_proxy_is_deterministic_and_learns():
    arch = canonical(dict(embed_dims=[32, 64, 64, 96], depths=[1, 1, 1, 1]))
    proxy = TrainingProxy(steps=8, batch_size=16, lr=2e-3, seed=1, bn_images=128)
    a, b = proxy(arch), proxy(arch)
    assert a.score == b.score and a.details["holdout_loss"] == b.details["holdout_loss"]
    assert 0.0 <= a.score <= 100.0
    assert a.score > 10.0  # above chance after 8 steps on the digits


def test_snip_proxy_is_deterministic_and_grows_with_width():
    proxy = SnipProxy(batch_size=16)
    narrow = canonical(dict(embed_dims=[32, 64, 64, 96], depths=[1, 1, 1, 1]))
    wide = canonical(dict(embed_dims=[64, 128, 128, 192], depths=[1, 1, 1, 1]))
    assert proxy(narrow).score == proxy(narrow).score > 0
    assert proxy(wide).score > proxy(narrow).score


# ---------------------------------------------------------------------------- search
def test_round_limits_schedule():
    rounds = round_limits(dict(params=21.2e6, macs=4.3e9), Constraints(max_params=11e6), 0.7)
    assert len(rounds) == 2
    assert rounds[0].max_params == pytest.approx((21.2e6 * 11e6) ** 0.5)
    assert rounds[-1].max_params == 11e6 and rounds[-1].max_macs is None
    # a limit the model already meets: one round at the target's limits
    assert [r.max_params for r in round_limits(dict(params=5e6), Constraints(max_params=6e6),
                                               0.7)] == [6e6]
    # throughput floors rise geometrically too
    up = round_limits(dict(params=5e6, throughput=100.0),
                      Constraints(max_params=5e6, min_throughput=300.0), 0.7)
    assert len(up) == 4 and up[0].min_throughput == pytest.approx(100 * 3 ** 0.25)
    with pytest.raises(ValueError, match="round_ratio"):
        round_limits(dict(params=1), Constraints(max_params=1), 1.5)


def test_targets_must_get_stricter():
    check_targets([Constraints(max_params=11e6), Constraints(max_params=5.4e6)])
    with pytest.raises(ValueError, match="largest model to the smallest"):
        check_targets([Constraints(max_params=5.4e6), Constraints(max_params=11e6)])
    with pytest.raises(ValueError, match="max_params or max_macs"):
        Constraints(min_throughput=100.0)


def _small_search(seed=0, proxy=None):
    targets = [Constraints(max_params=1.6e6, min_throughput=1100.0, name="A"),
               Constraints(max_params=1.0e6, max_macs=2.0e8, min_throughput=1300.0, name="B")]
    cost = CostModel(throughput_fn=stub_throughput)
    return search(SMALL, targets, cost=cost, proxy=proxy or StubProxy(), seed=seed,
                  candidates_per_round=3, progress=False), cost


@pytest.fixture(scope="module")
def small_run():
    """One small search (3 rounds, stub throughput and proxy), shared by the tests that only
    read it."""
    proxy = StubProxy()
    result, cost = _small_search(seed=0, proxy=proxy)
    return result, cost, proxy


def _meets(cand, limits: dict) -> bool:
    return ((limits["max_params"] is None or cand.params <= limits["max_params"])
            and (limits["max_macs"] is None or cand.macs <= limits["max_macs"])
            and (limits["min_throughput"] is None or cand.throughput >= limits["min_throughput"]))


def test_search_honours_constraints_and_records_every_candidate(small_run):
    result, cost, _ = small_run
    assert list(result.chosen) == ["A", "B"]
    limits = {r.round: r.limits for r in result.rounds}
    for cand in result.candidates:
        # every candidate is the end of a path, so it meets its round's limits
        assert _meets(cand, limits[cand.round]), cand
        assert cand.reason
        assert (cand.score is None) == (cand.status == "dropped")
    for label, cand in result.chosen_candidates().items():
        target = next(t for t in result.settings["targets"] if t["label"] == label)
        assert _meets(cand, target) and cand.status == "chosen"
        assert cand.params == cost.params(cand.arch)
        assert cand.throughput == stub_throughput(cand.arch)
    # each round's best seeds the next round
    for prev, cur in zip(result.rounds, result.rounds[1:]):
        assert cur.start_key == prev.best_key
    assert result.rounds[0].start_key == arch_key(canonical(SMALL))
    # the best of a round has the highest proxy score among those kept
    for r in result.rounds:
        kept = [c for c in result.candidates if c.round == r.round and c.score is not None]
        assert max(kept, key=lambda c: c.score).key == r.best_key


def test_search_is_reproducible_with_a_fixed_seed(small_run):
    first = small_run[0]
    again, _ = _small_search(seed=0)
    a, b = first.to_dict(), again.to_dict()
    a["settings"].pop("proxy"), b["settings"].pop("proxy")  # the stub's repr holds its address
    assert a == b


def test_search_scores_each_architecture_once(small_run):
    result, _, proxy = small_run
    scored = {c.key for c in result.candidates if c.score is not None}
    assert proxy.calls == len(scored)


def test_search_reports_impossible_limits():
    cost = CostModel(throughput_fn=stub_throughput)
    space = SearchSpace(factors=("depths",))
    with pytest.raises(SearchError, match="no candidate met the limits"):
        search(SMALL, [Constraints(max_params=2e5)], cost=cost, proxy=StubProxy(), space=space,
               candidates_per_round=2, progress=False)
    with pytest.raises(ValueError, match="no throughput measurement"):
        search(SMALL, [Constraints(max_params=1e6, min_throughput=10.0)], cost=CostModel(),
               proxy=StubProxy(), progress=False)


# ---------------------------------------------------------------------------- files
def test_written_architectures_build_and_run(tmp_path, small_run):
    result = small_run[0]
    paths = write_outputs(result, str(tmp_path))
    arch_files = [p for k, p in paths.items() if k.startswith("arch ")]
    assert len(arch_files) == 2
    for path in arch_files:
        with open(path) as f:
            arch = json.load(f)
        assert set(arch) == {"embed_dims", "depths", "num_heads", "window_sizes"}
        backbone = TinyViT(arch=path).eval()
        with torch.no_grad():
            outs = backbone(torch.randn(1, 3, 64, 64))
        assert [o.shape[1] for o in outs] == arch["embed_dims"]
        assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]
        classifier = build_timm_tinyvit(arch, num_classes=10).eval()
        with torch.no_grad():
            assert classifier(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(arch_files[0]).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_record_round_trip_and_tables(tmp_path, small_run):
    result = small_run[0]
    paths = write_outputs(result, str(tmp_path))
    loaded = load_result(paths["record"])
    assert loaded.to_dict() == json.loads(json.dumps(result.to_dict()))
    csv_lines = to_csv(loaded).strip().splitlines()
    assert len(csv_lines) == 1 + len(result.candidates)
    assert csv_lines[0].startswith("round,target,status,reason,key")
    md = to_markdown(loaded)
    assert "## Chosen architectures" in md
    for cand in result.candidates:
        assert cand.key in md
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a search record"):
        load_result(str(bad))
    with pytest.raises(ValueError, match="not found"):
        load_result(str(tmp_path / "missing.json"))
