"""The result schema of the probes, and the JSON-lines file the records go to.

This module is the one home of the schema: task, protocol, metric and dataset names, their
titles, the paper's two Table 5 halves and the record fields are importable constants, so that
whatever turns records into tables imports them instead of restating them. It imports nothing
heavier than the standard library.

Record fields (:data:`RECORD_FIELDS`; every record has these, extra ones may follow)::

    task            "linear_probe" | "kshot" | "episodes"                  (TASKS)
    protocol        "mocov3" | "clip-lbfgs" | "cdfsl" | "lbfgs-fast"        (PROTOCOLS)
    model           label, e.g. "tinyvit-21m" or the user's --label
    arch            "5m" | "11m" | "21m" | JSON path | dict (TinyViT), timm model name
    weights         checkpoint path or null;  weights_digest: sha256 prefix or "random"
    pretraining     "in1k" | "in1k-distill" | "in21k" | "in21k-distill" (PRETRAININGS) or null
    dataset         registry name (DATASET_TITLES);  feature_layer: "pooled" | "stage<i>"
    split_sizes     {"train": rows fitted, "val": rows for the weight-decay search,
                     "test": rows scored} (episodes: per episode: support, 0, queries)
    k, seed, n_way, episodes   int or null
    weight_decay    the head's weight decay (chosen or fixed) or null
    metric          the headline metric: the protocol's (PROTOCOL_METRIC) or, for clip-lbfgs,
                    the dataset's official one
    metrics         {"top1", "top5" (> 5 classes), "mean_per_class"} or {"map11"}, percent
    ci95            95% interval half-width in percent (episodes) or null
    timings         seconds: extract_s, fit_s, total_s and protocol-specific ones

Appending is atomic: each call writes its lines with one ``write`` on an ``O_APPEND``
descriptor under an exclusive ``flock``, so concurrent runs never interleave partial lines; an
append that is cut short (a full disk) is removed again, and a torn last line left by anything
else is repaired before the next append (``append_jsonl``, which lives in
:mod:`tinyvit_backbone.files` with every other crash-safe write).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from tinyvit_backbone.files import append_jsonl, repair_torn_tail  # noqa: F401 (re-exported)

from .recipes import CDFSL_EPISODES, CDFSL_SHOTS, CDFSL_WAYS

# --------------------------------------------------------------------------- tasks
TASKS = ("linear_probe", "kshot", "episodes")
TASK_TITLES = {"linear_probe": "linear probe", "kshot": "k-shot linear probe",
               "episodes": "few-shot episodes"}

# --------------------------------------------------------------------------- protocols
MOCOV3 = "mocov3"
CLIP_LBFGS = "clip-lbfgs"
CDFSL = "cdfsl"
LBFGS_FAST = "lbfgs-fast"
PROTOCOLS = (MOCOV3, CLIP_LBFGS, CDFSL, LBFGS_FAST)
PROTOCOL_TITLES = {
    MOCOV3: "MoCo v3 linear probe (main_lincls.py: SGD 90 epochs, online augmentation)",
    CLIP_LBFGS: "CLIP linear probe (L-BFGS, weight-decay sweep on cached features)",
    CDFSL: "cdfsl fine-tuning (finetune.py: SGD 100 epochs per episode)",
    LBFGS_FAST: "fast few-shot episodes (L-BFGS head on cached features)",
}
PROTOCOL_TASKS = {MOCOV3: ("linear_probe",), CLIP_LBFGS: ("linear_probe", "kshot"),
                  CDFSL: ("episodes",), LBFGS_FAST: ("episodes",)}
# The metric a protocol scores by; clip-lbfgs scores each dataset by its official metric.
PROTOCOL_METRIC = {MOCOV3: "top1", CDFSL: "top1", LBFGS_FAST: "top1"}

# --------------------------------------------------------------------------- pretrainings
# What the evaluated weights were pretrained on (the rows of the paper's Table 5); "⚗" = with
# the fast pretraining distillation.
PRETRAININGS = ("in1k", "in1k-distill", "in21k", "in21k-distill")
PRETRAINING_TITLES = {"in1k": "IN-1k", "in1k-distill": "IN-1k ⚗", "in21k": "IN-21k",
                      "in21k-distill": "IN-21k ⚗"}

# --------------------------------------------------------------------------- metrics
METRICS = ("top1", "top5", "mean_per_class", "map11")
METRIC_TITLES = {"top1": "top-1 accuracy", "top5": "top-5 accuracy",
                 "mean_per_class": "mean per-class accuracy", "map11": "11-point mAP"}
METRIC_SHORT = {"top1": "top-1", "top5": "top-5", "mean_per_class": "mean/class",
                "map11": "mAP11"}

# --------------------------------------------------------------------------- datasets
# Registry names -> titles, in display order: ImageNet, Kornblith et al.'s transfer suite,
# the cdfsl benchmark, the embedded digits.
DATASET_TITLES = {
    "imagenet1k": "ImageNet-1k",
    "food101": "Food-101",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "sun397": "SUN397",
    "stanford_cars": "Stanford Cars",
    "fgvc_aircraft": "FGVC Aircraft",
    "voc2007": "VOC2007",
    "dtd": "DTD",
    "pets": "Oxford-IIIT Pets",
    "caltech101": "Caltech-101",
    "flowers102": "Flowers-102",
    "cropdisease": "CropDisease",
    "eurosat": "EuroSAT",
    "isic2018": "ISIC2018",
    "chestx": "ChestX",
    "digits": "Digits",
}


@dataclass(frozen=True)
class PaperTable:
    """One half of the paper's Table 5 (TinyViT, Wu et al. 2022): which records fill it.

    A record fills a cell only if its ``task`` and ``protocol`` are these (a number measured
    under another protocol is not comparable with the published one). ``columns`` are the
    paper's column titles, one per entry of ``datasets``."""

    name: str
    task: str
    protocol: str
    datasets: tuple[str, ...]
    columns: tuple[str, ...]
    metric: str = "top1"
    shots: tuple[int, ...] = ()
    n_way: int | None = None
    episodes: int | None = None


PAPER_LINEAR = PaperTable(
    "Table 5, linear probe", "linear_probe", MOCOV3,
    ("cifar10", "cifar100", "flowers102", "stanford_cars", "pets"),
    ("CIFAR-10", "CIFAR-100", "Flowers", "Cars", "Pets"))
PAPER_FEWSHOT = PaperTable(
    "Table 5, few-shot (cdfsl)", "episodes", CDFSL,
    ("isic2018", "eurosat", "cropdisease", "chestx"),
    ("ISIC", "EuroSAT", "CropD", "ChestX"), shots=CDFSL_SHOTS, n_way=CDFSL_WAYS,
    episodes=CDFSL_EPISODES)

# --------------------------------------------------------------------------- records
RECORD_FIELDS = {
    "task": "what was evaluated (TASKS)",
    "protocol": "how (PROTOCOLS)",
    "model": "model label",
    "arch": "TinyViT variant / architecture, or the timm model name",
    "weights": "checkpoint path, or null for a random init",
    "weights_digest": "sha256 prefix of the weights, or 'random'",
    "pretraining": "what the weights were pretrained on (PRETRAININGS), or null if not said",
    "dataset": "registry name",
    "feature_layer": "'pooled' or 'stage<i>'",
    "split_sizes": "rows fitted / used for the search / scored",
    "k": "images per class (k-shot, episodes)",
    "seed": "seed of the sampling / training",
    "n_way": "classes per episode",
    "episodes": "number of episodes",
    "weight_decay": "the head's weight decay",
    "metric": "the headline metric (METRICS)",
    "metrics": "every metric that applies, percent",
    "ci95": "95% interval half-width, percent (episodes)",
    "timings": "seconds per phase",
}
REQUIRED_FIELDS = tuple(RECORD_FIELDS)


def make_record(**fields) -> dict:
    """A record with every required field (missing optional ones default to None); refuses an
    unknown task or protocol, a protocol that does not do that task, and a headline metric
    that is not among ``metrics``."""
    record = {name: fields.pop(name, None) for name in REQUIRED_FIELDS}
    if record["task"] not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {record['task']!r}")
    if record["protocol"] not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {record['protocol']!r}")
    if record["pretraining"] is not None and record["pretraining"] not in PRETRAININGS:
        raise ValueError(f"pretraining must be one of {PRETRAININGS} or None, got "
                         f"{record['pretraining']!r}")
    if record["task"] not in PROTOCOL_TASKS[record["protocol"]]:
        raise ValueError(f"protocol {record['protocol']!r} does not do task {record['task']!r} "
                         f"(it does {PROTOCOL_TASKS[record['protocol']]})")
    for name in ("model", "dataset", "metric", "metrics", "split_sizes", "timings"):
        if record[name] is None:
            raise ValueError(f"result record needs {name!r}")
    if record["metric"] not in record["metrics"]:
        raise ValueError(f"headline metric {record['metric']!r} missing from metrics "
                         f"{sorted(record['metrics'])}")
    record.update(fields)
    record.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    return record


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a results file (blank lines skipped); names the line that is not JSON."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if not line.endswith("\n"):
                    raise ValueError(
                        f"{path}:{number}: the last line is cut short ({err}): an append did not "
                        "finish (e.g. the disk was full). The next run that appends to this "
                        "file moves it aside; or delete that line") from None
                raise ValueError(f"{path}:{number}: not a JSON record ({err})") from None
    return records
