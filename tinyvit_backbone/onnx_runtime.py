"""ONNX Runtime on the CPU, shared by export (its parity check) and inference (the
``onnxruntime`` backend): whether it is installed, the install hint, and a session called like
the torch module the graph came from. Imports nothing else of this project.
"""
from __future__ import annotations

import torch

INSTALL_HINT = "pip install 'tinyvit-transfer[onnx]' (or: pip install onnx onnxruntime)"


class OnnxRuntimeError(ValueError):
    """ONNX Runtime or onnx missing, or an input it cannot run; says why and the fix."""


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def require_onnxruntime():
    """``onnxruntime``, or an :class:`OnnxRuntimeError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise OnnxRuntimeError(f"ONNX Runtime is not installed ({err}); {INSTALL_HINT}") from None
    return onnxruntime


def require_onnx():
    """``onnx``, or an :class:`OnnxRuntimeError` saying how to install it."""
    try:
        import onnx
    except ImportError as err:
        raise OnnxRuntimeError(f"the onnx package is not installed ({err}); {INSTALL_HINT}") from None
    return onnx


class OnnxRuntimeModel:
    """An ONNX model in an ONNX Runtime CPU session, called like the torch module it came from:
    float32 tensors in, a tensor (one output) or a tuple of tensors out.

    ``threads``: intra-op threads (default: torch's thread count, so both runtimes use the same
    cores); graph optimisations at their highest level. Its threads do not spin once a run is
    done (ONNX Runtime's default is to spin): measured with TinyViT-5M at 224 px batch 8 on 2
    cores, ONNX Runtime ran at the same speed either way (52.4 against 51.9 img/s), but its
    spinning threads took the cores from the work that followed, a torch forward 25% slower
    right after a run (40.8 against 51.7 img/s), as they would from the loader's decoding."""

    backend = "onnxruntime"

    def __init__(self, model: bytes | str, threads: int | None = None):
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about node placement are noise here
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: torch.Tensor):
        if images.device.type != "cpu":
            raise OnnxRuntimeError(f"ONNX Runtime here runs on the CPU; got a tensor on {images.device}")
        array = images.detach().float().contiguous().numpy()
        outs = [torch.from_numpy(o) for o in self.session.run(None, {self.input_name: array})]
        return outs[0] if len(outs) == 1 else tuple(outs)
