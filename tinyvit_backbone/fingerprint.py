"""One content fingerprint for every dataset the project reads (logit stores, feature caches).

A fingerprint changes when the samples, their order or their labels change, and stays the same
when the dataset folder moves (paths are hashed relative to the root), so a logit store or a
feature cache written on one machine is recognised on another. Values are hex SHA-256.

* a dataset that states its own identity through a ``fingerprint()`` method (the embedded
  digits: split, image size, sample indices and labels, see :func:`digits_fingerprint`);
* torchvision ``ImageFolder`` / ``DatasetFolder``: class names, then per sample the path
  relative to the root, the file size and the label (sizes catch a replaced image without
  reading every byte);
* ``Subset`` / ``ConcatDataset``: the indices, then the parts;
* any other dataset: its type, length and the attributes torchvision datasets keep their
  sample lists in (file lists, labels, in-memory pixels such as CIFAR's ``data``).

The digits and ImageFolder digests are those that logit stores of format version 1 recorded,
so existing stores keep matching.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

from .embedded.digits import digits_fingerprint  # noqa: F401  (the digits' rule, kept with them)

# Attributes torchvision datasets keep their sample lists in.
SAMPLE_ATTRS = ("samples", "_samples", "_image_files", "_images", "_labels", "targets",
                "images", "annotations", "files", "y", "index", "indices", "split",
                "image_size")


def folder_fingerprint(root: str, classes, samples) -> str:
    """Fingerprint of an ImageFolder-like tree: ``samples`` are (path, label) pairs under
    ``root``."""
    root = os.path.abspath(root)
    digest = hashlib.sha256(b"imagefolder|")
    digest.update("|".join(classes).encode())
    for path, label in samples:
        digest.update(f"|{os.path.relpath(path, root)}|{os.path.getsize(path)}|{label}".encode())
    return digest.hexdigest()


def dataset_fingerprint(ds: Dataset) -> str:
    """Fingerprint of any dataset object (see the module docstring for what is hashed)."""
    from torchvision.datasets import DatasetFolder

    own = getattr(ds, "fingerprint", None)
    if callable(own):
        return own()
    if isinstance(ds, DatasetFolder):
        return folder_fingerprint(ds.root, ds.classes, ds.samples)
    digest = hashlib.sha256()
    _visit(ds, digest)
    return digest.hexdigest()


def _visit(obj, digest) -> None:
    digest.update(type(obj).__name__.encode())
    digest.update(str(len(obj)).encode())
    if isinstance(obj, Subset):
        digest.update(np.asarray(obj.indices, np.int64).tobytes())
        digest.update(dataset_fingerprint(obj.dataset).encode())
        return
    if isinstance(obj, ConcatDataset):
        for part in obj.datasets:
            digest.update(dataset_fingerprint(part).encode())
        return
    for attr in SAMPLE_ATTRS:
        value = getattr(obj, attr, None)
        if value is None or callable(value):
            continue
        digest.update(attr.encode())
        if isinstance(value, np.ndarray):
            digest.update(value.tobytes())
        elif isinstance(value, (list, tuple)):
            for item in value:
                digest.update(str(item).encode())
                digest.update(b"\0")
        else:
            digest.update(str(value).encode())
    data = getattr(obj, "data", None)
    if isinstance(data, np.ndarray):  # CIFAR keeps the pixels in memory
        digest.update(data.tobytes())
    base = getattr(obj, "base", None)
    if isinstance(base, Dataset):
        digest.update(dataset_fingerprint(base).encode())
