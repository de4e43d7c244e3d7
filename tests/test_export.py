"""ONNX export: parity with PyTorch, dynamic batch / height / width, the CLI and its refusals."""
import argparse
import json
import sys

import numpy as np
import pytest
import timm
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tinyvit_backbone import TinyViT  # noqa: E402
from tinyvit_backbone.checkpoint import timm_to_official  # noqa: E402
from tinyvit_backbone.export import (  # noqa: E402
    DEFAULT_OPSET,
    ExportError,
    build_parser,
    export_module,
    main,
)
from tinyvit_backbone.onnx_runtime import OnnxRuntimeError, OnnxRuntimeModel  # noqa: E402

from .test_backbone import _randomise_stats  # noqa: E402

# a 4-stage TinyViT that exports and runs in seconds; windows 5 / 3 / 2 pad at most sizes
SMALL = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
         "window_sizes": [7, 5, 3, 2]}


@pytest.fixture(scope="module")
def backbone_5m(tmp_path_factory):
    """TinyViT-5M with non-trivial norms, saved in the official layout, and its ONNX export
    (from that file, through the backbone's init_cfg) checked at two sizes."""
    from tinyvit_backbone.export import build_backbone

    torch.manual_seed(0)
    source = _randomise_stats(TinyViT(arch="5m")).eval()
    path = tmp_path_factory.mktemp("weights") / "tiny_vit_5m_22kto1k_distill.pth"
    torch.save({"model": timm_to_official({k: v for k, v in source.state_dict().items()})}, path)
    model = build_backbone("5m", str(path))
    exported = export_module(model, [f"stage{i}" for i in range(4)], [4, 8, 16, 32],
                             check_sizes=[(224, 224), (256, 320)])
    return source, exported


def test_5m_backbone_exports_with_parity_at_two_sizes(backbone_5m):
    source, exported = backbone_5m
    assert set(exported.max_abs_diff) == {"224x224", "256x320"}
    assert exported.worst_diff <= 1e-4
    # the weights came through the loader: the graph reproduces the model they were saved from
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = source(x)
    got = OnnxRuntimeModel(exported.onnx)(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_graph_states_opset_and_dynamic_axes(backbone_5m):
    _, exported = backbone_5m
    model = onnx.load_from_string(exported.onnx)
    assert {op.domain or "ai.onnx": op.version for op in model.opset_import}["ai.onnx"] == DEFAULT_OPSET
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    assert dims["images"] == ["batch", 3, "height", "width"]
    assert dims["stage0"] == ["batch", 64, "height/4", "width/4"]
    assert dims["stage3"] == ["batch", 320, "height/32", "width/32"]


def test_one_file_serves_odd_sizes_and_batches(backbone_5m):
    source, exported = backbone_5m
    runtime = OnnxRuntimeModel(exported.onnx)
    for shape in ((1, 3, 333, 517), (3, 3, 97, 64)):
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = source(x)
        got = runtime(x)
        for stride, a, b in zip((4, 8, 16, 32), got, expected):
            assert a.shape == (shape[0], b.shape[1], -(-shape[2] // stride), -(-shape[3] // stride))
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def _small_classifier_file(tmp_path, num_classes=10):
    torch.manual_seed(0)
    model = _randomise_stats(timm.models.tiny_vit.TinyVit(num_classes=num_classes, **SMALL)).eval()
    path = tmp_path / "small.pth"
    torch.save({"model": timm_to_official(model.state_dict())}, path)
    arch = tmp_path / "small_arch.json"
    arch.write_text(json.dumps(SMALL))
    return model, path, arch


def test_cli_exports_a_classifier_and_prints_its_record(tmp_path, capsys):
    model, weights, arch = _small_classifier_file(tmp_path)
    out = tmp_path / "onnx" / "small.onnx"
    assert main(["classifier", "--arch", str(arch), "--weights", str(weights), "--num-classes",
                 "10", "-o", str(out), "--check-size", "64", "45x77"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["kind"] == "classifier" and record["outputs"] == ["logits"]
    assert record["opset"] == DEFAULT_OPSET and record["dynamic_axes"]["logits"] == {"0": "batch"}
    assert set(record["parity"]["max_abs_diff"]) == {"64x64", "45x77"}
    assert max(record["parity"]["max_abs_diff"].values()) <= 1e-4
    assert "parity 45x77: max |ONNX Runtime - PyTorch|" in captured.err
    x = torch.randn(2, 3, 50, 61)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(OnnxRuntimeModel(str(out))(x), expected, rtol=0, atol=1e-4)


def test_cli_exports_any_windows_and_chosen_stages(tmp_path, capsys):
    _, weights, arch = _small_classifier_file(tmp_path)
    out = tmp_path / "backbone.onnx"
    assert main(["backbone", "--arch", str(arch), "--weights", str(weights), "--window-sizes",
                 "7", "4", "3", "3", "--out-indices", "1", "3", "-o", str(out),
                 "--check-size", "64x96"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["outputs"] == ["stage1", "stage3"]
    assert record["arch"]["window_sizes"] == [7, 4, 3, 3]
    outs = OnnxRuntimeModel(str(out))(torch.randn(1, 3, 70, 50))
    assert [o.shape[1:] for o in outs] == [(32, 9, 7), (64, 3, 2)]


def test_wrong_class_count_is_refused_with_the_fix(tmp_path, capsys):
    _, weights, arch = _small_classifier_file(tmp_path)
    out = tmp_path / "small.onnx"
    assert main(["classifier", "--arch", str(arch), "--weights", str(weights), "-o", str(out),
                 "--check-size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--num-classes" in err and "head.fc.weight" in err
    assert not out.exists()


def test_export_above_tolerance_is_refused_and_writes_nothing(tmp_path, capsys, monkeypatch):
    _, weights, arch = _small_classifier_file(tmp_path)
    real_call = OnnxRuntimeModel.__call__
    monkeypatch.setattr(OnnxRuntimeModel, "__call__", lambda self, x: real_call(self, x) + 1e-3)
    out = tmp_path / "small.onnx"
    assert main(["classifier", "--arch", str(arch), "--weights", str(weights), "--num-classes",
                 "10", "-o", str(out), "--check-size", "64"]) == 2
    err = capsys.readouterr().err
    assert "differ from PyTorch's by more than 0.0001" in err and "nothing was written" in err
    assert not out.exists() and not list(tmp_path.glob(".small.onnx*"))


def test_unsupported_settings_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["backbone", "--arch", "5m", "--random-init", "-o", str(out), "--opset", "13"]) == 2
    assert "opset 13 is not supported: use 17..20" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["backbone", "--arch", "5m", "-o", str(out), "--check-size", "0x5"])
    assert "give SIDE or HEIGHTxWIDTH" in capsys.readouterr().err
    assert not out.exists()


def test_training_mode_and_other_models_cannot_be_exported():
    model = TinyViT(arch=SMALL)  # training mode
    with pytest.raises(ExportError, match="eval mode"):
        export_module(model, ["stage3"], [32])

    class Singular(torch.nn.Module):  # an op without an ONNX equivalent
        def forward(self, x):
            return torch.linalg.svdvals(x)

    with pytest.raises(ExportError, match="could not export Singular"):
        export_module(Singular().eval(), ["out"], [None], check_sizes=[(8, 8)], fuse=False)


def test_missing_onnxruntime_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    out = tmp_path / "m.onnx"
    assert main(["backbone", "--arch", "5m", "--random-init", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ONNX Runtime is not installed" in err and "pip install 'tinyvit-transfer[onnx]'" in err
    assert not out.exists()


def test_runtime_wrapper_refuses_other_devices_and_casts_inputs():
    class Double(torch.nn.Module):
        def forward(self, x):
            return x * 2

    exported = export_module(Double().eval(), ["y"], [None], check_sizes=[(4, 4)], fuse=False)
    runtime = OnnxRuntimeModel(exported.onnx, threads=1)
    out = runtime(torch.ones(1, 3, 4, 4, dtype=torch.float64))
    assert out.dtype == torch.float32 and np.allclose(out.numpy(), 2)
    with pytest.raises(OnnxRuntimeError, match="on the CPU"):
        runtime(torch.ones(1, 3, 4, 4, device="meta"))


def test_weights_are_required_or_random_init_is_explicit(tmp_path, capsys):
    """Without --weights nothing is exported (a random model would pass for a real one);
    --random-init exports one and says so in the record."""
    _, _, arch = _small_classifier_file(tmp_path)
    out = tmp_path / "random.onnx"
    common = ["classifier", "--arch", str(arch), "--num-classes", "10", "-o", str(out),
              "--check-size", "64"]
    assert main(common) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no weights to export: give --weights") and "--random-init" in err
    assert not out.exists()
    assert main(common + ["--random-init"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["random_init"] is True and record["weights"] is None and out.exists()
    with pytest.raises(SystemExit):  # both: argparse refuses the pair
        main(common + ["--random-init", "--weights", "x.pth"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_help_is_plain_text_and_explains_every_option():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for p in [parser, *subparsers.choices.values()]:
        text = p.format_help()
        for markup in (":class:", ":func:", ":mod:", ":meth:", "``", "~tinyvit_backbone"):
            assert markup not in text, f"{p.prog} --help shows Sphinx markup {markup!r}"
        for action in p._actions:
            assert action.help, f"{p.prog}: {action.option_strings or action.dest} has no help"
