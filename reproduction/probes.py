"""Read linear-probe / few-shot results (JSON lines written by ``linear_probe``) and aggregate
them: k-shot mean ± standard deviation over seeds, episodes mean ± 95% CI as recorded.

One record per line::

    {"task": "linear_probe" | "kshot" | "episodes", "protocol": name, "model": label, "arch",
     "weights", "weights_digest", "pretraining", "dataset", "split_sizes", "k", "seed",
     "n_way", "episodes", "weight_decay", "metric": "top1" | "mean_per_class" | "map11",
     "metrics": {"top1", "top5", "mean_per_class", "map11"} (percent), "ci95": percent | null,
     "timings": {...}}

``protocol`` says how the number was made (a paper table takes only its own protocol's
records); records written before it existed get their task's fast protocol. ``pretraining``
(``in1k`` | ``in1k-distill`` | ``in21k`` | ``in21k-distill``), when absent, is read from the
weights' name.

The value used is ``metrics[metric]`` (the dataset's official metric). A line that is not a
valid record is reported as malformed (file:line and why) and contributes nothing; an
unterminated last line is a write in progress. When two records have the same key (task,
model, dataset, k, seed, n_way) the one read later wins (files in the order given, lines in
order) and the duplicate is reported. A model label used for different weights (by
``weights_digest``) is split into one row per weights, ``label @<digest[:8]>``.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field, replace

from linear_probe.results import DATASET_TITLES, PRETRAININGS, TASKS

# The headline metrics a record may carry (top-5 is reported beside, never the headline).
METRICS = ("top1", "mean_per_class", "map11")

# Other spellings of the registry's datasets (titles, older records, other tools' names),
# lower-cased with everything but letters and digits removed. Display order = the schema's.
_EXTRA_ALIASES = {
    "ImageNet-1k": ("imagenet", "in1k", "ilsvrc2012", "imagenet2012"),
    "Food-101": ("food",),
    "SUN397": ("sun",),
    "Stanford Cars": ("cars",),
    "FGVC Aircraft": ("aircraft",),
    "VOC2007": ("pascalvoc2007", "voc"),
    "Oxford-IIIT Pets": ("oxfordiiitpet",),
    "Flowers-102": ("oxfordflowers102", "flowers"),
    "CropDisease": ("cropdiseases",),
    "ISIC2018": ("isic",),
    "ChestX": ("chestxray", "chestxray8", "chestxray14"),
    "Digits": ("sklearndigits",),
}


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_ALIASES = {_squash(alias): title
            for name, title in DATASET_TITLES.items()
            for alias in (name, title, *_EXTRA_ALIASES.get(title, ()))}
_ORDER = {title: i for i, title in enumerate(DATASET_TITLES.values())}


def canonical_dataset(name: str) -> str:
    """The title of a registry dataset under any of its spellings; other names unchanged."""
    return _ALIASES.get(_squash(name), name)


def dataset_order(name: str) -> tuple[int, str]:
    return (_ORDER.get(name, len(_ORDER)), name.lower())


def official_variant(arch) -> str | None:
    """'21m' for "21m", "tinyvit-21m", "tiny_vit_21m_224", or the 21M dict; None otherwise."""
    from tinyvit_backbone.backbone import ARCH_SETTINGS
    if isinstance(arch, dict):
        for key, spec in ARCH_SETTINGS.items():
            if (list(arch.get("embed_dims", [])) == spec["embed_dims"]
                    and list(arch.get("depths", [])) == spec["depths"]):
                return key
        return None
    if not isinstance(arch, str):
        return None
    m = re.fullmatch(r"(?:tiny[_-]?vit[_-]?)?(5m|11m|21m)(?:[_-]\d+)?(?:\..*)?", arch.lower())
    return m.group(1) if m else None


def pretraining_of(weights, arch=None) -> str:
    """'in21k-distill' | 'in21k' | 'in1k' | 'random' | 'unknown', read from a weights path or
    timm tag. Every TinyViT ImageNet-21k checkpoint was trained by distillation ("22k" / "21k"
    in its name; "22kto1k" is the one fine-tuned on 1k afterwards), so for TinyViT archs
    ImageNet-21k means "in21k-distill"; "1k" alone means ImageNet-1k only."""
    if weights in (None, "", "none", "random", "scratch"):
        return "random"
    s = os.path.basename(str(weights)).lower()
    if re.search(r"2[12]k", s):
        return "in21k-distill" if official_variant(arch) else "in21k"
    if "1k" in s:
        return "in1k"
    return "unknown"


PRETRAINING_KEYS = (*PRETRAININGS, "random", "unknown")
# The protocol of a record written before records named one: the fast variant of its task.
LEGACY_PROTOCOL = {"linear_probe": "clip-lbfgs", "kshot": "clip-lbfgs", "episodes": "lbfgs-fast"}


@dataclass(frozen=True)
class Record:
    task: str
    model: str
    dataset: str
    metric: str
    value: float
    arch: object = None
    weights: str | None = None
    weights_digest: str | None = None
    k: int | None = None
    seed: int | None = None
    n_way: int | None = None
    episodes: int | None = None
    ci95: float | None = None
    protocol: str = ""
    pretraining: str = "unknown"
    backbone_mode: str | None = None  # few-shot: "frozen" | "fine-tuned"
    origin: str = ""

    @property
    def key(self) -> tuple:
        return (self.task, self.protocol, self.backbone_mode, self.model, self.dataset, self.k,
                self.seed, self.n_way)


@dataclass
class ProbeResults:
    records: list[Record] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class RecordError(ValueError):
    pass


def _percent(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise RecordError(f"{what} = {v!r}, expected a number (percent)")
    if not 0.0 <= v <= 100.0:
        raise RecordError(f"{what} = {v!r}, expected percent 0-100 (fractions? multiply by 100)")
    return float(v)


def _int(obj: dict, name: str, required: bool) -> int | None:
    v = obj.get(name)
    if v is None:
        if required:
            raise RecordError(f"missing field {name!r} (needed for task {obj['task']!r})")
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RecordError(f"{name} = {v!r}, expected a non-negative integer")
    return v


def parse_record(obj, origin: str) -> Record:
    if not isinstance(obj, dict):
        raise RecordError(f"a JSON {type(obj).__name__}, expected an object")
    for name in ("task", "model", "dataset", "metric", "metrics"):
        if obj.get(name) in (None, ""):
            raise RecordError(f"missing field {name!r}")
    task = obj["task"]
    if task not in TASKS:
        raise RecordError(f"task = {task!r}, expected one of {list(TASKS)}")
    metric = obj["metric"]
    if metric not in METRICS:
        raise RecordError(f"metric = {metric!r}, expected one of {list(METRICS)}")
    metrics = obj["metrics"]
    if not isinstance(metrics, dict) or metric not in metrics:
        raise RecordError(f"metrics has no {metric!r} (the record's official metric)")
    value = _percent(metrics[metric], f"metrics.{metric}")
    ci = obj.get("ci95")
    ci = None if ci is None else _percent(ci, "ci95")
    protocol = obj.get("protocol") or LEGACY_PROTOCOL[task]
    pretraining = obj.get("pretraining") or pretraining_of(obj.get("weights"), obj.get("arch"))
    if pretraining not in PRETRAINING_KEYS:
        raise RecordError(f"pretraining = {pretraining!r}, expected one of "
                          f"{list(PRETRAINING_KEYS)}")
    frozen = obj.get("freeze_backbone")
    mode = None if frozen is None else ("frozen" if frozen else "fine-tuned")
    return Record(
        task=task, model=str(obj["model"]), dataset=canonical_dataset(str(obj["dataset"])),
        metric=metric, value=value, arch=obj.get("arch"),
        weights=None if obj.get("weights") is None else str(obj["weights"]),
        weights_digest=obj.get("weights_digest"),
        k=_int(obj, "k", task in ("kshot", "episodes")),
        seed=_int(obj, "seed", task == "kshot"),
        n_way=_int(obj, "n_way", task == "episodes"),
        episodes=_int(obj, "episodes", False), ci95=ci, protocol=str(protocol),
        pretraining=pretraining, backbone_mode=mode, origin=origin)


def _split_shared_labels(records: list[Record], warnings: list[str]) -> list[Record]:
    """A label used for different weights (digests) would merge two models into one row:
    such records get the digest's first 8 characters appended to their label."""
    digests: dict[str, set[str]] = {}
    for rec in records:
        digests.setdefault(rec.model, set()).add(str(rec.weights_digest or ""))
    shared = {m for m, ds in digests.items() if len(ds) > 1}
    for model in sorted(shared):
        ds = sorted(d[:8] or "none" for d in digests[model])
        warnings.append(f"model label {model!r} is used for {len(ds)} different weights "
                        f"(digests {', '.join(ds)}); its rows are labelled '{model} @<digest>'")
    return [replace(r, model=f"{r.model} @{str(r.weights_digest or '')[:8] or 'none'}")
            if r.model in shared else r for r in records]


def read_results(paths: list[str]) -> ProbeResults:
    """Read every file (raises FileNotFoundError for a missing one); bad lines are reported."""
    out = ProbeResults()
    parsed: list[Record] = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"results file not found: {path} (pass the JSON-lines files "
                                    "written by linear_probe)")
        name = os.path.basename(path)
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            origin = f"{name}:{i}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                if i == len(lines):
                    out.in_progress.append(f"{origin}: last line unterminated (being written)")
                else:
                    out.malformed.append(f"{origin}: not JSON ({err.msg})")
                continue
            try:
                parsed.append(parse_record(obj, origin))
            except RecordError as err:
                out.malformed.append(f"{origin}: {err}")
    by_key: dict[tuple, Record] = {}
    for rec in _split_shared_labels(parsed, out.warnings):
        if rec.key in by_key:
            out.warnings.append(f"duplicate result {_key_text(rec)}: {by_key[rec.key].origin}"
                                f" replaced by {rec.origin}")
        by_key[rec.key] = rec
    out.records = list(by_key.values())
    return out


def _key_text(rec: Record) -> str:
    parts = [rec.task, rec.protocol + (f" ({rec.backbone_mode})" if rec.backbone_mode else ""),
             rec.model, rec.dataset]
    if rec.n_way is not None:
        parts.append(f"{rec.n_way}-way")
    if rec.k is not None:
        parts.append(f"k={rec.k}")
    if rec.seed is not None:
        parts.append(f"seed={rec.seed}")
    return " / ".join(parts)


# ------------------------------------------------------------------------------ aggregation
@dataclass(frozen=True)
class SeedStats:
    """k-shot over seeds: mean and sample standard deviation (n-1; None for one seed)."""

    mean: float
    std: float | None
    seeds: tuple[int, ...]


def seed_stats(values: dict[int, float]) -> SeedStats:
    vals = [values[s] for s in sorted(values)]
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return SeedStats(statistics.fmean(vals), std, tuple(sorted(values)))


def kshot_stats(records: list[Record]) -> dict[tuple[str, str, str], dict[int, SeedStats]]:
    """{(model, protocol, dataset): {k: SeedStats}}."""
    groups: dict[tuple[str, str, str, int], dict[int, float]] = {}
    for rec in records:
        if rec.task == "kshot":
            groups.setdefault((rec.model, rec.protocol, rec.dataset, rec.k), {})[rec.seed] = \
                rec.value
    out: dict[tuple[str, str, str], dict[int, SeedStats]] = {}
    for (model, protocol, dataset, k), values in groups.items():
        out.setdefault((model, protocol, dataset), {})[k] = seed_stats(values)
    return out
