"""Does a logit store fit a training run? The one check, used by the CLI and by the training API.

The store decides the pixels (augmentation and base seed), the class count and how many epochs
exist; the student must replay exactly those on the same dataset. Every mismatch is listed in
one error, each with its fix. The CLI runs the check before opening the dataset (so a wrong flag
fails in a second, not after listing millions of files) and :func:`.train.train_classifier` runs
it again with the dataset.
"""
from __future__ import annotations

from .datasets import DatasetInfo, check_same_dataset
from .errors import DistillError
from .replay import AugConfig
from .store import LogitStore


def store_augmentation(store: LogitStore, overrides: dict | None = None) -> AugConfig:
    """The store's augmentation, with ``overrides`` (field -> value) applied on top."""
    stored = AugConfig.from_dict(store.manifest["augmentation"])
    return AugConfig(**{**stored.__dict__, **(overrides or {})})


def store_mismatches(store: LogitStore, *, aug: AugConfig | None = None, seed: int | None = None,
                     num_classes: int | None = None, epochs: int | None = None) -> list[str]:
    """What in the run does not fit ``store`` (empty if everything fits)."""
    problems = []
    if aug is not None:
        stored = AugConfig.from_dict(store.manifest["augmentation"])
        diff = [f"{name} {getattr(aug, name)!r} (store: {getattr(stored, name)!r})"
                for name in aug.__dataclass_fields__ if getattr(aug, name) != getattr(stored, name)]
        if diff:
            problems.append("the augmentation differs from the store's: " + ", ".join(diff)
                            + "; the student must replay the store's augmentation (leave the "
                            "augmentation flags out: train takes the store's)")
    if seed is not None and seed != store.base_seed:
        problems.append(f"seed {seed} differs from the store's ({store.base_seed}): the seeds "
                        "decide the pixels; leave --seed out (train takes the store's)")
    if num_classes is not None and num_classes != store.num_classes:
        problems.append(f"{num_classes} classes, but the store holds {store.num_classes}-class "
                        "records; leave --num-classes out")
    if epochs is not None and epochs > store.epochs:
        problems.append(f"{epochs} epochs asked, but the store plans {store.epochs} "
                        f"(complete: {store.epochs_complete or 'none'}); append epochs with "
                        f"save-logits --epochs {epochs} (it resumes the store), or train for "
                        "fewer")
    if epochs is not None and epochs < 1:
        problems.append(f"epochs must be >= 1, got {epochs}")
    return problems


def check_store_fits(store: LogitStore, *, aug: AugConfig | None = None, seed: int | None = None,
                     num_classes: int | None = None, epochs: int | None = None,
                     data: DatasetInfo | None = None) -> None:
    """Raise :class:`DistillError` listing every way the run does not fit ``store``
    (arguments left None are not checked)."""
    problems = store_mismatches(store, aug=aug, seed=seed, num_classes=num_classes,
                                epochs=epochs)
    if problems:
        raise DistillError(f"the run does not fit store {store.root!r}:\n  "
                           + "\n  ".join(problems))
    if data is not None:
        check_same_dataset(store.manifest["dataset"], data, f"store {store.root!r}")


__all__ = ["check_store_fits", "store_augmentation", "store_mismatches"]
