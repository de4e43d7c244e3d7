"""Readers of the evaluation datasets' on-disk layouts: each returns a torch Dataset of
(PIL image, target) for one split, with ``classes`` where the dataset names them.

Torchvision's own classes read the standard datasets with their official splits; the readers
here cover what torchvision does not: the cdfsl benchmark's CSV layouts (ISIC2018, ChestX),
VOC2007 as multi-label classification, fixed seeded splits (EuroSAT 80/20, Caltech-101's 30
training images per class), SUN397's partition files, and user ImageFolders. Which dataset uses
which reader is the registry's business (:mod:`linear_probe.registry`); :func:`load_split`
opens one split and turns a missing or broken folder into :class:`DatasetNotFoundError`.
"""
from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not on disk; the message gives the expected path and how to get it."""


class DatasetClassesError(ValueError):
    """A split's classes cannot be used as they are (they differ from the training split's,
    or there is only one); the message lists them and says what to fix."""


class UnreadableImageError(OSError):
    """An image file that cannot be decoded (truncated, damaged); the message names the file.

    A DataLoader worker re-raises an error in the main process as ``type(err)(text)``, the text
    being "Caught ... Original Traceback ..." and the formatted traceback; the constructor keeps
    only this error's own message from it, so the command line prints one clean line."""

    def __init__(self, message: str):
        marker = f"{type(self).__name__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rstrip().rsplit(marker, 1)[-1]
        super().__init__(message)


def check_split_classes(reference: list[str], found: list[str], where: str,
                        reference_where: str, fix: str) -> None:
    """Refuse a split whose class names differ from the training split's: labels are indices
    into the training split's class list, so a missing or extra class would shift them."""
    if list(found) == list(reference):
        return
    missing = [c for c in reference if c not in set(found)]
    extra = [c for c in found if c not in set(reference)]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} of the training classes: {_names(missing)}")
    if extra:
        parts.append(f"{len(extra)} classes training does not have: {_names(extra)}")
    if not parts:
        parts.append("the same classes in another order")
    raise DatasetClassesError(
        f"{where} has other classes than {reference_where} ({'; '.join(parts)}). Every split "
        f"needs the training split's classes, or the labels would not mean the same class: "
        f"{fix}")


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------- CSV layouts
class CsvImages(Dataset):
    """Images listed in a CSV (cdfsl's ISIC2018 and ChestX readers). ``resize`` (pixels,
    square) is applied on load: cdfsl shrinks the 1024 px X-rays to 256 px first."""

    def __init__(self, files: list[str], labels: list[int], classes: list[str],
                 resize: int | None = None):
        self.files, self.targets, self.classes, self.resize = files, labels, classes, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image
        with Image.open(self.files[i]) as img:
            if self.resize:
                img = img.resize((self.resize, self.resize))
            img = img.convert("RGB")
        return img, self.targets[i]


def isic2018(d: Path, split: str, image_size) -> Dataset:
    """ISIC2018 task 3: the ground-truth CSV's one-hot columns are the 7 classes."""
    table = d / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    files = [str(d / "ISIC2018_Task3_Training_Input" / f"{r[0]}.jpg") for r in rows]
    labels = [int(np.argmax([float(v) != 0 for v in r[1:]])) for r in rows]
    return CsvImages(files, labels, header[1:])


CHESTX_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                  "Pneumothorax")


def chestx(d: Path, split: str, image_size) -> Dataset:
    """ChestX-ray8: the images with exactly one finding among cdfsl's 7 classes."""
    files, labels = [], []
    with open(d / "Data_Entry_2017.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)  # header
        for row in reader:
            findings = row[1].split("|")
            if len(findings) == 1 and findings[0] in CHESTX_CLASSES:
                files.append(str(d / "images" / row[0]))
                labels.append(CHESTX_CLASSES.index(findings[0]))
    return CsvImages(files, labels, list(CHESTX_CLASSES), resize=256)


# --------------------------------------------------------------------------- folders
def image_folder(sub: str | None = None, reference_split: str = "train") -> Callable:
    """Reader of ``<dir>/<sub>/<class>/<image>`` (``sub`` None: the split's name).

    Class indices are positions in the sorted class-folder names of ``reference_split`` (the
    training split), for every split: a split whose class folders differ from the training
    split's is refused (:func:`check_split_classes`), since torchvision's ``ImageFolder``
    numbers each folder's classes on its own and one missing folder would shift the labels of
    every class after it."""
    def build(d: Path, split: str, image_size) -> Dataset:
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import find_classes
        folder = d / (sub if sub is not None else split)
        reference = d / reference_split
        if sub is None and split != reference_split and reference.is_dir():
            check_split_classes(find_classes(str(reference))[0], find_classes(str(folder))[0],
                                f"{folder}", f"{reference}",
                                f"give {folder} one folder per class of {reference}, with "
                                "the same names")
        return ImageFolder(str(folder))
    return build


def _stratified(labels, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test.append(rng.choice(idx, int(round(test_fraction * len(idx))), replace=False))
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test), test


def eurosat(d: Path, split: str, image_size) -> Dataset:
    """EuroSAT RGB: ``all`` for episodes, or a fixed stratified 80 / 20 train / test split."""
    base = image_folder("2750")(d, split, image_size)
    if split == "all":
        return base
    train, test = _stratified(base.targets, 0.2)
    return subset(base, train if split == "train" else test)


def caltech101(d: Path, split: str, image_size) -> Dataset:
    """Caltech-101: 30 seeded training images per class, the rest for test (Kornblith)."""
    from torchvision.datasets import Caltech101
    base = Caltech101(str(d), target_type="category")
    labels = np.asarray(base.y)
    rng = np.random.default_rng(0)
    train = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), 30, replace=False)
                                    for c in np.unique(labels)]))
    return subset(base, train if split == "train" else np.setdiff1d(np.arange(len(labels)), train))


def sun397(d: Path, split: str, image_size) -> Dataset:
    """SUN397 partition 1 (``Partitions/Training_01.txt`` / ``Testing_01.txt``)."""
    from torchvision.datasets import SUN397
    base = SUN397(str(d))
    listed = (d / "Partitions" / ("Training_01.txt" if split == "train" else "Testing_01.txt")).read_text().split()
    position = {"/" + p.relative_to(base._data_dir).as_posix(): i for i, p in enumerate(base._image_files)}
    missing = [p for p in listed if p not in position]
    if missing:
        raise DatasetNotFoundError(f"SUN397: {len(missing)} images of the partition file are not "
                                   f"under {base._data_dir} (first: {missing[0]}); re-extract SUN397.tar.gz")
    return subset(base, np.sort([position[p] for p in listed]))


def torchvision_dataset(cls_name: str, split_arg: str | None = None, union: dict | None = None,
                        **fixed) -> Callable:
    """Reader through a torchvision dataset class; ``split_arg`` is how the class takes the
    split ('train_flag' for CIFAR's ``train=``), ``union`` maps one of our splits to several
    official ones (e.g. train = train + val where the weight decay is searched on our own val)."""
    def build(d: Path, split: str, image_size) -> Dataset:
        import torchvision.datasets as tvd
        cls = getattr(tvd, cls_name)
        made = []
        for part in (union or {}).get(split, (split,)):
            kwargs = dict(fixed)
            if split_arg == "train_flag":
                kwargs["train"] = part == "train"
            elif split_arg is not None:
                kwargs[split_arg] = part
            made.append(cls(str(d), **kwargs))
        return made[0] if len(made) == 1 else concat(made)
    return build


VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep",
               "sofa", "train", "tvmonitor")


def voc_targets(annotation: dict) -> np.ndarray:
    """VOC XML (as torchvision parses it) -> (20,) int8: 1 present, -1 only "difficult"
    instances (ignored, as the devkit does), 0 absent."""
    objects = annotation["annotation"].get("object", [])
    if isinstance(objects, dict):
        objects = [objects]
    out = np.zeros(len(VOC_CLASSES), np.int8)
    for obj in objects:
        c = VOC_CLASSES.index(obj["name"])
        if str(obj.get("difficult", "0")) == "0":
            out[c] = 1
        elif out[c] == 0:
            out[c] = -1
    return out


class VOCClassification(Dataset):
    """VOC2007 detection annotations as 20-class multi-label targets (:func:`voc_targets`)."""

    def __init__(self, d: Path, split: str):
        from torchvision.datasets import VOCDetection
        self.base = VOCDetection(str(d), year="2007", image_set="trainval" if split == "train" else "test")
        self.classes = list(VOC_CLASSES)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, annotation = self.base[i]
        return img, voc_targets(annotation)


def voc2007(d: Path, split: str, image_size) -> Dataset:
    return VOCClassification(d, split)


def digits(d: Path, split: str, image_size) -> Dataset:
    """The embedded digits, generated at ``image_size`` pixels (default 32)."""
    from tinyvit_backbone.embedded.digits import DigitsDataset
    return DigitsDataset(split=split, image_size=image_size or 32)


# --------------------------------------------------------------------------- helpers
def subset(base: Dataset, indices) -> Subset:
    """``Subset`` that keeps the base's ``classes``."""
    sub = Subset(base, [int(i) for i in indices])
    sub.classes = getattr(base, "classes", None)
    return sub


def concat(parts: list[Dataset]) -> ConcatDataset:
    """``ConcatDataset`` that keeps the first part's ``classes``; the parts must name the same
    classes (each part's labels index its own list)."""
    first = class_names(parts[0])
    for part in parts[1:]:
        if first is not None and class_names(part) is not None:
            check_split_classes(first, class_names(part), f"part {type(part).__name__} of a "
                                "joined split", "its first part", "the dataset's split files "
                                "are incomplete: download the dataset again")
    cat = ConcatDataset(parts)
    cat.classes = getattr(parts[0], "classes", None)
    return cat


def sample_path(ds: Dataset, i: int) -> str | None:
    """The file row ``i`` of ``ds`` is read from, where the dataset keeps its file list
    (ImageFolder, the CSV readers, torchvision's datasets; through ``Subset`` /
    ``ConcatDataset``), else None."""
    import bisect
    if isinstance(ds, Subset):
        return sample_path(ds.dataset, int(ds.indices[i]))
    if isinstance(ds, ConcatDataset):
        part = bisect.bisect_right(ds.cumulative_sizes, i)
        return sample_path(ds.datasets[part], i - (ds.cumulative_sizes[part - 1] if part else 0))
    for attr in ("samples", "_samples", "files", "_image_files", "_images", "images"):
        items = getattr(ds, attr, None)
        if isinstance(items, (list, tuple)) and len(items) == len(ds):
            item = items[i]
            return str(item[0] if isinstance(item, tuple) else item)
    base = getattr(ds, "base", None)
    return sample_path(base, i) if isinstance(base, Dataset) else None


def dataset_labels(ds: Dataset) -> np.ndarray:
    """Integer labels of every row, read from the dataset's label list where it keeps one
    (``targets``, torchvision's ``_labels`` / ``y``; through ``Subset`` / ``ConcatDataset``),
    else by loading each row."""
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[np.asarray(ds.indices, np.int64)]
    if isinstance(ds, ConcatDataset):
        return np.concatenate([dataset_labels(part) for part in ds.datasets])
    for attr in ("targets", "_labels", "y"):
        values = getattr(ds, attr, None)
        if values is not None and not callable(values) and len(values) == len(ds):
            return np.asarray(values, np.int64)
    samples = getattr(ds, "_samples", None)  # (path, label) pairs, e.g. StanfordCars
    if isinstance(samples, list) and len(samples) == len(ds):
        return np.asarray([s[1] for s in samples], np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], np.int64)


def class_names(ds: Dataset) -> list[str] | None:
    names = getattr(ds, "classes", None)
    return [str(c) for c in names] if names is not None else None


def load_split(spec, split: str, data_root=None, image_size: int | None = None) -> Dataset:
    """The raw dataset (PIL image, target) of ``split`` of ``spec`` (a
    :class:`linear_probe.registry.DatasetSpec`); a clear :class:`DatasetNotFoundError`, saying
    how to get it, when it is not on disk or is incomplete."""
    from .downloads import how_to_get
    from .paths import default_data_root

    data_root = data_root if data_root is not None else default_data_root()
    if split not in spec.splits:
        raise ValueError(f"{spec.name} has splits {list(spec.splits)}, not {split!r}")
    missing = spec.missing_path(data_root)
    if missing is not None:
        raise DatasetNotFoundError(f"{spec.title} ({spec.name}) not found: expected {missing}. "
                                   + how_to_get(spec, data_root))
    try:
        ds = spec.build(spec.directory(data_root), split, image_size)
    except DatasetNotFoundError:
        raise
    except (RuntimeError, FileNotFoundError, OSError) as err:
        raise DatasetNotFoundError(
            f"{spec.title} ({spec.name}) under {spec.directory(data_root)} is incomplete or "
            f"corrupt ({type(err).__name__}: {err}). " + how_to_get(spec, data_root)) from err
    names = class_names(ds)
    if split == spec.train_split and not spec.multilabel and names is not None and len(names) < 2:
        fix = (f"give {spec.directory(data_root)}/{split} one folder per class"
               if spec.user_folder else "check the dataset on disk")
        what = spec.name if spec.title == spec.name else f"{spec.title} ({spec.name})"
        raise DatasetClassesError(
            f"{what} {split} split has a single class ({_names(names)}, "
            f"{len(ds)} images): a classifier of one class scores 100% on anything, so there "
            f"is nothing to measure. Use data with two classes or more: {fix}")
    return ds
