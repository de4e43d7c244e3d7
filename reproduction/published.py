"""Published numbers printed beside ours, each with the table it was read from.

Only numbers a paper or its official repository prints are here, exactly as printed; a value the
source does not report is ``None`` and renders as "—". Units follow the tables: accuracy, AP and
mIoU in percent (mmdet's CocoMetric writes fractions; :mod:`.runs` converts), params in
millions, MACs in G, throughput in images/s.

The TinyViT paper's numbers (Wu et al. 2022, arXiv 2207.10666v1):

* Table 4 — ImageNet-1k top-1 of the TinyViT family, pretrained on IN-1k alone or distilled
  on IN-21k, with params, MACs and V100 throughput (:data:`MODELS`);
* Table 5 — linear probe on five datasets (:data:`TABLE5_LINEAR`) and cdfsl few-shot on four
  (:data:`TABLE5_FEWSHOT`), for four pretraining settings;
* Table 6 — COCO val2017 box AP of Cascade Mask R-CNN, 1x (:data:`TABLE6`);
* the ablations of the pretraining strategy and of the teacher (:data:`ABLATIONS`).

"⚗" marks pretraining with the fast distillation (teacher CLIP-ViT-L/14 for IN-21k). All of
Tables 5 and 6 are TinyViT-21M. :func:`published_cells` lists every number with its source,
for checks and for anyone who wants them as data.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from linear_probe import recipes, results

TINYVIT_PAPER = "Wu et al. 2022, TinyViT (arXiv 2207.10666)"
SWIN_PAPER = "Liu et al. 2021, Swin Transformer (arXiv 2103.14030)"
SWIN_DET_REPO = "Swin-Transformer-Object-Detection model zoo (Liu et al. 2021)"

# Pretraining settings of the paper's transfer rows, in its order (the probes' record schema).
PRETRAININGS: tuple[str, ...] = results.PRETRAININGS
PRETRAINING_TEXT = {**results.PRETRAINING_TITLES, "random": "random init", "unknown": "—"}


def source(table: str) -> str:
    return f"{TINYVIT_PAPER}, {table}"


# ------------------------------------------------------------------------- Table 4 (ImageNet)
@dataclass(frozen=True)
class PublishedArch:
    """One official TinyViT variant: ImageNet-1k top-1 (percent) after IN-21k distillation and
    after IN-1k pretraining alone, MACs (G), params (M) and the V100 throughput (images/s)."""

    name: str
    arch: str
    input_size: int
    params_m: float
    gmacs: float
    top1_in22k_distill: float | None
    top1_in1k: float | None
    v100_images_per_s: float
    table: str = "Table 4"


MODELS: tuple[PublishedArch, ...] = (
    PublishedArch("TinyViT-5M", "5m", 224, 5.4, 1.3, 80.7, 79.1, 3060),
    PublishedArch("TinyViT-11M", "11m", 224, 11.0, 2.0, 83.2, 81.5, 2468),
    PublishedArch("TinyViT-21M", "21m", 224, 21.0, 4.3, 84.8, 83.1, 1571),
    PublishedArch("TinyViT-21M", "21m", 384, 21.0, 13.8, 86.2, None, 394),
    PublishedArch("TinyViT-21M", "21m", 512, 21.0, 27.0, 86.5, None, 167),
)
MODELS_SOURCE = source("Table 4")

# ------------------------------------------------------------------------- Table 5 (transfer)
# Datasets by the titles the tables show (linear_probe's DATASET_TITLES), with the paper's
# column headings; the halves' datasets and cdfsl's episode settings come from the schema.
TABLE5_LINEAR_DATASETS: tuple[tuple[str, str], ...] = tuple(
    (results.DATASET_TITLES[name], column)
    for name, column in zip(results.PAPER_LINEAR.datasets, results.PAPER_LINEAR.columns))
TABLE5_FEWSHOT_DATASETS: tuple[tuple[str, str], ...] = tuple(
    (results.DATASET_TITLES[name], column)
    for name, column in zip(results.PAPER_FEWSHOT.datasets, results.PAPER_FEWSHOT.columns))
CDFSL_SHOTS: tuple[int, ...] = recipes.CDFSL_SHOTS
CDFSL_WAYS = recipes.CDFSL_WAYS
CDFSL_EPISODES = recipes.CDFSL_EPISODES
TABLE5_SOURCE = source("Table 5")

# pretraining -> dataset -> top-1 (%), "same setting as in MoCo v3"
TABLE5_LINEAR: dict[str, dict[str, float]] = {
    "in1k": {"CIFAR-10": 91.7, "CIFAR-100": 75.2, "Flowers-102": 80.9, "Stanford Cars": 56.3,
             "Oxford-IIIT Pets": 86.5},
    "in1k-distill": {"CIFAR-10": 91.7, "CIFAR-100": 74.5, "Flowers-102": 82.4,
                     "Stanford Cars": 61.7, "Oxford-IIIT Pets": 85.5},
    "in21k": {"CIFAR-10": 96.3, "CIFAR-100": 84.7, "Flowers-102": 99.7, "Stanford Cars": 67.7,
              "Oxford-IIIT Pets": 92.6},
    "in21k-distill": {"CIFAR-10": 96.9, "CIFAR-100": 86.6, "Flowers-102": 99.7,
                      "Stanford Cars": 75.1, "Oxford-IIIT Pets": 93.8},
}


def _shots(values: tuple[float, ...]) -> dict[tuple[str, int], float]:
    """The paper's 12 few-shot columns (5-shot ISIC .. ChestX, then 20-, then 50-shot)."""
    keys = [(ds, k) for k in CDFSL_SHOTS for ds, _ in TABLE5_FEWSHOT_DATASETS]
    assert len(values) == len(keys)
    return dict(zip(keys, values))


# pretraining -> (dataset, shots) -> mean accuracy (%) over 600 5-way episodes
TABLE5_FEWSHOT: dict[str, dict[tuple[str, int], float]] = {
    "in1k": _shots((42.9, 82.4, 92.2, 24.8, 56.7, 91.0, 97.4, 29.0, 63.7, 94.2, 98.6, 31.8)),
    "in1k-distill": _shots((43.0, 83.0, 94.2, 24.4, 58.5, 91.8, 97.9, 28.6, 66.2, 94.3, 98.9,
                            31.8)),
    "in21k": _shots((52.5, 87.4, 97.4, 24.6, 66.5, 93.7, 99.1, 29.4, 73.4, 95.5, 99.5, 33.4)),
    "in21k-distill": _shots((53.5, 88.1, 98.0, 24.7, 67.3, 93.9, 99.3, 29.5, 74.2, 96.0, 99.5,
                             33.2)),
}


# ------------------------------------------------------------------------- Table 6 (COCO)
@dataclass(frozen=True)
class PublishedCoco:
    """One row of Table 6: COCO val2017, Cascade Mask R-CNN, 12 epochs; params = backbone."""

    backbone: str
    pretraining: str | None
    params_m: float
    in1k_top1: float
    ap: float
    ap50: float
    ap75: float
    aps: float
    apm: float
    apl: float
    mask_ap: float | None
    source: str


TABLE6_SOURCE = source("Table 6")
TABLE6: tuple[PublishedCoco, ...] = (
    # Swin-T's mask AP is not in the TinyViT paper; Swin's own model zoo prints it.
    PublishedCoco("Swin-T", None, 28.0, 81.2, 48.1, 67.1, 52.1, 31.1, 51.2, 63.5, 41.7,
                  TABLE6_SOURCE + "; mask AP: " + SWIN_DET_REPO),
    PublishedCoco("TinyViT-21M", "in1k", 21.0, 83.1, 49.6, 68.5, 54.2, 32.3, 53.2, 64.8, None,
                  TABLE6_SOURCE),
    PublishedCoco("TinyViT-21M", "in21k-distill", 21.0, 84.8, 50.2, 69.4, 54.4, 32.9, 53.9,
                  65.2, None, TABLE6_SOURCE),
)
TABLE6_METRICS: tuple[tuple[str, str], ...] = (
    ("ap", "coco/bbox_mAP"), ("ap50", "coco/bbox_mAP_50"), ("ap75", "coco/bbox_mAP_75"),
    ("aps", "coco/bbox_mAP_s"), ("apm", "coco/bbox_mAP_m"), ("apl", "coco/bbox_mAP_l"))


# ------------------------------------------------------------------------- ablations
@dataclass(frozen=True)
class Ablation:
    """IN-1k top-1 (%) of TinyViT-21M under one pretraining choice."""

    study: str
    setting: str
    in1k_top1: float
    source: str


ABLATIONS: tuple[Ablation, ...] = (
    Ablation("pretraining", "IN-1k from scratch", 83.1, source("ablation of pretraining")),
    Ablation("pretraining", "IN-21k, no distillation", 83.8, source("ablation of pretraining")),
    Ablation("pretraining", "IN-21k, fast distillation", 84.8, source("ablation of pretraining")),
    Ablation("teacher", "BEiT-L", 84.1, source("ablation of the teacher")),
    Ablation("teacher", "Swin-L", 84.2, source("ablation of the teacher")),
    Ablation("teacher", "CLIP-ViT-L/14", 84.8, source("ablation of the teacher")),
    Ablation("teacher", "Florence", 84.8, source("ablation of the teacher")),
)


# ------------------------------------------------------------------------- other sources
@dataclass(frozen=True)
class PublishedDet:
    """A published COCO val2017 result outside the TinyViT paper (AP in percent)."""

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


# The wider suite's COCO baselines (Swin's model zoo). Backbone params of Swin-T are the
# classifier's (Liu et al. 2021, Table 1: 28M).
COCO: tuple[PublishedDet, ...] = (
    PublishedDet("Swin-T", 28.0, "Cascade Mask R-CNN", "3x", 50.4, 43.7, SWIN_DET_REPO),
    PublishedDet("Swin-T", 28.0, "Mask R-CNN", "1x", 43.7, 39.8, SWIN_DET_REPO),
    PublishedDet("Swin-T", 28.0, "Mask R-CNN", "3x", 46.0, 41.6, SWIN_DET_REPO),
)

# ADE20K val, UperNet, 512x512, 160k iterations (Liu et al. 2021, Table 3): single-scale and
# multi-scale + flip mIoU. The TinyViT paper reports no segmentation result.
SEGMENTATION: tuple[PublishedSeg, ...] = (
    PublishedSeg("Swin-T", 28.0, "UperNet", "ADE20K", "160k it", 44.5, 45.8, SWIN_PAPER),
)


# ------------------------------------------------------------------------- as data
@dataclass(frozen=True)
class PublishedCell:
    table: str
    row: str
    column: str
    value: float


def published_cells() -> list[PublishedCell]:
    """Every number of the TinyViT paper held here (Tables 4, 5, 6 and the ablations)."""
    out: list[PublishedCell] = []
    for m in MODELS:
        row = f"{m.name} @{m.input_size}"
        for column, value in (("params (M)", m.params_m), ("GMACs", m.gmacs),
                              ("IN-1k top-1, IN-21k ⚗", m.top1_in22k_distill),
                              ("IN-1k top-1, IN-1k", m.top1_in1k),
                              ("V100 img/s", m.v100_images_per_s)):
            if value is not None:
                out.append(PublishedCell(m.table, row, column, value))
    for pre, values in TABLE5_LINEAR.items():
        for ds, _ in TABLE5_LINEAR_DATASETS:
            out.append(PublishedCell("Table 5 (linear probe)", PRETRAINING_TEXT[pre], ds,
                                     values[ds]))
    for pre, fewshot in TABLE5_FEWSHOT.items():
        for (ds, k), value in fewshot.items():
            out.append(PublishedCell("Table 5 (few-shot)", PRETRAINING_TEXT[pre],
                                     f"{k}-shot {ds}", value))
    names = [f.name for f in fields(PublishedCoco)]
    for r in TABLE6:
        row = r.backbone + (f" ({PRETRAINING_TEXT[r.pretraining]})" if r.pretraining else "")
        for name in names[names.index("params_m"):names.index("apl") + 1]:
            out.append(PublishedCell("Table 6", row, name, getattr(r, name)))
    for a in ABLATIONS:
        out.append(PublishedCell(f"ablation ({a.study})", a.setting, "IN-1k top-1", a.in1k_top1))
    return out
