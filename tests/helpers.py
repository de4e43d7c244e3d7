"""Data the distillation tests share: an ImageFolder of real digit scans and a tiny teacher."""
from pathlib import Path

import torch

from tinyvit_backbone.distill.datasets import open_dataset
from tinyvit_backbone.distill.teacher import create_timm_model


def write_digit_folder(root: Path, count: int) -> Path:
    """The first ``count`` digits of the train split as ``root/<label>/<index>.png``."""
    ds, _ = open_dataset("digits", "train", 32)
    for i in range(count):
        img, label = ds[i]
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        img.save(root / str(label) / f"{i:04d}.png")
    return root


def write_test_teacher(path: Path) -> Path:
    """A seeded timm ``test_resnet`` with 10 classes, saved as a state dict."""
    torch.manual_seed(0)
    torch.save(create_timm_model("test_resnet", 10).state_dict(), path)
    return path
