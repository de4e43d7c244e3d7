"""One content fingerprint for every dataset the project reads (logit stores, feature caches).

A fingerprint changes when the samples, their order, their labels or their files change, and
stays the same when the dataset folder moves (paths are hashed relative to the root), so a
logit store or a feature cache written on one machine is recognised on another holding the
same files with the same modification times. Values are hex SHA-256.

* a dataset that states its own identity through a ``fingerprint()`` method (the embedded
  digits: split, image size, sample indices and labels, see :func:`digits_fingerprint`);
* torchvision ``ImageFolder`` / ``DatasetFolder``: class names, then per sample the path
  relative to the root, the file's size and modification time (``st_mtime_ns``) and the label;
* ``Subset`` / ``ConcatDataset``: the indices, then the parts;
* any other dataset: its type, length and the attributes torchvision datasets keep their
  sample lists in (file lists, labels, in-memory pixels such as CIFAR's ``data``), each listed
  file with its size and modification time.

**Why size and modification time, not the bytes.** Size alone missed an image replaced by
another of the same size (the old features were reused: 100.00 top-1 where fresh features
gave 66.67). Both remedies were measured on 100,000 files of 0.2-2 KB (ext4, page cache warm,
best of 3 interleaved rounds, on a 2-core machine shared with other jobs;
``bench/bench_fingerprint.py``). The whole fingerprint with one ``stat`` per file (size and
``st_mtime_ns``) took 1.81 s against 1.78 s for the size-only rule it replaces (+2%; +9% in a
second run); hashing every file's bytes instead took 4.5 s (x2.5), and that is on tiny files:
timed alone, a ``stat`` costs 4 us a file where SHA-256 costs 17 us on these files and 123 us
on image-sized ones (20-200 KB; 73 us for their first 64 KiB only), i.e. about 2.6 minutes for
ImageNet-1k's 1.28 M training images from the page cache, far longer from a network file
system, on every run, cache hits included, where ``stat`` takes seconds. So the fingerprint
uses ``stat``. Every ordinary way of changing a file (saving, copying, moving a new file in,
downloading, unpacking another archive) gives it a new modification time. Deliberately not
covered: a same-size file that also carries the old file's exact ``st_mtime_ns`` (``touch
-r``, or a copy that keeps times, ``cp -p`` / ``rsync -a``, from a source with that very time);
after such a swap, rerun with another ``--cache-dir``. The price of the choice: a copy that
does not keep modification times (``cp -r``) has another fingerprint, so the feature cache
extracts it again and a logit store refuses it until it is copied keeping them (``cp -a``,
``rsync -a``).

Logit stores written before modification times were hashed hold the size-only digest
(:func:`folder_fingerprints` returns it too), which the store checks accept for those stores.
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


def folder_fingerprints(root: str, classes, samples) -> tuple[str, str]:
    """(fingerprint, size-only fingerprint) of an ImageFolder-like tree: ``samples`` are
    (path, label) pairs under ``root``. The second is what logit stores recorded before file
    modification times were hashed (one ``stat`` per file serves both)."""
    root = os.path.abspath(root)
    digest = hashlib.sha256(b"imagefolder-stat|")
    legacy = hashlib.sha256(b"imagefolder|")
    names = "|".join(classes).encode()
    digest.update(names)
    legacy.update(names)
    for path, label in samples:
        st = os.stat(path)
        rel = os.path.relpath(path, root)
        digest.update(f"|{rel}|{st.st_size}|{st.st_mtime_ns}|{label}".encode())
        legacy.update(f"|{rel}|{st.st_size}|{label}".encode())
    return digest.hexdigest(), legacy.hexdigest()


def folder_fingerprint(root: str, classes, samples) -> str:
    """Fingerprint of an ImageFolder-like tree (see :func:`folder_fingerprints`)."""
    return folder_fingerprints(root, classes, samples)[0]


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


def _file_stamp(item) -> str:
    """``|size|mtime_ns`` of a listed file (a path, or a (path, label) pair), or '' for
    anything that names no file."""
    if isinstance(item, tuple) and item:
        item = item[0]
    if not isinstance(item, (str, os.PathLike)) or os.sep not in os.fspath(item):
        return ""
    try:
        st = os.stat(item)
    except (OSError, ValueError):
        return ""
    return f"|{st.st_size}|{st.st_mtime_ns}"


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
                digest.update(f"{item}{_file_stamp(item)}".encode())
                digest.update(b"\0")
        else:
            digest.update(str(value).encode())
    data = getattr(obj, "data", None)
    if isinstance(data, np.ndarray):  # CIFAR keeps the pixels in memory
        digest.update(data.tobytes())
    base = getattr(obj, "base", None)
    if isinstance(base, Dataset):
        digest.update(dataset_fingerprint(base).encode())
