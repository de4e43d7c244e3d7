"""Slow end-to-end run: the demo-scale suite with TinyViT-5M widths."""
import json

import numpy as np
import pytest

from linear_probe import ModelSpec, run_suite
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
