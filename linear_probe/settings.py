"""What every evaluation shares: how features are produced (:class:`FeatureSettings`), which
model is evaluated (:func:`as_model_spec`), and the record fields that follow from both."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .backbones import ModelSpec
from .cache import canonical_json
from .extract import Extraction, extract_splits
from .paths import default_work_dir


def run_dir(work_dir: str | os.PathLike | None, protocol: str, dataset: str,
            parts: dict) -> tuple[Path, str]:
    """(folder, key) of a resumable run: ``<work-dir>/<protocol>/<dataset>/<key[:16]>``, the
    key being the sha256 of everything that determines the run's result, so a rerun with the
    same settings finds its own state and one with other settings never does."""
    key = hashlib.sha256(canonical_json(parts).encode()).hexdigest()
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dataset).strip("_")[:80]
    root = Path(work_dir if work_dir is not None else default_work_dir())
    return root / protocol / (slug or "dataset") / key[:16], key


@dataclass
class FeatureSettings:
    """How features are produced and where they are cached (shared by all evaluations).

    ``amp`` True: bfloat16 autocast of the backbone (float16 on GPUs without it); None or
    False: float32, as the original protocols (:mod:`linear_probe.device`); ``workers`` None
    picks per split size; ``batch_size`` None: 256 on a GPU, 64 on a CPU; ``backend`` the CPU
    runtime of the extraction (:func:`tinyvit_backbone.inference.resolve_backend`)."""

    data_root: str | None = None
    cache_dir: str | None = None
    feature_layer: str = "pooled"
    image_size: int | None = None
    batch_size: int | None = None
    workers: int | None = None
    device: str | None = None
    amp: bool | None = None
    progress: bool | None = True
    backend: str = "auto"

    def extract(self, spec: ModelSpec, dataset: str, splits: list[str],
                preprocessing: str | None = None) -> Extraction:
        return extract_splits(spec, dataset, splits, data_root=self.data_root,
                              cache_dir=self.cache_dir, feature_layer=self.feature_layer,
                              image_size=self.image_size, batch_size=self.batch_size,
                              workers=self.workers, device=self.device, amp=self.amp,
                              progress=self.progress is not False, backend=self.backend,
                              preprocessing=preprocessing)


def as_model_spec(model) -> ModelSpec:
    """A :class:`ModelSpec` from itself, a dict of its fields, or a string such as
    ``'tinyvit-5m'`` / ``'timm:resnet18'``."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return ModelSpec(**model)
    if isinstance(model, str):
        return ModelSpec(model=model, arch=None)
    raise TypeError(f"model spec must be a ModelSpec, dict or str, got {type(model).__name__}")


def base_fields(task: str, protocol: str, spec: ModelSpec, settings: FeatureSettings,
                metric: str, **inputs) -> dict:
    """The record fields every evaluation fills the same way (see :mod:`linear_probe.results`);
    ``inputs`` are the dataset and image fields, e.g. :func:`extraction_fields`'s."""
    return {"task": task, "protocol": protocol, "model": spec.display_label(),
            "arch": spec.arch_field(), "weights": spec.weights,
            "weights_digest": spec.weights_digest(), "pretraining": spec.pretraining,
            "feature_layer": settings.feature_layer,
            "metric": metric, **inputs}


def extraction_fields(ex: Extraction) -> dict:
    """Dataset, input size, feature width, preprocessing and cache state of an extraction."""
    return {"dataset": ex.info.name, "image_size": ex.image_size,
            "feature_dim": int(next(iter(ex.splits.values())).features.shape[1]),
            "preprocessing": ex.transform,
            "cache_hit": all(e.hit for e in ex.splits.values())}
