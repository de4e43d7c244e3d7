"""Linear-probe and few-shot evaluation of frozen TinyViT / timm backbones.

Protocols (``linear_probe.results.PROTOCOLS``): the paper's ``mocov3`` linear probe
(:mod:`linear_probe.mocov3`) and ``cdfsl`` few-shot fine-tuning (:mod:`linear_probe.cdfsl`),
and the fast ones on cached features for the wider suite, ``clip-lbfgs`` and ``lbfgs-fast``
(:mod:`linear_probe.evaluate`).

Python API (the CLI is ``python -m linear_probe``)::

    from linear_probe import ModelSpec, run_suite
    records = run_suite(ModelSpec("tinyvit", arch="5m", weights="student.pth"), "digits",
                        output="results/probe.jsonl", cache_dir="work_dirs/features")

The names below load on first use, so that importing the package (or its light modules such
as :mod:`linear_probe.results`) costs no torch import.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ModelSpec": "backbones",
    "FeatureSettings": "settings",
    "linear_probe": "evaluate",
    "kshot": "evaluate",
    "episodes": "evaluate",
    "run_suite": "evaluate",
    "summarise": "evaluate",
    "run_mocov3": "mocov3",
    "run_cdfsl": "cdfsl",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
