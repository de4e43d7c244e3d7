"""scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes) as an RGB image dataset.

The scans are upscaled (bicubic) to ``image_size`` and replicated to three channels so that any
ImageNet-style model and timm transform takes them. The train / test split is stratified and
fixed (seeded), so every tool in the project sees the same images: 1,257 train, 540 test.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

NUM_CLASSES = 10
CLASS_NAMES = tuple(str(i) for i in range(NUM_CLASSES))
TEST_FRACTION = 0.3
SPLIT_SEED = 0


def digits_fingerprint(split: str, image_size: int, indices, targets) -> str:
    """Content fingerprint of the digits' ``split`` at ``image_size`` pixels (the value logit
    stores and feature caches record; see :mod:`tinyvit_backbone.fingerprint`)."""
    digest = hashlib.sha256()
    digest.update(f"digits|{split}|{image_size}|".encode())
    digest.update(np.asarray(indices, dtype=np.int64).tobytes())
    digest.update(np.asarray(targets, dtype=np.int64).tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    train, test = train_test_split(np.arange(len(labels)), test_size=TEST_FRACTION,
                                   stratify=labels, random_state=SPLIT_SEED)
    return {"train": np.sort(train), "test": np.sort(test)}


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    digits = load_digits()
    # 0..16 grey levels -> 0..255
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


class DigitsDataset(Dataset):
    """Handwritten digits as RGB PIL images of ``image_size`` pixels.

    Args:
        split: 'train' (1,257 images), 'test' (540) or 'all' (1,797).
        image_size: output side in pixels (bicubic upscaling of the 8x8 scans).
        transform: applied to the PIL image (e.g. a torchvision / timm transform).
    """

    classes = CLASS_NAMES

    def __init__(self, split: str = "train", image_size: int = 32, transform=None):
        if split not in ("train", "test", "all"):
            raise ValueError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
        images, labels = _raw()
        index = np.arange(len(labels)) if split == "all" else _split_indices()[split]
        self.split = split
        self.image_size = image_size
        self.transform = transform
        self.indices = index
        self.targets = labels[index].tolist()
        self._images = images

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> Image.Image:
        scan = Image.fromarray(self._images[self.indices[i]], mode="L")
        return scan.resize((self.image_size, self.image_size), Image.BICUBIC).convert("RGB")

    def fingerprint(self) -> str:
        """This split's identity for logit stores and feature caches
        (:mod:`tinyvit_backbone.fingerprint`)."""
        return digits_fingerprint(self.split, self.image_size, self.indices, self.targets)

    def tensors(self, mean, std):
        """All images as one normalised float tensor (N, 3, S, S) and the labels (N,): for the
        tools that train on the whole split at once (the shrinking proxy)."""
        import torch

        pixels = np.stack([np.asarray(self.image(i), dtype=np.float32) for i in range(len(self))])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).div_(255.0)
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        return x, torch.tensor(self.targets)

    def __getitem__(self, i: int):
        img = self.image(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]
