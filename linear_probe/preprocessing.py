"""Image preprocessing of every protocol: per-image resize / crop / flip to uint8 tensors,
per-batch normalisation where the model runs.

Styles (``Preprocessing.description['style']``, part of the feature-cache key):

* ``timm-eval`` — the model's timm eval transform (TinyViT: bicubic resize to 224 / 0.95,
  centre crop): the ``clip-lbfgs`` sweep and k-shot probes.
* ``cdfsl`` — cdfsl's test transform: resize to 1.15 x size (square), centre crop.
* ``native`` — images already made at the model's size (the embedded digits), no resize.
* ``mocov3-eval`` — MoCo v3's ``main_lincls.py`` eval transform: resize the short side to
  size x 256 / 224 (bilinear), centre crop (256 -> 224 at the paper's size).
* ``mocov3-train`` — its train transform: ``RandomResizedCrop(size)`` (scale 0.08-1, bilinear)
  and a horizontal flip, drawn afresh for every image of every epoch
  (:class:`SeededAugmentation`).

Mean and std are the model's (ImageNet's for TinyViT, as in MoCo v3 and cdfsl).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

MOCOV3_RESIZE_RATIO = 256 / 224
CDFSL_RESIZE_RATIO = 1.15


class ToRGB:
    """PIL image -> RGB (grey Caltech / X-ray images, RGBA PNGs); picklable for workers."""

    def __call__(self, img):
        return img if getattr(img, "mode", "RGB") == "RGB" else img.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


@dataclass(frozen=True)
class Preprocessing:
    """Per-image ``transform`` (PIL -> uint8 CHW tensor: resize / crop / flip only) and the
    per-batch ``normalise`` (float, / 255, mean / std) that runs where the model runs — on the
    GPU when there is one, like timm's prefetcher: a quarter of the host-to-device bytes, and
    no per-image float ops on the loading side. ``description`` goes into the cache key."""

    transform: Callable
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: dict

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        from .device import cpu_threads
        mean = torch.tensor(self.mean, device=batch.device).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.std, device=batch.device).view(1, -1, 1, 1) * 255.0
        # one thread on CPU: a memory-bound op gains nothing from more, and on a busy machine
        # OpenMP's barrier made it 100x slower with two
        with cpu_threads(1 if batch.device.type == "cpu" else None):
            return (batch.float() - mean) / std


def _finish(steps: list, data_config: dict, description: dict) -> Preprocessing:
    import torchvision.transforms as T
    mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
    return Preprocessing(T.Compose([ToRGB(), *steps, T.PILToTensor()]), mean, std,
                         {**description, "mean": list(mean), "std": list(std)})


def eval_preprocessing(style: str, data_config: dict) -> Preprocessing:
    """Deterministic preprocessing of ``style`` (see the module docstring) at the size of the
    model's ``data_config`` (timm's: input_size, interpolation, crop_pct, mean, std)."""
    import torchvision.transforms as T
    size = int(data_config["input_size"][-1])
    if style == "native":
        return _finish([], data_config, {"style": "native", "size": size})
    if style == "cdfsl":
        resize = int(size * CDFSL_RESIZE_RATIO)
        return _finish([T.Resize((resize, resize)), T.CenterCrop(size)], data_config,
                       {"style": "cdfsl", "size": size, "resize": resize})
    if style == "mocov3-eval":
        resize = int(round(size * MOCOV3_RESIZE_RATIO))
        return _finish([T.Resize(resize), T.CenterCrop(size)], data_config,
                       {"style": "mocov3-eval", "size": size, "resize": resize})
    if style in ("model", "timm-eval"):
        from timm.data import create_transform
        cfg = {k: data_config[k] for k in ("input_size", "interpolation", "crop_pct", "crop_mode")
               if k in data_config}
        # use_prefetcher: resize + crop + uint8 tensor, normalisation left to `normalise`
        timm_tf = create_transform(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()},
                                   is_training=False, use_prefetcher=True)
        mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
        return Preprocessing(T.Compose([ToRGB(), timm_tf]), mean, std,
                             {"style": "timm-eval", **cfg, "mean": list(mean), "std": list(std)})
    raise ValueError(f"unknown preprocessing style {style!r}; expected native, cdfsl, "
                     "mocov3-eval or model")


def dataset_preprocessing(spec, data_config: dict) -> Preprocessing:
    """The dataset's own eval preprocessing (its registry ``style``), for the fast protocols."""
    return eval_preprocessing(spec.style, data_config)


def mocov3_train_preprocessing(data_config: dict) -> Preprocessing:
    """MoCo v3's train augmentation (random; wrap the dataset in :class:`SeededAugmentation`)."""
    import torchvision.transforms as T
    size = int(data_config["input_size"][-1])
    return _finish([T.RandomResizedCrop(size), T.RandomHorizontalFlip()], data_config,
                   {"style": "mocov3-train", "size": size, "scale": [0.08, 1.0],
                    "ratio": [3 / 4, 4 / 3], "flip": 0.5})


def torch_from_numpy(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


class Preprocessed(Dataset):
    """(uint8 CHW tensor, target) pairs: ``transform`` applied to the raw dataset's images;
    integer targets, or int8 vectors for multi-label data."""

    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        try:
            img, target = self.base[i]
            pixels = self.transform(img)
        except OSError as err:  # PIL: truncated or damaged file, a message without its name
            raise unreadable(self.base, i, err) from err
        if isinstance(target, np.ndarray):  # multi-label vector
            return pixels, torch_from_numpy(target)
        return pixels, int(target)  # ints collate far faster than NumPy scalars


def unreadable(ds: Dataset, i: int, err: OSError) -> OSError:
    """The error to raise for row ``i`` of ``ds`` that could not be read: one that names the
    file and the fix (``err`` itself when it already is one, or is no image problem)."""
    from .loaders import UnreadableImageError, sample_path
    if isinstance(err, (UnreadableImageError, FileNotFoundError, PermissionError)):
        return err
    path = sample_path(ds, i)
    where = f"image {path}" if path else f"image {i} of {type(ds).__name__}"
    return UnreadableImageError(
        f"cannot read {where}: {err}. The file is damaged or cut short (e.g. by an interrupted "
        "download or copy): replace it with a good copy, e.g. by downloading the dataset "
        "again, or delete it, then rerun")


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The 32-bit seed of image ``index``'s augmentation in ``epoch``: a splitmix64 hash of the
    three (torch's CPU generator, a Mersenne twister, keeps only 32 bits of its seed, so the
    numbers are mixed rather than packed side by side)."""
    mask = (1 << 64) - 1
    z = ((seed * 0x9E3779B97F4A7C15) ^ (epoch * 0xBF58476D1CE4E5B9) ^ (index * 0x94D049BB133111EB)
         ^ 0x2545F4914F6CDD1D) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & 0xFFFFFFFF


class SeededAugmentation(Preprocessed):
    """:class:`Preprocessed` with a random ``transform`` whose draws for image ``i`` in epoch
    ``e`` come from torch's CPU generator seeded with :func:`augmentation_seed` (seed, e, i).

    So an epoch's crops and flips are the same whatever the number of DataLoader workers or
    processes and whether the run was resumed; torchvision's transforms draw from that global
    generator, which only the loading side uses during training (the frozen backbone and the
    linear head draw nothing). Index with ``(epoch, i)`` — what lets persistent workers serve
    every epoch — or with ``i`` for the epoch last given to :meth:`set_epoch`."""

    def __init__(self, base: Dataset, transform, seed: int = 0):
        super().__init__(base, transform)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        torch.default_generator.manual_seed(augmentation_seed(self.seed, int(epoch), int(i)))
        return super().__getitem__(int(i))
