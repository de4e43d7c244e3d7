"""Published numbers printed beside ours, each with the source it was read from.

Only numbers a paper or its official repository reports are here; a value the source does not
report is ``None`` and renders as "—". Units follow the tables: COCO AP in percent (CocoMetric
writes fractions; :mod:`.runs` converts), mIoU in percent, params in millions, MACs in G.
"""
from __future__ import annotations

from dataclasses import dataclass

TINYVIT_PAPER = "Wu et al. 2022, TinyViT (arXiv 2207.10666)"
SWIN_PAPER = "Liu et al. 2021, Swin Transformer (arXiv 2103.14030)"
SWIN_DET_REPO = "Swin-Transformer-Object-Detection model zoo (Liu et al. 2021)"


@dataclass(frozen=True)
class PublishedDet:
    """One published COCO val2017 result (AP in percent)."""

    backbone: str
    backbone_params_m: float | None
    detector: str
    schedule: str
    box_ap: float | None
    mask_ap: float | None
    source: str  # AP50 / AP75 / APs / APm / APl: not reported by these sources


@dataclass(frozen=True)
class PublishedSeg:
    """One published semantic-segmentation result (percent)."""

    backbone: str
    backbone_params_m: float | None
    decoder: str
    dataset: str
    schedule: str
    miou: float | None
    miou_ms: float | None
    source: str


@dataclass(frozen=True)
class PublishedArch:
    """One official TinyViT variant: ImageNet-1k top-1 (percent), MACs (G), params (M) and the
    V100 throughput (images/s) the paper reports."""

    name: str
    arch: str
    input_size: int
    params_m: float
    gmacs: float
    top1_in22k_distill: float | None
    top1_in1k: float | None
    v100_images_per_s: float


# Backbone params of Swin-T are the classifier's (Liu et al. 2021, Table 1: 28M); TinyViT-21M's
# are the paper's 21M (classifier with head). Our rows count the backbone without a head.
COCO: tuple[PublishedDet, ...] = (
    PublishedDet("TinyViT-21M", 21.0, "Cascade Mask R-CNN", "1x (as Swin-T)", 50.2, None,
                 TINYVIT_PAPER),
    PublishedDet("Swin-T", 28.0, "Cascade Mask R-CNN", "1x", 48.1, 41.7, SWIN_DET_REPO),
    PublishedDet("Swin-T", 28.0, "Cascade Mask R-CNN", "3x", 50.4, 43.7, SWIN_DET_REPO),
    PublishedDet("Swin-T", 28.0, "Mask R-CNN", "1x", 43.7, 39.8, SWIN_DET_REPO),
    PublishedDet("Swin-T", 28.0, "Mask R-CNN", "3x", 46.0, 41.6, SWIN_DET_REPO),
)

# ADE20K val, UperNet, 512x512, 160k iterations (Liu et al. 2021, Table 3): single-scale and
# multi-scale + flip mIoU. The TinyViT paper reports no segmentation result.
SEGMENTATION: tuple[PublishedSeg, ...] = (
    PublishedSeg("Swin-T", 28.0, "UperNet", "ADE20K", "160k it", 44.5, 45.8, SWIN_PAPER),
)

MODELS: tuple[PublishedArch, ...] = (
    PublishedArch("TinyViT-5M", "5m", 224, 5.4, 1.3, 80.7, 79.1, 3060),
    PublishedArch("TinyViT-11M", "11m", 224, 11.0, 2.0, 83.2, 81.5, 2468),
    PublishedArch("TinyViT-21M", "21m", 224, 21.0, 4.3, 84.8, 83.1, 1571),
    PublishedArch("TinyViT-21M", "21m", 384, 21.0, 13.8, 86.2, None, 394),
    PublishedArch("TinyViT-21M", "21m", 512, 21.0, 27.0, 86.5, None, 167),
)
MODELS_SOURCE = TINYVIT_PAPER + ", Table 1 / model zoo"

# The paper's classification-transfer layout: ImageNet-1k linear probe, then the cdfsl
# benchmark's four datasets, 5-way 5/20/50-shot over 600 episodes (mean with 95% CI).
PAPER_LINEAR_PROBE_DATASET = "ImageNet-1k"
CDFSL_DATASETS: tuple[str, ...] = ("CropDisease", "EuroSAT", "ISIC2018", "ChestX")
CDFSL_SHOTS: tuple[int, ...] = (5, 20, 50)
CDFSL_WAYS = 5
# The rows the paper compares, by pretraining (see probes.pretraining_of).
PAPER_TRANSFER_MODELS: tuple[tuple[str, str], ...] = (
    ("TinyViT-21M (IN-21k distill)", "in21k-distill"),
    ("TinyViT-21M (IN-1k, no distill)", "in1k"),
)
# The TinyViT paper's transfer numbers are not in the project's reference sheet
# (/work/shared/reference.md), so none are printed rather than numbers nobody checked.
PAPER_TRANSFER_PUBLISHED: tuple = ()

# The paper's own detection run: our reproduction of it is expected in every report.
EXPECTED_DET = dict(backbone="TinyViT-21M", detector="Cascade Mask R-CNN", dataset="COCO")
