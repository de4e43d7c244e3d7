"""bench/run_all.py: the report's format and the ratio arithmetic (no timing here)."""
import json
from types import SimpleNamespace

import pytest

from bench.common import Figure, time_call
from bench.run_all import main, run_benchmarks, to_markdown


def test_ratio_speedup_and_goal_follow_the_unit_direction():
    faster = Figure("x", "throughput", 12.0, "img/s", "base", 10.0, goal=1.0)
    assert faster.ratio == pytest.approx(1.2) and faster.speedup == pytest.approx(1.2)
    assert faster.meets_goal is True
    slower_step = Figure("x", "step time", 1.06, "s", "plain step", 1.0, higher_is_better=False,
                         goal=0.95)  # "at most 5% slower"
    assert slower_step.speedup == pytest.approx(1 / 1.06)
    assert slower_step.meets_goal is False
    assert Figure("x", "n", 1.0, "s", "b", 1.0).meets_goal is None
    d = faster.to_dict()
    assert {"ratio", "speedup", "meets_goal", "extra"} <= set(d)


def test_runner_collects_figures_and_reports_failures():
    def load(name):
        if name == "broken":
            return SimpleNamespace(run=lambda quick: 1 / 0)
        return SimpleNamespace(run=lambda quick: [
            Figure(name, "a", 4.0, "img/s", "base", 2.0, goal=1.0, extra={"quick": quick})])

    report = run_benchmarks(["good", "broken", "other"], quick=True, load=load)
    assert [f["bench"] for f in report["figures"]] == ["good", "other"]
    assert report["figures"][0]["speedup"] == 2.0 and report["figures"][0]["extra"] == {"quick": True}
    assert "ZeroDivisionError" in report["failures"]["broken"]
    assert {"torch", "cpu_count", "torch_threads", "timm"} <= set(report["machine"])
    md = to_markdown(report)
    assert "| good | a | 4 img/s | base | 2 | 2.000x | ≥ 1.0x ✓ |" in md
    assert "## Failed" in md and "### broken" in md
    json.dumps(report)  # serialisable as is


def test_unknown_benchmark_name_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["--only", "no_such_bench"])
    assert "unknown benchmark" in capsys.readouterr().err


def test_time_call_runs_until_enough_samples():
    calls = []
    seconds = time_call(lambda: calls.append(1), warmup=2, repeat=3)
    assert len(calls) == 5 and seconds >= 0


def test_paired_timing_alternates_which_side_goes_first():
    import torch

    from bench.bench_backbone import _paired

    calls = []
    a_s, b_s, quartiles = _paired(lambda: calls.append("a"), lambda: calls.append("b"), 4,
                                  torch.device("cpu"))
    # one warm-up call each, then pairs ab, ba, ab, ba: drift falls on both sides alike
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert a_s >= 0 and b_s >= 0 and len(quartiles) == 3
