"""Slow end-to-end runs: the demo-scale suite with TinyViT-5M widths, and the SGD recipe."""
import json

import numpy as np
import pytest

from linear_probe import FeatureSettings, ModelSpec, linear_probe, run_suite
from linear_probe.results import read_jsonl

ARCH_5M_32PX = {"embed_dims": [64, 128, 160, 320], "depths": [2, 2, 6, 2],
                "num_heads": [2, 4, 5, 10], "window_sizes": [7, 4, 2, 1]}


@pytest.mark.slow
def test_demo_suite_on_digits(tmp_path):
    arch = tmp_path / "student.json"
    arch.write_text(json.dumps(ARCH_5M_32PX))
    out = tmp_path / "results.jsonl"
    spec = ModelSpec("tinyvit", arch=str(arch))
    records = run_suite(spec, "digits", output=str(out), cache_dir=str(tmp_path / "cache"),
                        progress=False)
    tasks = [r["task"] for r in records]
    assert tasks == ["linear_probe"] + ["kshot"] * 9 + ["episodes"] * 2
    assert len(read_jsonl(out)) == 12
    probe = records[0]
    assert probe["metrics"]["top1"] > 70.0 and probe["feature_dim"] == 320
    kshot = {k: np.mean([r["metrics"]["top1"] for r in records if r["k"] == k and r["task"] == "kshot"])
             for k in (1, 5, 10)}
    assert kshot[1] < kshot[5] < kshot[10] < probe["metrics"]["top1"]
    episodes = [r for r in records if r["task"] == "episodes"]
    assert [r["k"] for r in episodes] == [5, 20] and all(r["episodes"] == 100 for r in episodes)
    assert episodes[0]["metrics"]["top1"] < episodes[1]["metrics"]["top1"]
    # a rerun reads the cached features and reproduces every number
    again = run_suite(spec, "digits", cache_dir=str(tmp_path / "cache"), progress=False)
    assert all(r["cache_hit"] for r in again)
    assert [r["metrics"] for r in again] == [r["metrics"] for r in records]


@pytest.mark.slow
def test_sgd_recipe_matches_lbfgs_probe(tmp_path):
    arch = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
            "window_sizes": [7, 4, 2, 1]}
    settings = FeatureSettings(cache_dir=str(tmp_path), progress=False)
    spec = ModelSpec("tinyvit", arch=arch)
    lbfgs = linear_probe(spec, "digits", settings=settings, solver="lbfgs")
    sgd = linear_probe(spec, "digits", settings=settings, solver="sgd", sgd_batch_size=128)
    assert sgd["solver"] == "sgd" and sgd["sgd"]["schedule"] == "cosine"
    assert sgd["split_sizes"] == {"train": 1257, "val": 0, "test": 540}
    # unregularised SGD (MoCo v3 uses no weight decay) vs the swept L-BFGS head
    assert sgd["metrics"]["top1"] >= lbfgs["metrics"]["top1"] - 6.0
