"""Fast pretraining distillation (TinyViT, Wu et al. 2022): sparse teacher logits on disk.

1. :mod:`.save_logits` runs a teacher over every augmented epoch once and writes a
   :mod:`.store` of top-K probabilities plus the augmentation seed per sample (records:
   :mod:`.record`; file layout: :mod:`.layout`; scans and repair: :mod:`.integrity`).
2. :mod:`.train` trains a TinyViT student from the store: it replays the exact augmentation
   from the seeds (:mod:`.replay`) and rebuilds the soft labels (:mod:`.soft_label`); no teacher
   runs, no ground truth is used. ``finetune`` then trains on labels with layer-wise lr decay.
3. :mod:`.verify` re-runs the teacher on stored records; :mod:`.reproduce` is the mini
   reproduction on the embedded digits. The CLI is ``python -m tinyvit_backbone.distill``
   (``tinyvit-distill``).

Names are imported on first use, so the CLI's ``--help`` loads neither torch nor timm.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DistillError": "errors", "StoreError": "errors",
    "AugConfig": "replay", "ReplayDataset": "replay", "epoch_batches": "replay",
    "mix_pairs": "replay", "rng_scope": "replay", "sample_seed": "replay",
    "DEMO_ARCH": "reproduce", "run_pipeline": "reproduce",
    "rebuild_soft_labels": "soft_label", "soft_target_cross_entropy": "soft_label",
    "sparsify": "soft_label",
    "LogitStore": "store", "RecordFormat": "record", "official_record_bytes": "record",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted(_EXPORTS)
