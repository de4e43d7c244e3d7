"""The evaluation datasets by name, their groups, and where each lives on disk.

Every dataset lives under ``<data-root>/<folder>`` (data root: ``--data-root``, default
``$TINYVIT_DATA`` or ``./data``). ``python -m linear_probe datasets`` lists them all with their
state; ``--download`` fetches those torchvision can (:mod:`linear_probe.downloads`).

Groups (``--dataset`` takes names and groups, like CLIP_benchmark's):

* ``paper-linear`` — the paper's linear-probe datasets (Table 5): CIFAR-10, CIFAR-100,
  Flowers-102, Stanford Cars, Oxford-IIIT Pets (``mocov3`` protocol; MoCo v3's own splits:
  Flowers' train + val for training, Pets' trainval).
* ``paper-fewshot`` — the cdfsl benchmark (Guo et al. 2020) read from its published layouts:
  ISIC2018 (7 classes from the one-hot columns), EuroSAT (RGB), CropDisease, ChestX (the 7
  classes cdfsl keeps: images with exactly one finding among Atelectasis, Cardiomegaly,
  Effusion, Infiltration, Mass, Nodule, Pneumothorax). Episodes sample the whole set (split
  ``all``).
* ``transfer`` — Kornblith et al. 2019's suite with its metrics (mean per-class accuracy for
  Aircraft, Pets, Caltech-101, Flowers; 11-point mAP for VOC2007; top-1 otherwise), official
  splits through torchvision; where the official split has train and val, "train" is their
  union (the weight decay is searched on a val carved from it). Birdsnap is left out: it has
  no torchvision loader and most of its image URLs are dead.
* ``imagenet`` — ImageNet-1k (``imagenet/{train,val}/<wnid>/*.JPEG``, the layout MoCo v3's
  ``main_lincls.py`` reads).
* ``embedded`` — ``digits``: scikit-learn's handwritten digits, upscaled
  (:class:`tinyvit_backbone.embedded.digits.DigitsDataset`, 1,257 train / 540 test, 32 px).

User data: ``imagefolder:<dir>`` with ``<dir>/train/<class>/*`` and ``<dir>/test/<class>/*``
(or ``val``).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import loaders
from .results import DATASET_TITLES, PAPER_FEWSHOT, PAPER_LINEAR


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry.

    ``build(dir, split, image_size)`` returns a torch Dataset of (PIL image, target), ``dir``
    being ``<data-root>/<folder>``; every path of ``check`` (relative to dir) must exist.
    ``metric`` is the dataset's official metric (used by the ``clip-lbfgs`` protocol);
    ``style`` its default eval preprocessing for the fast protocols (``model``: the model's
    timm eval transform, ``cdfsl``: cdfsl's resize and centre crop, ``native``: images made at
    the model's size). ``train_split`` / ``test_split`` / ``episodes_split`` are None where the
    dataset has no such split."""

    name: str
    folder: str
    check: tuple[str, ...]
    splits: tuple[str, ...]
    build: Callable[[Path, str, int | None], object]
    metric: str = "top1"
    train_split: str | None = "train"
    test_split: str | None = "test"
    episodes_split: str | None = "test"
    multilabel: bool = False
    style: str = "model"
    default_image_size: int | None = None

    @property
    def title(self) -> str:
        return DATASET_TITLES.get(self.name, self.name)

    @property
    def user_folder(self) -> bool:
        return self.name.startswith(IMAGEFOLDER)

    def directory(self, data_root: str | os.PathLike) -> Path:
        """Where the dataset lives (a user folder is its own directory, whatever the root)."""
        if os.path.isabs(self.folder):
            return Path(self.folder)
        return Path(data_root) / self.folder if self.folder else Path(data_root)

    def missing_path(self, data_root) -> Path | None:
        """The first path the dataset needs that does not exist (None: all there)."""
        d = self.directory(data_root)
        return next((d / rel for rel in self.check if not (d / rel).exists()), None)


IMAGEFOLDER = "imagefolder:"

REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("imagenet1k", "imagenet", ("train", "val"), ("train", "val"),
                loaders.image_folder(), test_split="val", episodes_split=None),
    DatasetSpec("cropdisease", "CropDiseases", ("dataset/train",), ("all",),
                loaders.image_folder("dataset/train"), train_split=None, test_split=None,
                episodes_split="all", style="cdfsl"),
    DatasetSpec("eurosat", "eurosat", ("2750",), ("all", "train", "test"), loaders.eurosat,
                episodes_split="all", style="cdfsl"),
    DatasetSpec("isic2018", "ISIC",
                ("ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv",
                 "ISIC2018_Task3_Training_Input"), ("all",), loaders.isic2018,
                train_split=None, test_split=None, episodes_split="all", style="cdfsl"),
    DatasetSpec("chestx", "chestX", ("Data_Entry_2017.csv", "images"), ("all",), loaders.chestx,
                train_split=None, test_split=None, episodes_split="all", style="cdfsl"),
    DatasetSpec("cifar10", "cifar10", ("cifar-10-batches-py",), ("train", "test"),
                loaders.torchvision_dataset("CIFAR10", "train_flag")),
    DatasetSpec("cifar100", "cifar100", ("cifar-100-python",), ("train", "test"),
                loaders.torchvision_dataset("CIFAR100", "train_flag")),
    DatasetSpec("food101", "food101", ("food-101/meta",), ("train", "test"),
                loaders.torchvision_dataset("Food101", "split")),
    DatasetSpec("sun397", "sun397", ("SUN397/ClassName.txt", "Partitions/Training_01.txt"),
                ("train", "test"), loaders.sun397),
    DatasetSpec("stanford_cars", "stanford_cars",
                ("stanford_cars/devkit", "stanford_cars/cars_train", "stanford_cars/cars_test",
                 "stanford_cars/cars_test_annos_withlabels.mat"), ("train", "test"),
                loaders.torchvision_dataset("StanfordCars", "split")),
    DatasetSpec("fgvc_aircraft", "fgvc_aircraft", ("fgvc-aircraft-2013b/data",), ("train", "test"),
                loaders.torchvision_dataset("FGVCAircraft", "split", union={"train": ("trainval",)},
                                            annotation_level="variant"),
                metric="mean_per_class"),
    DatasetSpec("voc2007", "voc", ("VOCdevkit/VOC2007/ImageSets/Main/trainval.txt",
                                   "VOCdevkit/VOC2007/ImageSets/Main/test.txt"),
                ("train", "test"), loaders.voc2007, metric="map11", multilabel=True),
    DatasetSpec("dtd", "dtd", ("dtd/dtd/labels",), ("train", "test"),
                loaders.torchvision_dataset("DTD", "split", union={"train": ("train", "val")},
                                            partition=1)),
    DatasetSpec("pets", "pets", ("oxford-iiit-pet/annotations",), ("train", "test"),
                loaders.torchvision_dataset("OxfordIIITPet", "split", union={"train": ("trainval",)}),
                metric="mean_per_class"),
    DatasetSpec("caltech101", "caltech101", ("caltech101/101_ObjectCategories",), ("train", "test"),
                loaders.caltech101, metric="mean_per_class"),
    DatasetSpec("flowers102", "flowers102", ("flowers-102/jpg",), ("train", "test"),
                loaders.torchvision_dataset("Flowers102", "split", union={"train": ("train", "val")}),
                metric="mean_per_class"),
    DatasetSpec("digits", "", (), ("train", "test", "all"), loaders.digits, style="native",
                default_image_size=32),
)}

GROUPS: dict[str, tuple[str, ...]] = {
    "paper-linear": PAPER_LINEAR.datasets,
    "paper-fewshot": PAPER_FEWSHOT.datasets,
    "transfer": ("food101", "cifar10", "cifar100", "sun397", "stanford_cars", "fgvc_aircraft",
                 "voc2007", "dtd", "pets", "caltech101", "flowers102"),
    "imagenet": ("imagenet1k",),
    "embedded": ("digits",),
}


def groups_of(name: str) -> list[str]:
    return [group for group, names in GROUPS.items() if name in names]


def user_folder_spec(path: str) -> DatasetSpec:
    """``imagefolder:<path>``: ``train/`` and ``test/`` (or ``val/``) class folders."""
    root = Path(path)
    test = "test" if (root / "test").is_dir() or not (root / "val").is_dir() else "val"
    return DatasetSpec(f"{IMAGEFOLDER}{path}", os.path.abspath(path), ("train", test),
                       ("train", test), loaders.image_folder(), test_split=test)


def dataset_spec(name: str) -> DatasetSpec:
    """Registry entry for ``name`` (or ``imagefolder:<dir>``)."""
    if name.startswith(IMAGEFOLDER):
        return user_folder_spec(name[len(IMAGEFOLDER):])
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}, the groups "
                         f"{', '.join(GROUPS)}, or imagefolder:<dir> (python -m linear_probe "
                         "datasets lists them)")
    return REGISTRY[name]


def resolve_datasets(names: Iterable[str]) -> list[str]:
    """Dataset and group names -> dataset names, in the order given, each once."""
    out: list[str] = []
    for name in names:
        expanded = GROUPS.get(name, (name,))
        for item in expanded:
            dataset_spec(item)  # refuses an unknown name with the list of known ones
            if item not in out:
                out.append(item)
    if not out:
        raise ValueError("no dataset given: name one or more datasets or groups")
    return out
