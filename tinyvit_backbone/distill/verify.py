"""Check a logit store: every record's integrity, and the teacher's agreement on a sample.

The integrity scan (:mod:`.integrity`) checks every record of every planned epoch and reports
all that is wrong: bad records per epoch with their first sample indices, and missing, short
or over-long files. It never stops at the first problem; the report comes with the save-logits
command that repairs the store.

Like the official ``--check-saved-logits``, the teacher is re-run on replayed (and pair-mixed)
samples and compared with what is stored: the share of top-K indices that differ, the mean
absolute difference of the probabilities, and top-1 agreement. The re-run batches differ from
the writer's, so tiny float differences are expected; gross ones mean the store does not belong
to this teacher / data / augmentation. Only records that pass their check are compared.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .datasets import DatasetInfo, check_same_dataset
from .errors import StoreError
from .integrity import repair_command, scan_store
from .replay import AugConfig, ReplayDataset, replay_loader
from .runtime import autocast
from .soft_label import sparsify
from .store import LogitStore


@torch.no_grad()
def verify_store(store: LogitStore, dataset: Dataset, data: DatasetInfo, teacher, *,
                 num_records: int = 256, epochs: list[int] | None = None, seed: int = 0,
                 batch_size: int = 64, device: torch.device, amp_dtype=None, workers: int = 0,
                 max_mean_abs_error: float = 1e-2, min_top1_agreement: float = 0.99) -> dict:
    """Integrity scan of every planned epoch plus teacher agreement on ``num_records`` random
    sound records (whole pairs) of ``epochs`` (default: all planned).

    Returns a JSON-able dict with ``ok`` (every record sound, agreement within the limits), the
    integrity report and, when something is wrong, the ``repair`` command."""
    check_same_dataset(store.manifest["dataset"], data, f"store {store.root!r}")
    epochs = list(range(store.epochs)) if epochs is None else list(epochs)
    outside = [e for e in epochs if not 0 <= e < store.epochs]
    if outside:
        raise StoreError(f"epochs {outside} are outside store {store.root!r}, which plans "
                         f"{store.epochs} epochs (0..{store.epochs - 1})")
    report, bad = scan_store(store, range(store.epochs))
    aug = AugConfig.from_dict(store.manifest["augmentation"])
    keys = _sample_keys(store, epochs, bad, num_records, seed)
    agreement = _agreement(store, dataset, aug, teacher, keys, batch_size, device, amp_dtype,
                           workers) if keys else None
    agrees = agreement is not None and (agreement["mean_abs_error"] <= max_mean_abs_error
                                        and agreement["top1_agreement"] >= min_top1_agreement)
    ok = report.sound and agrees
    result = dict(ok=ok, store=store.root, integrity=report.to_dict(),
                  summary=report.describe(), agreement=agreement,
                  limits=dict(max_mean_abs_error=max_mean_abs_error,
                              min_top1_agreement=min_top1_agreement),
                  settings=dict(num_records=num_records, epochs=epochs, seed=seed,
                                batch_size=batch_size, device=str(device),
                                amp=str(amp_dtype) if amp_dtype else None))
    if not report.sound:
        result["repair"] = repair_command(store)
    return result


def _sample_keys(store: LogitStore, epochs: list[int], bad: dict[int, np.ndarray],
                 num_records: int, seed: int) -> list[tuple[int, int]]:
    """Random whole pairs of sound records, spread over ``epochs`` (a pair holding a bad record
    is drawn again, up to 100 times)."""
    rng = np.random.default_rng(seed)
    n = store.num_samples
    usable = [e for e in epochs if len(bad.get(e, ())) < n]
    # positions 2j and 2j + 1 hold a pair: the pairs with a bad record
    broken = {e: set((bad.get(e, np.zeros(0, np.int64)) // 2).tolist()) for e in usable}
    keys: list[tuple[int, int]] = []
    for k in range(max(1, num_records // 2) if usable else 0):
        e = int(usable[k % len(usable)])
        for _ in range(100):
            j = int(rng.integers(max(1, n // 2)))
            if j not in broken[e]:
                order = store.order(e).order
                keys += [(e, int(i)) for i in order[2 * j: 2 * j + 2]]
                break
    return keys


def _agreement(store, dataset, aug, teacher, keys, batch_size, device, amp_dtype,
               workers) -> dict:
    teacher = teacher.to(device).eval()
    replay = ReplayDataset(dataset, aug, store.base_seed)
    stats = dict(records=0, index_diff=0, abs_err_sum=0.0, top1_agree=0, bitwise_equal=0)
    topk = store.topk
    for e in sorted({k[0] for k in keys}):
        idx = [i for ep, i in keys if ep == e]
        batches = [np.asarray(idx[s: s + batch_size]) for s in range(0, len(idx), batch_size)]
        for batch in replay_loader(replay, e, batches, workers=workers):
            with autocast(device, amp_dtype):
                logits = teacher(batch["image"].to(device))
            ind, val = sparsify(logits, topk)
            ind = ind.cpu().numpy()
            val = store.record.roundtrip(val.cpu().numpy())
            stored = store.read_many(e, batch["index"].numpy())
            for row in range(len(ind)):
                stats["records"] += 1
                stats["index_diff"] += int((ind[row] != stored.indices[row]).sum())
                stats["abs_err_sum"] += float(np.abs(val[row] - stored.values[row]).mean())
                stats["top1_agree"] += int(ind[row, 0] == stored.indices[row, 0])
                stats["bitwise_equal"] += int(np.array_equal(ind[row], stored.indices[row])
                                              and np.array_equal(val[row], stored.values[row]))
    m = stats["records"]
    return dict(records=m, index_diff_rate=stats["index_diff"] / (m * topk),
                mean_abs_error=stats["abs_err_sum"] / m, top1_agreement=stats["top1_agree"] / m,
                bitwise_equal=stats["bitwise_equal"] / m)


__all__ = ["verify_store"]
