"""The probe's --backend switch: ONNX Runtime gives the torch path's features; clear refusals."""
import json
import sys

import numpy as np
import pytest

from linear_probe.__main__ import main as probe_main
from linear_probe.backbones import ModelSpec
from linear_probe.extract import extract_splits

pytest.importorskip("onnxruntime")

TINY = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
        "window_sizes": [7, 4, 2, 1]}


def _features(tmp_path, backend, batch_size=64):
    spec = ModelSpec("tinyvit", arch=TINY)
    entry = extract_splits(spec, "digits", ["test"], cache_dir=tmp_path / backend, device="cpu",
                           progress=False, backend=backend, batch_size=batch_size).splits["test"]
    return np.array(entry.features), entry.meta


def test_onnxruntime_backend_gives_the_torch_features(tmp_path):
    torch_feats, torch_meta = _features(tmp_path, "torch")
    ort_feats, ort_meta = _features(tmp_path, "onnxruntime")
    assert torch_meta["backend"] == "torch" and ort_meta["backend"] == "onnxruntime"
    assert ort_feats.shape == torch_feats.shape == (540, 64)
    np.testing.assert_allclose(ort_feats, torch_feats, rtol=0, atol=1e-4)
    # auto: the threaded fast path at every batch size
    assert _features(tmp_path / "auto", "auto")[1]["backend"] == "torch"


def test_cli_backend_flag(tmp_path, capsys):
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(TINY))
    argv = ["extract", "--arch", str(arch), "--dataset", "digits", "--split", "test",
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--no-progress"]
    assert probe_main(argv + ["--backend", "onnxruntime"]) == 0
    assert "digits/test: 540 x 64 features, extracted" in capsys.readouterr().err
    assert probe_main(argv + ["--backend", "onnxruntime", "--model", "timm:resnet18"]) == 2
    assert "TinyViT models only" in capsys.readouterr().err


def test_missing_onnxruntime_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    argv = ["extract", "--arch", "5m", "--dataset", "digits", "--split", "test",
            "--cache-dir", str(tmp_path), "--device", "cpu", "--no-progress"]
    assert probe_main(argv + ["--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert "error: ONNX Runtime is not installed" in err
    assert "pip install 'tinyvit-transfer[onnx]'" in err
    assert not list(tmp_path.rglob("meta.json"))  # refused before anything was extracted
