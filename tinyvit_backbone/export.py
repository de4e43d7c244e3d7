"""Export TinyViT to ONNX — the backbone (multi-scale features) or the classifier — checked
against PyTorch by ONNX Runtime before the file is kept.

    tinyvit-export backbone --arch 21m --weights W.pth -o tinyvit21m_backbone.onnx
    tinyvit-export classifier --arch 21m --weights W.pth --num-classes 1000 -o tinyvit21m.onnx
    tinyvit-export backbone --arch 21m --window-sizes 16 16 32 16 --weights W.pth -o t512.onnx

The graph (opset 17 by default; 17..20 accepted):

* input ``images``: float32 (batch, 3, height, width), normalised as for PyTorch (the mean / std
  step is not in the graph); dynamic axes ``batch``, ``height``, ``width``: one file serves every
  batch and image size, the windows are padded inside the graph exactly as timm pads them;
* backbone outputs ``stage{i}`` for each of ``--out-indices``: (batch, C_i, ceil(height / s),
  ceil(width / s)) at stride s = 4, 8, 16, 32; classifier output ``logits``: (batch, classes).

Weights come through the project's one loader (:class:`~tinyvit_backbone.backbone.TinyViT`'s
``init_cfg`` for the backbone, :func:`~tinyvit_backbone.checkpoint.backbone_state_dict` for the
classifier), so every layout it reads exports. The exported computation is the fast path's
(:func:`~tinyvit_backbone.inference.fuse_for_inference`: BatchNorm and LayerNorm affines folded,
the attention scale in the query weights) written in plain ONNX ops.

Parity: ONNX Runtime runs the exported bytes on seeded random images (batch 2) at every
``--check-size`` (default 224 and the odd 333x517, which pads every stage's windows) and compares
each output with the unfused PyTorch model; the max |diff| is printed, and above
``--tolerance`` (default 1e-4) the export is refused and nothing is written. The file is written
atomically only after the check passed.

Exporter: torch.onnx's TorchScript-based one (``dynamo=False``). It records the window
arithmetic (pad to whole windows, partition, crop) as shape ops, so dynamic height and width
need nothing more; ``torch.export`` instead tries to prove that arithmetic for every size in
the range, fails with constraint violations, and took 15x longer (100 s vs 6 s for TinyViT-5M).
"""
from __future__ import annotations

import argparse
import copy
import io
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from .cli import run_commands, subcommands
from .files import atomic_write_bytes
from .onnx_runtime import INSTALL_HINT, OnnxRuntimeModel, require_onnx, require_onnxruntime

DEFAULT_OPSET = 17
OPSETS = range(17, 21)  # LayerNormalization needs 17; the TorchScript exporter stops at 20
DEFAULT_TOLERANCE = 1e-4
DEFAULT_CHECK_SIZES = ((224, 224), (333, 517))
INPUT = "images"


class ExportError(ValueError):
    """A model or setting that cannot give a checked ONNX file; says why and the fix (a missing
    onnx / onnxruntime is an :class:`~tinyvit_backbone.onnx_runtime.OnnxRuntimeError`)."""


# --------------------------------------------------------------------------- exporting
@dataclass
class Exported:
    """An exported, parity-checked model: the ONNX bytes and what the check measured."""

    onnx: bytes
    opset: int
    input_name: str
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    max_abs_diff: dict[str, float]  # per check size 'HxW'
    export_s: float
    check_s: float

    @property
    def worst_diff(self) -> float:
        return max(self.max_abs_diff.values())


def _outputs(result) -> tuple[torch.Tensor, ...]:
    return (result,) if isinstance(result, torch.Tensor) else tuple(result)


def _check_inputs(sizes: Sequence[tuple[int, int]], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, h, w, generator=gen) for h, w in sizes]


def export_module(
    reference: nn.Module,
    output_names: Sequence[str],
    output_strides: Sequence[int | None] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    check_sizes: Sequence[tuple[int, int]] = DEFAULT_CHECK_SIZES,
    tolerance: float = DEFAULT_TOLERANCE,
    fuse: bool = True,
) -> Exported:
    """Export ``reference`` (a TinyViT module mapping images to ``output_names``, eval mode) to
    ONNX with dynamic batch / height / width, and check it with ONNX Runtime against
    ``reference`` itself at every size of ``check_sizes``.

    ``output_strides``: per output, its stride (then its last two axes are dynamic too, named
    ``height/s``, ``width/s``) or None (a flat output: only the batch axis is dynamic).
    ``fuse``: export the fast path's rewrite of a copy of ``reference`` (the reference stays
    unfused). Raises :class:`ExportError` (nothing is returned) above ``tolerance``.
    """
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported: use {OPSETS.start}..{OPSETS.stop - 1} "
                          "(LayerNormalization needs 17; torch's TorchScript exporter stops at 20)")
    if not check_sizes:
        raise ExportError("give at least one check size: an export is never kept unchecked")
    for h, w in check_sizes:
        if h < 1 or w < 1:
            raise ExportError(f"check size {h}x{w}: height and width must be positive")
    onnx = require_onnx()
    require_onnxruntime()
    if any(p.device.type != "cpu" for p in reference.parameters()):
        raise ExportError("export a model on the CPU: move it with .cpu() first")
    if reference.training:
        raise ExportError("export a model in eval mode (model.eval()): training-mode BatchNorm "
                          "and drop path have no fixed ONNX graph")
    output_strides = list(output_strides) if output_strides is not None else [None] * len(output_names)
    graph = copy.deepcopy(reference)
    if fuse:
        from .inference import fuse_for_inference  # imports timm: not for --help
        graph = fuse_for_inference(graph, retain_memory=False)
    dynamic_axes = {INPUT: {0: "batch", 2: "height", 3: "width"}}
    for name, stride in zip(output_names, output_strides):
        dynamic_axes[name] = ({0: "batch"} if stride is None
                              else {0: "batch", 2: f"height/{stride}", 3: f"width/{stride}"})
    inputs = _check_inputs(check_sizes)
    buffer = io.BytesIO()
    start = time.perf_counter()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer warns about every shape it records as an op: that is what makes the
            # axes dynamic, and the parity check below proves the graph at other sizes
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (inputs[0],), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT], output_names=list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
    except Exception as err:  # the exporter raises many types; each means "cannot be exported"
        raise ExportError(f"torch.onnx could not export {type(reference).__name__} "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                          "only TinyViT backbones and classifiers of this project or timm export") from err
    export_s = time.perf_counter() - start
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    start = time.perf_counter()
    runtime = OnnxRuntimeModel(data)
    diffs = {}
    with torch.no_grad():
        for (h, w), x in zip(check_sizes, inputs):
            expected, got = _outputs(reference(x)), _outputs(runtime(x))
            if len(expected) != len(got):
                raise ExportError(f"the ONNX graph has {len(got)} outputs, PyTorch {len(expected)}")
            diffs[f"{h}x{w}"] = max((g - e).abs().max().item() for g, e in zip(got, expected))
    check_s = time.perf_counter() - start
    result = Exported(data, opset, INPUT, list(output_names), dynamic_axes, diffs, export_s, check_s)
    if not result.worst_diff <= tolerance:  # also refuses NaN
        bad = ", ".join(f"{k}: {v:.3g}" for k, v in diffs.items())
        raise ExportError(f"ONNX Runtime's outputs differ from PyTorch's by more than {tolerance:g} "
                          f"(max |diff| per size: {bad}); nothing was written. Raise --tolerance "
                          "only if that difference is acceptable for your use")
    return result


def onnxruntime_module(module: nn.Module, output_name: str, check_size: tuple[int, int],
                       tolerance: float = DEFAULT_TOLERANCE) -> OnnxRuntimeModel:
    """``module`` (images -> one flat output, e.g. pooled features) exported, checked at
    ``check_size`` and loaded into ONNX Runtime: the ``onnxruntime`` backend of extraction."""
    exported = export_module(module, [output_name], [None], check_sizes=[check_size],
                             tolerance=tolerance)
    return OnnxRuntimeModel(exported.onnx)


# --------------------------------------------------------------------------- TinyViT models
def build_backbone(arch: str | dict = "21m", weights: str | None = None,
                   window_sizes: Sequence[int] | None = None,
                   out_indices: Sequence[int] = (0, 1, 2, 3), out_norms: bool = False) -> nn.Module:
    """This project's :class:`~tinyvit_backbone.backbone.TinyViT` in eval mode, weights loaded
    through its ``init_cfg`` (random init without ``weights``)."""
    from .backbone import TinyViT
    init_cfg = dict(type="Pretrained", checkpoint=weights) if weights else None
    model = TinyViT(arch=arch, window_sizes=window_sizes, out_indices=out_indices,
                    out_norms=out_norms, init_cfg=init_cfg)
    if weights:  # without, timm's initialisation at construction is the model
        model.init_weights()
    return model.eval()


def build_classifier(arch: str | dict = "21m", weights: str | None = None,
                     window_sizes: Sequence[int] | None = None, num_classes: int = 1000) -> nn.Module:
    """timm's ``TinyVit`` classifier in eval mode; ``weights`` must hold its head (of
    ``num_classes`` classes), in any layout the project reads."""
    from .backbone import build_timm_tinyvit
    from .checkpoint import CheckpointError, backbone_state_dict
    model = build_timm_tinyvit(arch, num_classes=num_classes, window_sizes=window_sizes)
    if weights:
        try:
            state = backbone_state_dict(weights, model.state_dict())
        except CheckpointError as err:
            hint = ""
            if "head." in str(err):
                hint = (" For the classifier the weights must hold its head: give --num-classes "
                        "the checkpoint's class count (21841 for IN-21k weights), or export the "
                        "backbone instead")
            raise ExportError(f"{err}{hint}") from err
        model.load_state_dict(state)
    return model.eval()


def export_tinyvit(kind: str, output: str, *, arch: str | dict = "21m", weights: str | None = None,
                   random_init: bool = False, window_sizes: Sequence[int] | None = None,
                   out_indices: Sequence[int] = (0, 1, 2, 3), out_norms: bool = False,
                   num_classes: int = 1000, opset: int = DEFAULT_OPSET,
                   check_sizes: Sequence[tuple[int, int]] = DEFAULT_CHECK_SIZES,
                   tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Export a TinyViT ``kind`` ('backbone' or 'classifier') to ``output``; returns the record
    printed by the CLI (settings, opset, axes, parity, file digest). ``weights`` is required
    unless ``random_init`` (a random model exported by mistake would look like a real one)."""
    from .backbone import resolve_arch
    from .files import sha256_file
    if weights and random_init:
        raise ExportError("give either --weights or --random-init, not both")
    if not weights and not random_init:
        raise ExportError("no weights to export: give --weights with a registry name (e.g. "
                          "tiny_vit_21m_22kto1k_distill), a URL, a hub tag or a checkpoint file; "
                          "or --random-init to export random weights for a pipeline test")
    if kind == "backbone":
        model = build_backbone(arch, weights, window_sizes, out_indices, out_norms)
        names = [f"stage{i}" for i in model.out_indices]
        strides = list(model.strides)
    elif kind == "classifier":
        if num_classes < 1:
            raise ExportError(f"--num-classes must be >= 1, got {num_classes}")
        model = build_classifier(arch, weights, window_sizes, num_classes)
        names, strides = ["logits"], [None]
    else:
        raise ExportError(f"export kind must be 'backbone' or 'classifier', got {kind!r}")
    exported = export_module(model, names, strides, opset=opset, check_sizes=check_sizes,
                             tolerance=tolerance)
    atomic_write_bytes(output, exported.onnx)
    spec = resolve_arch(arch, window_sizes)
    return {"onnx": os.path.abspath(output), "bytes": len(exported.onnx),
            "sha256": sha256_file(output), "kind": kind, "arch": spec,
            "weights": weights, "random_init": random_init,
            "num_classes": num_classes if kind == "classifier" else None,
            "opset": exported.opset, "input": exported.input_name, "outputs": exported.output_names,
            "dynamic_axes": exported.dynamic_axes,
            "parity": {"runtime": "onnxruntime CPU", "reference": "PyTorch fp32 (unfused)",
                       "batch": 2, "max_abs_diff": exported.max_abs_diff, "tolerance": tolerance},
            "export_s": round(exported.export_s, 2), "check_s": round(exported.check_s, 2)}


# --------------------------------------------------------------------------- command line
def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '333x517' -> (333, 517) (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r}: give SIDE or HEIGHTxWIDTH, e.g. 224 or "
                                         "333x517")
    return parts[0], parts[1]


CLI_DESCRIPTION = """\
Export TinyViT to ONNX (the backbone's multi-scale features or the classifier),
checked against PyTorch by ONNX Runtime before the file is kept."""
CLI_EPILOG = f"""\
examples:
  tinyvit-export backbone --arch 21m --weights tiny_vit_21m_22kto1k_distill -o tinyvit21m_backbone.onnx
  tinyvit-export classifier --arch 21m --weights W.pth --num-classes 1000 -o tinyvit21m.onnx
  tinyvit-export backbone --arch 21m --window-sizes 16 16 32 16 --weights W.pth -o t512.onnx

The graph: input "images", float32 (batch, 3, height, width), normalised as for PyTorch (the
mean / std step is not in it), with dynamic batch, height and width: one file serves every
batch and image size. Backbone outputs "stage0".."stage3" (those of --out-indices) at strides
4, 8, 16, 32; classifier output "logits" (batch, classes).

Weights go through the project's one loader, so every checkpoint layout it reads exports.
Before anything is written, ONNX Runtime runs the graph on seeded random images (batch 2) at
every --check-size and compares each output with the PyTorch model; the max |diff| is printed
and above --tolerance the export is refused. The file is written atomically after the check.
Needs onnx and onnxruntime: {INSTALL_HINT}."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyvit-export", description=CLI_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=CLI_EPILOG)
    sub = subcommands(parser)
    sub.help = "what to export: backbone or classifier (each has its own --help)"
    for kind, text in (("backbone", "multi-scale features (stage0..stage3) for detection / "
                                    "segmentation"),
                       ("classifier", "the image classifier (logits)")):
        p = sub.add_parser(kind, help=text, description=f"Export the TinyViT {text} to ONNX.",
                           formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CLI_EPILOG)
        p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
        p.add_argument("--arch", default="21m",
                       help="5m | 11m | 21m | a JSON file with embed_dims / depths / num_heads / "
                            "window_sizes (default 21m)")
        weights = p.add_mutually_exclusive_group()
        weights.add_argument("--weights", default=None,
                             help="the weights to export: a registry name (e.g. "
                                  "tiny_vit_21m_22kto1k_distill; tinyvit-weights list shows them), "
                                  "a URL, a hub tag or a checkpoint file in any layout the project "
                                  "reads. Required unless --random-init")
        weights.add_argument("--random-init", action="store_true",
                             help="export randomly initialised weights instead, to try the "
                                  "pipeline (its outputs mean nothing)")
        p.add_argument("--window-sizes", type=int, nargs="+", default=None,
                       help="per-stage attention windows (default: the arch's; e.g. 16 16 32 16 "
                            "for 512 px weights)")
        if kind == "backbone":
            p.add_argument("--out-indices", type=int, nargs="+", default=[0, 1, 2, 3],
                           help="stages to output (default 0 1 2 3)")
            p.add_argument("--out-norms", action="store_true",
                           help="add the backbone's output LayerNorms (norm{i} in the weights)")
        else:
            p.add_argument("--num-classes", type=int, default=1000,
                           help="classes of the weights' head (default 1000; 21841 for IN-21k)")
        p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                       help=f"ONNX opset, {OPSETS.start}..{OPSETS.stop - 1} (default {DEFAULT_OPSET})")
        p.add_argument("--check-size", type=parse_size, nargs="+", dest="check_sizes",
                       default=list(DEFAULT_CHECK_SIZES),
                       help="image sizes of the parity check, SIDE or HEIGHTxWIDTH (default 224 "
                            "and 333x517, which pads every stage's windows)")
        p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                       help="largest accepted |ONNX Runtime - PyTorch| over the outputs "
                            f"(default {DEFAULT_TOLERANCE:g})")
    return parser


def _export_command(args: argparse.Namespace) -> dict:
    import sys

    kwargs = dict(arch=args.arch, weights=args.weights, random_init=args.random_init,
                  window_sizes=args.window_sizes, opset=args.opset,
                  check_sizes=[tuple(s) for s in args.check_sizes], tolerance=args.tolerance)
    if args.command == "backbone":
        kwargs.update(out_indices=args.out_indices, out_norms=args.out_norms)
    else:
        kwargs.update(num_classes=args.num_classes)
    result = export_tinyvit(args.command, args.output, **kwargs)
    for size, diff in result["parity"]["max_abs_diff"].items():
        print(f"parity {size}: max |ONNX Runtime - PyTorch| = {diff:.3g} "
              f"(tolerance {args.tolerance:g})", file=sys.stderr)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError

    return run_commands(build_parser(), {"backbone": _export_command,
                                         "classifier": _export_command}, argv,
                        errors=(ExportError, CheckpointError, ValueError, OSError),
                        interrupted="interrupted: nothing was written; rerun the same command")


if __name__ == "__main__":
    raise SystemExit(main())
