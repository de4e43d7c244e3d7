"""Check a logit store: every record's integrity, and the teacher's agreement on a sample.

Like the official ``--check-saved-logits``, the teacher is re-run on replayed (and pair-mixed)
samples and compared with what is stored: the share of top-K indices that differ, the mean
absolute difference of the probabilities, and top-1 agreement. The re-run batches differ from
the writer's, so tiny float differences are expected; gross ones mean the store does not belong
to this teacher / data / augmentation. The integrity scan checks every record's crc.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .datasets import DatasetInfo, check_same_dataset
from .errors import StoreError
from .replay import AugConfig, ReplayDataset, epoch_order, replay_loader
from .runtime import autocast
from .soft_label import sparsify
from .store import LogitStore


def scan_integrity(store: LogitStore) -> dict:
    """Invalid record counts per complete epoch (0 = sound) and the incomplete epoch files."""
    invalid = {e: int((~store.valid_mask(e)).sum()) for e in store.epochs_complete}
    partial = sorted(e for e in range(store.manifest["epochs"])
                     if e not in invalid and os.path.exists(store.epoch_path(e)))
    return dict(invalid_records=invalid, incomplete_epochs=partial)


@torch.no_grad()
def verify_store(store: LogitStore, dataset: Dataset, data: DatasetInfo, teacher, *,
                 num_records: int = 256, epochs: list[int] | None = None, seed: int = 0,
                 batch_size: int = 64, device: torch.device, amp_dtype=None, workers: int = 0,
                 max_mean_abs_error: float = 1e-2, min_top1_agreement: float = 0.99) -> dict:
    """Integrity scan plus teacher agreement on ``num_records`` random records (whole pairs).

    Returns a JSON-able dict with ``ok`` (no invalid record, agreement within the limits).
    """
    check_same_dataset(store.manifest["dataset"], data, f"store {store.root!r}")
    integrity = scan_integrity(store)
    complete = store.epochs_complete
    if not complete:
        raise StoreError(f"store {store.root!r} has no complete epoch to verify: finish it with "
                         "save-logits first")
    epochs = complete if epochs is None else epochs
    for e in epochs:
        store.require_epoch(e)
    aug = AugConfig.from_dict(store.manifest["augmentation"])
    base_seed = int(store.manifest["seed"])
    rng = np.random.default_rng(seed)
    n = store.num_samples
    pairs_per_epoch = max(1, n // 2)
    want_pairs = max(1, num_records // 2)
    keys: list[tuple[int, int]] = []
    for k in range(want_pairs):
        e = int(epochs[k % len(epochs)])
        order = epoch_order(n, base_seed, e)
        j = int(rng.integers(pairs_per_epoch))
        keys += [(e, int(i)) for i in order[2 * j: 2 * j + 2]]
    teacher = teacher.to(device).eval()
    replay = ReplayDataset(dataset, aug, base_seed)
    stats = dict(records=0, index_diff=0, abs_err_sum=0.0, top1_agree=0, bitwise_equal=0)
    topk = store.topk
    for e in sorted({k[0] for k in keys}):
        idx = [i for ep, i in keys if ep == e]
        batches = [np.asarray(idx[s: s + batch_size]) for s in range(0, len(idx), batch_size)]
        for batch in replay_loader(replay, e, batches, workers=workers):
            with autocast(device, amp_dtype):
                logits = teacher(batch["image"].to(device))
            ind, val = sparsify(logits, topk)
            ind, val = ind.cpu().numpy(), val.cpu().numpy()
            for row, i in enumerate(batch["index"].tolist()):
                rec = store.read(e, i)
                stats["records"] += 1
                stats["index_diff"] += int((ind[row] != rec.indices).sum())
                stats["abs_err_sum"] += float(np.abs(val[row].astype(np.float32) - rec.values).mean())
                stats["top1_agree"] += int(ind[row, 0] == rec.indices[0])
                stats["bitwise_equal"] += int(np.array_equal(ind[row], rec.indices)
                                              and np.array_equal(val[row].astype(np.float32), rec.values))
    m = stats["records"]
    agreement = dict(records=m, index_diff_rate=stats["index_diff"] / (m * topk),
                     mean_abs_error=stats["abs_err_sum"] / m, top1_agreement=stats["top1_agree"] / m,
                     bitwise_equal=stats["bitwise_equal"] / m)
    sound = not any(integrity["invalid_records"].values())
    ok = (sound and agreement["mean_abs_error"] <= max_mean_abs_error
          and agreement["top1_agreement"] >= min_top1_agreement)
    return dict(ok=ok, store=store.root, integrity=integrity, agreement=agreement,
                limits=dict(max_mean_abs_error=max_mean_abs_error,
                            min_top1_agreement=min_top1_agreement),
                settings=dict(num_records=num_records, epochs=list(epochs), seed=seed,
                              batch_size=batch_size, device=str(device),
                              amp=str(amp_dtype) if amp_dtype else None))


__all__ = ["scan_integrity", "verify_store"]
