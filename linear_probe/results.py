"""Result records (one JSON object per result) and their JSON-lines file.

Every record has these fields (tables read them; extra fields may follow)::

    task            "linear_probe" | "kshot" | "episodes"
    model           label, e.g. "tinyvit-21m" or the user's --label
    arch            "5m" | "11m" | "21m" | JSON path | dict (TinyViT), timm model name
    weights         checkpoint path or null;  weights_digest: sha256 prefix or "random"
    dataset         registry name;  feature_layer: "pooled" | "stage<i>"
    split_sizes     {"train": rows fitted, "val": rows for the weight-decay search,
                     "test": rows scored} (episodes: per episode: support, 0, queries)
    k, seed, n_way, episodes   int or null
    weight_decay    chosen lambda (see linear_probe.solver) or null
    metric          the dataset's official metric: "top1" | "mean_per_class" | "map11"
    metrics         {"top1", "top5" (> 5 classes), "mean_per_class"} or {"map11"}, percent
    ci95            95% interval half-width in percent (episodes) or null
    timings         seconds: extract_s, sweep_s, fit_s, eval_s, total_s

Appending is atomic: each call writes its lines with one ``write`` on an ``O_APPEND``
descriptor under an exclusive ``flock``, so concurrent runs never interleave partial lines.
"""
from __future__ import annotations

import fcntl
import json
import os
import time

REQUIRED_FIELDS = ("task", "model", "arch", "weights", "weights_digest", "dataset",
                   "feature_layer", "split_sizes", "k", "seed", "n_way", "episodes",
                   "weight_decay", "metric", "metrics", "ci95", "timings")
TASKS = ("linear_probe", "kshot", "episodes")


def make_record(**fields) -> dict:
    """A record with every required field (missing optional ones default to None)."""
    record = {name: fields.pop(name, None) for name in REQUIRED_FIELDS}
    if record["task"] not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {record['task']!r}")
    for name in ("model", "dataset", "metric", "metrics", "split_sizes", "timings"):
        if record[name] is None:
            raise ValueError(f"result record needs {name!r}")
    if record["metric"] not in record["metrics"]:
        raise ValueError(f"official metric {record['metric']!r} missing from metrics "
                         f"{sorted(record['metrics'])}")
    record.update(fields)
    record.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    return record


def append_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Append ``records`` to ``path`` (created with its folder if needed), atomically."""
    if not records:
        return
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    payload = "".join(json.dumps(r, sort_keys=False, default=str) + "\n" for r in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        written = os.write(fd, payload)
        if written != len(payload):  # a full disk: say so rather than leave a torn line silently
            raise OSError(f"{path}: wrote {written} of {len(payload)} bytes of results")
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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
                raise ValueError(f"{path}:{number}: not a JSON record ({err})") from None
    return records
