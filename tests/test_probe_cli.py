"""End to end on the embedded digits: CLI commands, result records, leakage, the suite API."""
import json
import threading

import numpy as np
import pytest

from bench.common import subprocess_env
from linear_probe.__main__ import main
from linear_probe.results import REQUIRED_FIELDS, append_jsonl, make_record, read_jsonl

TINY = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
        "window_sizes": [7, 4, 2, 1]}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """An arch file and a feature cache holding digits train / test features (extracted once)."""
    root = tmp_path_factory.mktemp("probe")
    arch = root / "student.json"
    arch.write_text(json.dumps(TINY))
    cache = root / "cache"
    assert main(["extract", "--arch", str(arch), "--dataset", "digits", "--cache-dir", str(cache),
                 "--no-progress"]) == 0
    return {"arch": str(arch), "cache": str(cache), "root": root}


def _args(env, command, *extra, output=None):
    out = output or str(env["root"] / f"{command}.jsonl")
    return [command, "--arch", env["arch"], "--dataset", "digits", "--cache-dir", env["cache"],
            "--output", out, "--no-progress", *extra], out


def test_sweep_writes_complete_records_and_appends(env, capsys):
    args, out = _args(env, "sweep")
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)  # one JSON result per run on stdout
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "tinyvit-student digits [clip-lbfgs] linear probe: top1" in captured.err
    assert "appended 1 record" in captured.err
    first, second = read_jsonl(out)
    assert result["command"] == "sweep" and result["records"][0]["metrics"] == first["metrics"]
    assert json.loads(captured.out)["output"] == out
    for field in REQUIRED_FIELDS:
        assert field in first, field
    assert first["task"] == "linear_probe" and first["model"] == "tinyvit-student"
    assert first["protocol"] == "clip-lbfgs"
    assert first["arch"] == env["arch"] and first["weights"] is None
    assert first["weights_digest"] == "random" and first["metric"] == "top1"
    assert first["split_sizes"]["train"] + first["split_sizes"]["val"] == 1257
    assert first["split_sizes"]["test"] == 540
    assert set(first["metrics"]) == {"top1", "top5", "mean_per_class"}
    assert 50.0 < first["metrics"]["top1"] <= 100.0  # random features still separate digits
    assert first["weight_decay"] == pytest.approx(1 / (first["C"] * 1257))
    assert first["cache_hit"] and second["cache_hit"]
    assert first["metrics"] == second["metrics"]  # deterministic
    assert set(first["timings"]) >= {"extract_s", "sweep_s", "fit_s", "eval_s", "total_s"}


def test_linear_probe_fits_train_rows_only(env, monkeypatch):
    """No test leakage: the search and final fit receive exactly the train split's rows."""
    import linear_probe.evaluate as evaluate
    from linear_probe.settings import FeatureSettings
    seen = {}
    real = evaluate.sweep_weight_decay

    def spy(X, y, **kwargs):
        seen["X"], seen["y"] = np.array(X), np.array(y)
        return real(X, y, **kwargs)

    monkeypatch.setattr(evaluate, "sweep_weight_decay", spy)
    settings = FeatureSettings(cache_dir=env["cache"], progress=False)
    from linear_probe.backbones import ModelSpec
    spec = ModelSpec("tinyvit", arch=env["arch"])
    evaluate.linear_probe(spec, "digits", settings=settings)
    ex = settings.extract(spec, "digits", ["train", "test"])
    np.testing.assert_array_equal(seen["X"], ex.splits["train"].features)
    test_rows = {r.tobytes() for r in ex.splits["test"].features}
    assert not any(r.tobytes() in test_rows for r in seen["X"])


def test_kshot_records_and_val_from_shots_only(env, monkeypatch, capsys):
    import linear_probe.evaluate as evaluate
    from linear_probe.fewshot import sample_kshot
    captured = []
    real = evaluate.sweep_weight_decay

    def spy(X, y, **kwargs):
        captured.append((np.array(X), np.array(y), kwargs.get("fixed_weight_decay")))
        return real(X, y, **kwargs)

    monkeypatch.setattr(evaluate, "sweep_weight_decay", spy)
    args, out = _args(env, "kshot", "--k", "1", "3", "--seeds", "0", "1")
    assert main(args) == 0
    records = read_jsonl(out)
    assert [(r["k"], r["seed"]) for r in records] == [(1, 0), (1, 1), (3, 0), (3, 1)]
    assert all(r["task"] == "kshot" and r["split_sizes"]["test"] == 540 for r in records)
    one, three = records[0], records[2]
    assert one["split_sizes"] == {"train": 10, "val": 0, "test": 540} and one["C"] is None
    assert three["split_sizes"] == {"train": 20, "val": 10, "test": 540}
    assert "3-shot: top1" in capsys.readouterr().err
    assert all(r["protocol"] == "clip-lbfgs" for r in records)
    # what was fitted is exactly the sampled shots of the train split
    from linear_probe.backbones import ModelSpec
    from linear_probe.settings import FeatureSettings
    train = FeatureSettings(cache_dir=env["cache"], progress=False).extract(
        ModelSpec("tinyvit", arch=env["arch"]), "digits", ["train"]).splits["train"]
    shots = sample_kshot(train.labels, 3, 1)
    X, y, fixed = captured[3]
    np.testing.assert_array_equal(X, train.features[shots])
    assert fixed is None and captured[0][2] is not None  # 1-shot: fixed weight decay


def test_episodes_record(env):
    args, out = _args(env, "episodes", "--protocol", "lbfgs-fast", "--k", "5", "--episodes",
                      "20", "--n-way", "5", "--pretraining", "in21k-distill")
    assert main(args) == 0
    (record,) = read_jsonl(out)
    assert record["pretraining"] == "in21k-distill"
    assert record["task"] == "episodes" and record["n_way"] == 5 and record["episodes"] == 20
    assert record["protocol"] == "lbfgs-fast"
    assert record["split_sizes"] == {"train": 25, "val": 0, "test": 75} and record["split"] == "test"
    assert 0 < record["ci95"] < 20 and 20.0 <= record["metrics"]["top1"] <= 100.0


def test_cli_errors_are_messages_not_tracebacks(env, capsys):
    args, out = _args(env, "kshot", "--k", "200", output=str(env["root"] / "errors.jsonl"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 200-shot sampling needs 200 training images per class")
    assert "Traceback" not in err and not (env["root"] / "errors.jsonl").exists()
    assert main(["sweep", "--model", "resnet", "--dataset", "digits"]) == 2
    assert "--model must be 'tinyvit' or 'timm:<name>'" in capsys.readouterr().err
    assert main(["sweep", "--weights", "nope.pth", "--dataset", "digits"]) == 2
    assert "--weights 'nope.pth': no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--dataset", "digits", "--pretraining", "in22k"])
    assert exit_.value.code == 2 and "invalid choice: 'in22k'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--pretraining must be one of in1k, in1k-distill"):
        from linear_probe.backbones import ModelSpec
        ModelSpec("tinyvit", arch="5m", pretraining="imagenet")
    assert main(["sweep", "--dataset", "digits", "--device", "cuda"]) == 2
    assert "--device cuda asks for CUDA, but torch sees no GPU" in capsys.readouterr().err


def test_run_suite_api(env, tmp_path):
    from linear_probe import ModelSpec, run_suite
    out = tmp_path / "suite.jsonl"
    with pytest.warns(UserWarning, match=r"skipping episodes with K = \[50\]"):
        records = run_suite(ModelSpec("tinyvit", arch=env["arch"], label="student"), "digits",
                            output=str(out), cache_dir=env["cache"], ks=(1, 2), seeds=(0,),
                            episode_ks=(5, 50), n_episodes=10, progress=False)
    assert [r["task"] for r in records] == ["linear_probe", "kshot", "kshot", "episodes"]
    assert len(read_jsonl(out)) == 4 and all(r["model"] == "student" for r in records)
    assert all(r["cache_hit"] for r in records)


def test_records_validate_and_append_atomically(tmp_path):
    base = dict(task="kshot", protocol="clip-lbfgs", model="m", dataset="d", metric="top1",
                metrics={"top1": 1.0}, split_sizes={}, timings={})
    with pytest.raises(ValueError, match="task must be one of"):
        make_record(**{**base, "task": "probe"})
    with pytest.raises(ValueError, match="protocol must be one of"):
        make_record(**{**base, "protocol": None})
    with pytest.raises(ValueError, match="protocol 'cdfsl' does not do task 'kshot'"):
        make_record(**{**base, "protocol": "cdfsl"})
    with pytest.raises(ValueError, match="headline metric 'map11' missing"):
        make_record(**{**base, "metric": "map11"})
    out = tmp_path / "sub" / "r.jsonl"
    threads = [threading.Thread(target=append_jsonl, args=(out, [make_record(**base, seed=i)] * 3))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = read_jsonl(out)
    assert len(records) == 24 and sorted({r["seed"] for r in records}) == list(range(8))
    out.write_text(out.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"r\.jsonl:25: not a JSON record"):
        read_jsonl(out)


def test_suite_passes_every_feature_flag_on(env, monkeypatch, capsys):
    """suite used to accept --feature-layer, --batch-size, --workers and --amp and drop them."""
    import linear_probe.settings as settings
    seen = []
    real = settings.extract_splits

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(settings, "extract_splits", spy)
    args, out = _args(env, "suite", "--feature-layer", "stage2", "--batch-size", "16",
                      "--workers", "0", "--amp", "--dataset", "digits", "embedded")
    assert main(args) == 0
    records = json.loads(capsys.readouterr().out)["records"]
    assert len(records) == 12 and {r["feature_layer"] for r in records} == {"stage2"}
    assert {r["dataset"] for r in records} == {"digits"}  # the group's digits counted once
    assert {r["protocol"] for r in records} == {"clip-lbfgs", "lbfgs-fast"}
    assert all(kw["feature_layer"] == "stage2" and kw["batch_size"] == 16 and kw["workers"] == 0
               and kw["amp"] is True for kw in seen)


HELP_PROBE = """
import sys, types, os, runpy, io, contextlib
light_core = sys.argv[1] == "light-core"
if light_core:  # the core package without what its __init__ imports (mmengine registration)
    package = types.ModuleType("tinyvit_backbone")
    package.__path__ = [os.path.join(os.getcwd(), "tinyvit_backbone")]
    sys.modules["tinyvit_backbone"] = package
sys.argv = ["linear_probe", "--help"]
with contextlib.redirect_stdout(io.StringIO()) as text:
    try:
        runpy.run_module("linear_probe", run_name="__main__")
    except SystemExit:
        pass
assert "mocov3" in text.getvalue()
print(" ".join(sorted(m for m in ("mmdet", "mmseg", "mmengine", "timm", "torch") if m in sys.modules)))
"""


def _fresh_python(code: str, *args: str) -> str:
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=repo, capture_output=True,
                          text=True, timeout=120, env=subprocess_env(repo))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _help_imports(mode: str) -> set[str]:
    return set(_fresh_python(HELP_PROBE, mode).split())


def test_help_imports_nothing_heavy_of_its_own():
    """The CLI's parser needs no torch, timm, mmdet or mmseg: only the core's CLI helpers."""
    assert _help_imports("light-core") == set()


def test_help_does_not_load_the_detection_stacks():
    core = _fresh_python("import sys, tinyvit_backbone.cli; "
                         "print('mmdet' in sys.modules or 'mmseg' in sys.modules)")
    if core.strip() == "True":
        pytest.skip("tinyvit_backbone/__init__.py still registers into mmdet and mmseg on import")
    assert not _help_imports("as-installed") & {"mmdet", "mmseg"}
