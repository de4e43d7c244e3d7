"""Datasets the distillation tools read: an ImageFolder tree or the embedded digits.

Both return ``(PIL image, label)`` with no transform (the replay adds it). The fingerprint that
goes into a store's manifest identifies the samples and their order
(:mod:`tinyvit_backbone.fingerprint`: for ImageFolder the sorted relative paths, file sizes,
modification times and labels, not the pixels, since hashing ImageNet would take minutes on
every run; for the digits the split, size, sample indices and labels).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from torch.utils.data import Dataset

from ..fingerprint import digits_fingerprint, folder_fingerprints
from .errors import DistillError

DIGITS = "digits"


@dataclass(frozen=True)
class DatasetInfo:
    kind: str  # 'digits' | 'imagefolder'
    root: str
    split: str
    num_samples: int
    classes: tuple[str, ...]
    fingerprint: str
    # the size-only digest that stores written before modification times were hashed recorded
    legacy_fingerprint: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return dict(kind=self.kind, root=self.root, split=self.split, num_samples=self.num_samples,
                    num_classes=self.num_classes, fingerprint=self.fingerprint)


def open_dataset(data: str, split: str = "train", image_size: int = 32) -> tuple[Dataset, DatasetInfo]:
    """``data`` = 'digits' or an ImageFolder root (one sub-folder per class).

    ``split`` chooses the digits split ('train' / 'test'); for ImageFolder it is only a label
    (pass the split's own folder). ``image_size`` is the side the 8x8 digit scans are upscaled
    to (ignored for ImageFolder).
    """
    if data == DIGITS:
        from ..embedded.digits import DigitsDataset

        ds = DigitsDataset(split=split, image_size=image_size)  # no transform: (PIL, label)
        return ds, DatasetInfo(DIGITS, DIGITS, split, len(ds), tuple(ds.classes),
                               digits_fingerprint(split, image_size, ds.indices, ds.targets))
    root = os.path.abspath(data)
    if not os.path.isdir(root):
        raise DistillError(f"dataset {data!r} is neither 'digits' nor an existing folder: pass "
                           "--data digits or the path of an ImageFolder tree (root/<class>/<image>)")
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(root)
    except (FileNotFoundError, RuntimeError) as err:
        raise DistillError(f"{root!r} is not an ImageFolder tree ({err}); it needs one folder "
                           "per class holding the images") from None
    return ds, DatasetInfo("imagefolder", root, split, len(ds), tuple(ds.classes),
                           *folder_fingerprints(root, ds.classes, ds.samples))


class TransformedDataset(Dataset):
    """(image, label) with a fixed (evaluation) transform applied."""

    def __init__(self, base: Dataset, transform):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.base[i]
        return self.transform(img), label


def matches_legacy(stored: dict, info: DatasetInfo) -> bool:
    """Whether ``stored`` (a manifest's dataset section) holds the size-only fingerprint of a
    store written before file modification times were hashed, and it matches ``info``."""
    return (info.legacy_fingerprint is not None and stored.get("fingerprint") != info.fingerprint
            and stored.get("fingerprint") == info.legacy_fingerprint
            and stored.get("num_samples") == info.num_samples)


def check_same_dataset(stored: dict, info: DatasetInfo, where: str) -> None:
    """Refuse a dataset whose fingerprint differs from the one recorded in ``stored`` (a store
    written before modification times were hashed is compared by its size-only digest)."""
    if matches_legacy(stored, info):
        warnings.warn(f"{where} records the older size-only dataset fingerprint: the files "
                      "match it, but an image replaced by another of the same size would go "
                      "unnoticed for this store", stacklevel=2)
        return
    if stored.get("fingerprint") != info.fingerprint or stored.get("num_samples") != info.num_samples:
        raise DistillError(
            f"{where} was made from dataset {stored.get('root')!r} ({stored.get('num_samples')} "
            f"samples, fingerprint {str(stored.get('fingerprint'))[:12]}), but --data gives "
            f"{info.root!r} ({info.num_samples} samples, fingerprint {info.fingerprint[:12]}): "
            "pass the same dataset (same files, same order). The fingerprint covers each "
            "file's size and modification time: if this is the same data copied without its "
            "times (cp -r), copy it again keeping them (cp -a, rsync -a)")


__all__ = ["DIGITS", "DatasetInfo", "TransformedDataset", "check_same_dataset", "matches_legacy",
           "open_dataset"]
