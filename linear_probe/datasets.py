"""Evaluation datasets: the paper's settings, the standard transfer suite, user folders, digits.

Nothing is downloaded at run time. Every dataset lives under ``<data-root>/<folder>`` (data root:
``--data-root``, default ``$TINYVIT_DATA`` or ``./data``); a missing one raises
:class:`DatasetNotFoundError` naming the exact path that must exist and the command or URL that
puts it there. ``python -m linear_probe datasets`` lists them all with their state.

Paper settings (TinyViT, Wu et al. 2022):

* ``imagenet1k`` — linear probe, MoCo v3 recipe. ImageFolder layout
  ``imagenet/{train,val}/<wnid>/*.JPEG`` (the layout MoCo v3's ``main_lincls.py`` reads).
* cdfsl few-shot (Guo et al. 2020), read from the benchmark's published layouts:
  ``cropdisease`` (``CropDiseases/dataset/train/<class>/``), ``eurosat`` (``EuroSAT/2750/<class>/``),
  ``isic2018`` (``ISIC/ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv``
  + ``ISIC/ISIC2018_Task3_Training_Input/<image>.jpg``; 7 classes from the one-hot columns) and
  ``chestx`` (``chestX/Data_Entry_2017.csv`` + ``chestX/images/``; the 7 classes cdfsl keeps:
  images with exactly one finding among Atelectasis, Cardiomegaly, Effusion, Infiltration,
  Mass, Nodule, Pneumothorax). Episodes sample the whole set (split ``all``), preprocessed as
  cdfsl does: resize to 1.15 x size (square), centre crop, ImageNet mean / std.

Transfer suite (Kornblith et al. 2019 metrics; torchvision loaders with official splits):
CIFAR-10/100, Food-101, SUN397 (partition 1), Stanford Cars, FGVC Aircraft (variants),
VOC2007 (multi-label, 11-point mAP), DTD (partition 1), Oxford-IIIT Pets, Caltech-101 (30 train
images per class, rest test), Flowers-102, EuroSAT (fixed stratified 80/20). Where the official
split has train and val, "train" is their union: the weight decay is searched on a val carved
from it. Birdsnap is left out: it has no torchvision loader and most of its image URLs are dead.

User data: ``imagefolder:<dir>`` with ``<dir>/train/<class>/*`` and ``<dir>/test/<class>/*``
(or ``val``). Offline: ``digits`` — scikit-learn's handwritten digits, upscaled
(:class:`tinyvit_backbone.embedded.digits.DigitsDataset`, 1,257 train / 540 test, 32 px by
default).
"""
from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, Subset

METRIC_NAMES = {"top1": "top-1 accuracy", "mean_per_class": "mean per-class accuracy",
                "map11": "11-point mAP"}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not on disk; the message gives the expected path and how to get it."""


def default_data_root() -> str:
    return os.environ.get("TINYVIT_DATA", "data")


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry. ``build(dir, split, image_size)`` returns a torch Dataset of
    (PIL image, target); ``dir`` is ``<data-root>/<folder>``; ``check`` (relative to dir) must
    exist; ``get`` tells how to obtain it (``{dir}`` is substituted)."""

    name: str
    title: str
    group: str  # paper-linear | paper-fewshot | transfer | user | embedded
    metric: str
    splits: tuple[str, ...]
    folder: str
    check: tuple[str, ...]
    get: str
    build: Callable[[Path, str, int | None], Dataset]
    train_split: str | None = "train"
    test_split: str | None = "test"
    episodes_split: str | None = "test"
    multilabel: bool = False
    transform_style: str = "model"  # model (timm eval) | cdfsl | native (digits)
    protocol: str = "lbfgs"  # lbfgs sweep | mocov3 (SGD recipe)
    default_image_size: int | None = None

    def directory(self, data_root: str | os.PathLike) -> Path:
        return Path(data_root) / self.folder if self.folder else Path(data_root)

    def missing_path(self, data_root) -> Path | None:
        """The first path the dataset needs that does not exist (None: all there)."""
        d = self.directory(data_root)
        return next((d / rel for rel in self.check if not (d / rel).exists()), None)

    def missing_message(self, data_root) -> str | None:
        """None if present; else the exact path that is missing and how to get it."""
        path = self.missing_path(data_root)
        if path is None:
            return None
        return (f"{self.title} ({self.name}) not found: expected {path}. "
                + self.get.format(dir=self.directory(data_root), root=data_root))


# --------------------------------------------------------------------------- loaders
class _CsvImages(Dataset):
    """Images listed in a CSV (cdfsl's ISIC2018 and ChestX readers)."""

    def __init__(self, files: list[str], labels: list[int], classes: list[str],
                 resize: int | None = None):
        self.files, self.targets, self.classes, self.resize = files, labels, classes, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image
        with Image.open(self.files[i]) as img:
            if self.resize:  # cdfsl resizes the 1024 px X-rays to 256 px before anything else
                img = img.resize((self.resize, self.resize))
            img = img.convert("RGB")
        return img, self.targets[i]


def _isic(d: Path, split: str, image_size) -> Dataset:
    table = d / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    classes = header[1:]
    files = [str(d / "ISIC2018_Task3_Training_Input" / f"{r[0]}.jpg") for r in rows]
    labels = [int(np.argmax([float(v) != 0 for v in r[1:]])) for r in rows]
    return _CsvImages(files, labels, classes)


CHESTX_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                  "Pneumothorax")


def _chestx(d: Path, split: str, image_size) -> Dataset:
    files, labels = [], []
    with open(d / "Data_Entry_2017.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)  # header
        for row in reader:
            findings = row[1].split("|")
            if len(findings) == 1 and findings[0] in CHESTX_CLASSES:
                files.append(str(d / "images" / row[0]))
                labels.append(CHESTX_CLASSES.index(findings[0]))
    return _CsvImages(files, labels, list(CHESTX_CLASSES), resize=256)


def _image_folder(sub: str) -> Callable:
    def build(d: Path, split: str, image_size) -> Dataset:
        from torchvision.datasets import ImageFolder
        return ImageFolder(str(d / sub))
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


def _eurosat(d: Path, split: str, image_size) -> Dataset:
    base = _image_folder("2750")(d, split, image_size)
    if split == "all":
        return base
    train, test = _stratified(base.targets, 0.2)
    return _subset(base, train if split == "train" else test)


def _caltech101(d: Path, split: str, image_size) -> Dataset:
    from torchvision.datasets import Caltech101
    base = Caltech101(str(d), target_type="category")
    labels = np.asarray(base.y)
    rng = np.random.default_rng(0)
    train = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), 30, replace=False)
                                    for c in np.unique(labels)]))
    return _subset(base, train if split == "train" else np.setdiff1d(np.arange(len(labels)), train))


def _sun397(d: Path, split: str, image_size) -> Dataset:
    from torchvision.datasets import SUN397
    base = SUN397(str(d))
    listed = (d / "Partitions" / ("Training_01.txt" if split == "train" else "Testing_01.txt")).read_text().split()
    position = {"/" + p.relative_to(base._data_dir).as_posix(): i for i, p in enumerate(base._image_files)}
    missing = [p for p in listed if p not in position]
    if missing:
        raise DatasetNotFoundError(f"SUN397: {len(missing)} images of the partition file are not "
                                   f"under {base._data_dir} (first: {missing[0]}); re-extract SUN397.tar.gz")
    return _subset(base, np.sort([position[p] for p in listed]))


def _torchvision(cls_name: str, split_arg: str | None = None, union: dict | None = None, **fixed) -> Callable:
    """Builder for a torchvision dataset; ``union`` maps our split to several official ones."""
    def build(d: Path, split: str, image_size) -> Dataset:
        import torchvision.datasets as tvd
        cls = getattr(tvd, cls_name)
        parts = (union or {}).get(split, (split,))
        made = []
        for part in parts:
            kwargs = dict(fixed)
            if split_arg == "train_flag":
                kwargs["train"] = part == "train"
            elif split_arg is not None:
                kwargs[split_arg] = part
            made.append(cls(str(d), **kwargs))
        return made[0] if len(made) == 1 else _concat(made)
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


class _VOCClassification(Dataset):
    def __init__(self, d: Path, split: str):
        from torchvision.datasets import VOCDetection
        self.base = VOCDetection(str(d), year="2007", image_set="trainval" if split == "train" else "test")
        self.classes = list(VOC_CLASSES)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, annotation = self.base[i]
        return img, voc_targets(annotation)


class _Digits(Dataset):
    def __init__(self, split: str, image_size: int | None):
        from tinyvit_backbone.embedded.digits import DigitsDataset
        self.base = DigitsDataset(split=split, image_size=image_size or 32)
        self.classes = list(self.base.classes)
        self.targets = self.base.targets

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i]


def _subset(base: Dataset, indices) -> Subset:
    sub = Subset(base, [int(i) for i in indices])
    sub.classes = getattr(base, "classes", None)
    return sub


def _concat(parts: list[Dataset]) -> ConcatDataset:
    cat = ConcatDataset(parts)
    cat.classes = getattr(parts[0], "classes", None)
    return cat


def _tv_get(cls_name: str, **kwargs) -> str:
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return (f"Download it (needs internet) with: python -c \"from torchvision.datasets import "
            f"{cls_name}; {cls_name}('{{dir}}'{args}, download=True)\"")


# --------------------------------------------------------------------------- registry
_CDFSL_NOTE = " (cdfsl layout, see https://github.com/IBM/cdfsl-benchmark)"
REGISTRY: dict[str, DatasetInfo] = {}


def _register(info: DatasetInfo) -> None:
    REGISTRY[info.name] = info


_register(DatasetInfo(
    "imagenet1k", "ImageNet-1k", "paper-linear", "top1", ("train", "val"), "imagenet",
    ("train", "val"),
    "Put the ILSVRC2012 images in ImageFolder layout: {dir}/train/<wnid>/*.JPEG and "
    "{dir}/val/<wnid>/*.JPEG (the val images sorted into class folders, e.g. with "
    "https://raw.githubusercontent.com/soumith/imagenetloader.torch/master/valprep.sh); the "
    "archives come from https://image-net.org/download.php after registration.",
    lambda d, split, s: _image_folder(split)(d, split, s),
    test_split="val", episodes_split=None, protocol="mocov3"))
_register(DatasetInfo(
    "cropdisease", "CropDisease (cdfsl)", "paper-fewshot", "top1", ("all",), "CropDiseases",
    ("dataset/train",),
    "Download https://www.kaggle.com/saroz014/plant-disease (kaggle datasets download -d "
    "saroz014/plant-disease) and unzip it into {dir} so that {dir}/dataset/train/<class>/ holds "
    "the images" + _CDFSL_NOTE + ".",
    _image_folder("dataset/train"), train_split=None, test_split=None, episodes_split="all",
    transform_style="cdfsl"))
_register(DatasetInfo(
    "eurosat", "EuroSAT (RGB)", "paper-fewshot", "top1", ("all", "train", "test"), "EuroSAT",
    ("2750",),
    "Download http://madm.dfki.de/files/sentinel/EuroSAT.zip and unzip it into {dir} so that "
    "{dir}/2750/<class>/*.jpg exists" + _CDFSL_NOTE + ".",
    _eurosat, episodes_split="all", transform_style="cdfsl"))
_register(DatasetInfo(
    "isic2018", "ISIC2018 task 3 (cdfsl)", "paper-fewshot", "top1", ("all",), "ISIC",
    ("ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
     "ISIC2018_Task3_Training_Input"),
    "Download ISIC2018_Task3_Training_Input.zip and ISIC2018_Task3_Training_GroundTruth.zip "
    "from https://challenge.isic-archive.com/data/#2018 and unzip both into {dir}" + _CDFSL_NOTE + ".",
    _isic, train_split=None, test_split=None, episodes_split="all", transform_style="cdfsl"))
_register(DatasetInfo(
    "chestx", "ChestX-ray8 (cdfsl)", "paper-fewshot", "top1", ("all",), "chestX",
    ("Data_Entry_2017.csv", "images"),
    "Download https://www.kaggle.com/nih-chest-xrays/data (kaggle datasets download -d "
    "nih-chest-xrays/data), put Data_Entry_2017.csv in {dir} and all images_*/images/*.png in "
    "{dir}/images/" + _CDFSL_NOTE + ".",
    _chestx, train_split=None, test_split=None, episodes_split="all", transform_style="cdfsl"))

_register(DatasetInfo(
    "cifar10", "CIFAR-10", "transfer", "top1", ("train", "test"), "cifar10",
    ("cifar-10-batches-py",), _tv_get("CIFAR10"),
    _torchvision("CIFAR10", "train_flag")))
_register(DatasetInfo(
    "cifar100", "CIFAR-100", "transfer", "top1", ("train", "test"), "cifar100",
    ("cifar-100-python",), _tv_get("CIFAR100"),
    _torchvision("CIFAR100", "train_flag")))
_register(DatasetInfo(
    "food101", "Food-101", "transfer", "top1", ("train", "test"), "food101",
    ("food-101/meta",), _tv_get("Food101"), _torchvision("Food101", "split")))
_register(DatasetInfo(
    "sun397", "SUN397", "transfer", "top1", ("train", "test"), "sun397",
    ("SUN397/ClassName.txt", "Partitions/Training_01.txt"),
    _tv_get("SUN397") + "; then download "
    "https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip and unzip it so "
    "that {dir}/Partitions/Training_01.txt exists.", _sun397))
_register(DatasetInfo(
    "stanford_cars", "Stanford Cars", "transfer", "top1", ("train", "test"), "stanford_cars",
    ("stanford_cars/devkit", "stanford_cars/cars_train", "stanford_cars/cars_test",
     "stanford_cars/cars_test_annos_withlabels.mat"),
    "The original URLs are offline: get cars_train, cars_test, devkit and "
    "cars_test_annos_withlabels.mat (e.g. the Kaggle mirror "
    "https://www.kaggle.com/datasets/rickyyyyyyy/torchvision-stanford-cars) and place them in "
    "{dir}/stanford_cars/.", _torchvision("StanfordCars", "split")))
_register(DatasetInfo(
    "fgvc_aircraft", "FGVC Aircraft (variants)", "transfer", "mean_per_class", ("train", "test"),
    "fgvc_aircraft", ("fgvc-aircraft-2013b/data",), _tv_get("FGVCAircraft"),
    _torchvision("FGVCAircraft", "split", union={"train": ("trainval",)},
                 annotation_level="variant")))
_register(DatasetInfo(
    "voc2007", "PASCAL VOC2007 classification", "transfer", "map11", ("train", "test"), "voc",
    ("VOCdevkit/VOC2007/ImageSets/Main/trainval.txt", "VOCdevkit/VOC2007/ImageSets/Main/test.txt"),
    "Download (needs internet) with: python -c \"from torchvision.datasets import VOCDetection; "
    "VOCDetection('{dir}', year='2007', image_set='trainval', download=True); "
    "VOCDetection('{dir}', year='2007', image_set='test', download=True)\"",
    lambda d, split, s: _VOCClassification(d, split), multilabel=True))
_register(DatasetInfo(
    "dtd", "Describable Textures (partition 1)", "transfer", "top1", ("train", "test"), "dtd",
    ("dtd/dtd/labels",), _tv_get("DTD"),
    _torchvision("DTD", "split", union={"train": ("train", "val")}, partition=1)))
_register(DatasetInfo(
    "pets", "Oxford-IIIT Pets", "transfer", "mean_per_class", ("train", "test"), "pets",
    ("oxford-iiit-pet/annotations",), _tv_get("OxfordIIITPet"),
    _torchvision("OxfordIIITPet", "split", union={"train": ("trainval",)})))
_register(DatasetInfo(
    "caltech101", "Caltech-101", "transfer", "mean_per_class", ("train", "test"), "caltech101",
    ("caltech101/101_ObjectCategories",), _tv_get("Caltech101"), _caltech101))
_register(DatasetInfo(
    "flowers102", "Oxford Flowers-102", "transfer", "mean_per_class", ("train", "test"),
    "flowers102", ("flowers-102/jpg",), _tv_get("Flowers102"),
    _torchvision("Flowers102", "split", union={"train": ("train", "val")})))
_register(DatasetInfo(
    "digits", "Handwritten digits (scikit-learn, embedded)", "embedded", "top1",
    ("train", "test", "all"), "", (), "It ships with scikit-learn; nothing to download.",
    lambda d, split, s: _Digits(split, s), transform_style="native", default_image_size=32))


def _user_folder(path: str) -> DatasetInfo:
    root = Path(path)
    test = "test" if (root / "test").is_dir() or not (root / "val").is_dir() else "val"
    return DatasetInfo(
        f"imagefolder:{path}", f"ImageFolder {path}", "user", "top1", ("train", test), "",
        ("train", test),
        "Arrange your images as {dir}/train/<class>/<image> and {dir}/test/<class>/<image> "
        "(or val/ instead of test/).",
        lambda d, split, s: _image_folder(split)(d, split, s), test_split=test)


def get_info(name: str, data_root=None) -> DatasetInfo:
    """Registry entry for ``name`` (or ``imagefolder:<dir>``)."""
    if name.startswith("imagefolder:"):
        folder = name[len("imagefolder:"):]
        info = _user_folder(folder)
        # the folder is the dataset's own directory, independent of --data-root
        return DatasetInfo(**{**info.__dict__, "folder": os.path.abspath(folder)})
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)} or "
                         "imagefolder:<dir> (python -m linear_probe datasets lists them)")
    return REGISTRY[name]


def load_split(info: DatasetInfo, split: str, data_root=None, image_size: int | None = None) -> Dataset:
    """The raw dataset (PIL image, target) of ``split``; clear error when it is not on disk."""
    data_root = data_root if data_root is not None else default_data_root()
    if split not in info.splits:
        raise ValueError(f"{info.name} has splits {list(info.splits)}, not {split!r}")
    message = info.missing_message(data_root)
    if message:
        raise DatasetNotFoundError(message)
    try:
        return info.build(info.directory(data_root), split, image_size)
    except (RuntimeError, FileNotFoundError, OSError) as err:
        if isinstance(err, DatasetNotFoundError):
            raise
        raise DatasetNotFoundError(
            f"{info.title} ({info.name}) under {info.directory(data_root)} is incomplete or "
            f"corrupt ({type(err).__name__}: {err}). " + info.get.format(dir=info.directory(data_root),
                                                                         root=data_root)) from err


# --------------------------------------------------------------------------- identity
_FINGERPRINT_ATTRS = ("samples", "_samples", "_image_files", "_images", "_labels", "targets",
                      "images", "annotations", "files", "y", "index", "indices", "split",
                      "image_size")


def fingerprint(ds: Dataset) -> str:
    """sha256 prefix over what identifies the dataset's samples (file lists, labels, subset
    indices, array contents): a changed folder or label file gives a new feature-cache key."""
    h = hashlib.sha256()

    def visit(obj) -> None:
        h.update(type(obj).__name__.encode())
        h.update(str(len(obj)).encode())
        if isinstance(obj, Subset):
            h.update(np.asarray(obj.indices, np.int64).tobytes())
            visit(obj.dataset)
            return
        if isinstance(obj, ConcatDataset):
            for part in obj.datasets:
                visit(part)
            return
        for attr in _FINGERPRINT_ATTRS:
            value = getattr(obj, attr, None)
            if value is None or callable(value):
                continue
            h.update(attr.encode())
            if isinstance(value, np.ndarray):
                h.update(value.tobytes())
            elif isinstance(value, (list, tuple)):
                for item in value:
                    h.update(str(item).encode())
                    h.update(b"\0")
            else:
                h.update(str(value).encode())
        data = getattr(obj, "data", None)
        if isinstance(data, np.ndarray):  # CIFAR keeps the pixels in memory
            h.update(data.tobytes())
        if hasattr(obj, "base") and isinstance(obj.base, Dataset):
            visit(obj.base)

    visit(ds)
    return h.hexdigest()[:16]


def class_names(ds: Dataset) -> list[str] | None:
    names = getattr(ds, "classes", None)
    return [str(c) for c in names] if names is not None else None


# --------------------------------------------------------------------------- preprocessing
class _ToRGB:
    """PIL image -> RGB (grey Caltech / X-ray images, RGBA PNGs); picklable for workers."""

    def __call__(self, img):
        return img if getattr(img, "mode", "RGB") == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


@dataclass(frozen=True)
class Preprocessing:
    """Per-image ``transform`` (PIL -> uint8 CHW tensor: resize / crop only) and the per-batch
    ``normalise`` (float, / 255, mean / std) that runs where the model runs — on the GPU when
    there is one, like timm's prefetcher: a quarter of the host-to-device bytes, and no
    per-image float ops on the loading side. ``description`` goes into the cache key."""

    transform: Callable
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: dict

    def normalise(self, batch):
        import torch

        from .device import cpu_threads
        mean = torch.tensor(self.mean, device=batch.device).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.std, device=batch.device).view(1, -1, 1, 1) * 255.0
        # one thread on CPU: a memory-bound op gains nothing from more, and on a busy machine
        # OpenMP's barrier made it 100x slower with two
        with cpu_threads(1 if batch.device.type == "cpu" else None):
            return (batch.float() - mean) / std


def eval_transform(info: DatasetInfo, data_config: dict) -> Preprocessing:
    """The deterministic preprocessing for ``info`` and the model's ``data_config``."""
    import torchvision.transforms as T
    size = int(data_config["input_size"][-1])
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    if info.transform_style == "native":
        desc = {"style": "native", "size": size}
        steps = [_ToRGB(), T.PILToTensor()]
    elif info.transform_style == "cdfsl":
        resize = int(size * 1.15)
        desc = {"style": "cdfsl", "size": size, "resize": resize}
        steps = [_ToRGB(), T.Resize((resize, resize)), T.CenterCrop(size), T.PILToTensor()]
    else:
        from timm.data import create_transform
        cfg = {k: data_config[k] for k in ("input_size", "interpolation", "crop_pct", "crop_mode")
               if k in data_config}
        # use_prefetcher: resize + crop + uint8 tensor, normalisation left to `normalise`
        timm_tf = create_transform(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()},
                                   is_training=False, use_prefetcher=True)
        desc = {"style": "timm-eval", **cfg}
        steps = [_ToRGB(), timm_tf]
    desc.update(mean=list(mean), std=list(std))
    return Preprocessing(T.Compose(steps), mean, std, desc)


def torch_from_numpy(a: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(a))


class Preprocessed(Dataset):
    """(uint8 CHW tensor, target) pairs: ``transform`` applied to the raw dataset's images;
    integer targets, or int8 vectors for multi-label data."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, target = self.base[i]
        if isinstance(target, np.ndarray):  # multi-label vector
            return self.transform(img), torch_from_numpy(target)
        return self.transform(img), int(target)  # ints collate far faster than NumPy scalars
