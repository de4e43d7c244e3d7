"""Whether an OpenMMLab config is a detection or a segmentation one: one rule for the CPU
overlay, the tables and the benchmarks.

The config's ``default_scope`` decides (``mmdet`` / ``mmseg``); without one, mmseg's
encoder-decoder model types mark segmentation and any other model detection.
"""
from __future__ import annotations

from collections.abc import Mapping

SEGMENTORS = ("EncoderDecoder", "CascadeEncoderDecoder")


def model_type(model: Mapping | None) -> str:
    """'mmdet.MaskRCNN' -> 'MaskRCNN'; a class object -> its name."""
    t = (model or {}).get("type", "")
    return t.rsplit(".", 1)[-1] if isinstance(t, str) else getattr(t, "__name__", str(t))


def config_task(cfg: Mapping, default: str | None = "det") -> str | None:
    """'det' or 'seg' for a config (mmengine ``Config`` or its dict); ``default`` when neither
    the scope nor a model says (None: unknown)."""
    scope = cfg.get("default_scope")
    if scope in ("mmdet", "mmseg"):
        return "det" if scope == "mmdet" else "seg"
    if model_type(cfg.get("model")) in SEGMENTORS:
        return "seg"
    return default
