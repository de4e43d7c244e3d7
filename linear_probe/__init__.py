"""Linear-probe and few-shot evaluation of frozen backbones on cached features.

Python API (the CLI is ``python -m linear_probe``)::

    from linear_probe import ModelSpec, run_suite
    records = run_suite(ModelSpec("tinyvit", arch="5m", weights="student.pth"), "digits",
                        output="results/probe.jsonl", cache_dir="work_dirs/features")
"""
from .backbones import ModelSpec
from .evaluate import FeatureSettings, episodes, kshot, linear_probe, run_suite, summarise

__all__ = ["FeatureSettings", "ModelSpec", "episodes", "kshot", "linear_probe", "run_suite",
           "summarise"]
