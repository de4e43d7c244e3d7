"""Fast pretraining distillation (TinyViT, Wu et al. 2022): sparse teacher logits on disk.

1. :mod:`.save_logits` runs a teacher over every augmented epoch once and writes a
   :mod:`.store` of top-K probabilities plus the augmentation seed per sample.
2. :mod:`.train` trains a TinyViT student from the store: it replays the exact augmentation
   from the seeds (:mod:`.replay`) and rebuilds the soft labels (:mod:`.soft_label`); no teacher
   runs, no ground truth is used. ``finetune`` then trains on labels with layer-wise lr decay.
3. :mod:`.verify` re-runs the teacher on stored records; :mod:`.reproduce` is the mini
   reproduction on the embedded digits. The CLI is ``python -m tinyvit_backbone.distill``.
"""
from .errors import DistillError, StoreError
from .replay import AugConfig, ReplayDataset, epoch_batches, mix_pairs, rng_scope, sample_seed
from .reproduce import DEMO_ARCH, run_pipeline
from .soft_label import rebuild_soft_labels, soft_target_cross_entropy, sparsify
from .store import LogitStore, official_record_bytes, record_dtype

__all__ = ["AugConfig", "DEMO_ARCH", "DistillError", "LogitStore", "ReplayDataset", "StoreError",
           "epoch_batches", "mix_pairs", "official_record_bytes", "rebuild_soft_labels",
           "record_dtype", "rng_scope", "run_pipeline", "sample_seed", "soft_target_cross_entropy",
           "sparsify"]
