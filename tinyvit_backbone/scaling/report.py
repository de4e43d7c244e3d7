"""Files a shrinking search writes, and the tables made from its record.

``out/``
  - ``arch_<target>.json``: each target's architecture, ``{"embed_dims", "depths",
    "num_heads", "window_sizes"}`` (4 integers each), loadable as ``arch=json.load(f)`` or
    ``TinyViT(arch='out/arch_<target>.json')``;
  - ``search.json``: the record: settings, rounds, every candidate, the chosen ones;
  - ``candidates.csv`` / ``candidates.md``: one row per candidate (params, MACs, measured img/s,
    proxy score, kept / dropped and why). ``python -m tinyvit_backbone.scaling report`` remakes
    the tables from ``search.json``.

Every file is written to a temp file in the same folder, then renamed: an interrupted run
leaves either the old file or the new one.
"""
from __future__ import annotations

import json
import os
import re

from ..files import atomic_write_text
from ..tabular import simple_table
from ..tabular import to_csv as table_csv
from ..tabular import to_markdown as table_markdown
from .search import SearchResult, format_si

ARCH_FIELDS = ("embed_dims", "depths", "num_heads", "window_sizes")
CSV_COLUMNS = ("round", "target", "status", "reason", "key", "embed_dims", "depths", "num_heads",
               "window_sizes", "params", "macs", "throughput_img_s", "score", "limit_params",
               "limit_macs", "limit_img_s", "path")


def arch_filename(label: str) -> str:
    return "arch_" + re.sub(r"[^A-Za-z0-9._-]+", "_", label) + ".json"


def write_arch(path: str, arch: dict) -> None:
    """Write the four architecture lists as JSON (nothing else, so it loads as ``arch=``)."""
    body = ",\n".join(f'  "{k}": {json.dumps([int(v) for v in arch[k]])}' for k in ARCH_FIELDS)
    atomic_write_text(path, "{\n" + body + "\n}\n")


def candidate_rows(result: SearchResult) -> list[dict]:
    limits = {r.round: r.limits for r in result.rounds}
    rows = []
    for c in result.candidates:
        lim = limits.get(c.round, {})
        rows.append(dict(
            round=c.round, target=c.target, status=c.status, reason=c.reason, key=c.key,
            **{k: " ".join(str(v) for v in c.arch[k]) for k in ARCH_FIELDS},
            params=c.params, macs=c.macs,
            throughput_img_s=None if c.throughput is None else round(c.throughput, 2),
            score=None if c.score is None else round(c.score, 6),
            limit_params=lim.get("max_params"), limit_macs=lim.get("max_macs"),
            limit_img_s=lim.get("min_throughput"), path=" / ".join(c.path)))
    return rows


def to_csv(result: SearchResult) -> str:
    rows = [[row[k] for k in CSV_COLUMNS] for row in candidate_rows(result)]
    return table_csv(simple_table(CSV_COLUMNS, rows))


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    return table_markdown(simple_table(header, rows), heading_level=0).rstrip("\n").split("\n")


def _fmt_arch(arch: dict) -> str:
    return (f"dims {arch['embed_dims']}, depths {arch['depths']}, "
            f"windows {arch['window_sizes']}")


def to_markdown(result: SearchResult) -> str:
    s = result.settings
    thr = s["cost"].get("throughput")
    thr_text = ("not measured" if thr is None else
                ", ".join(f"{k} {v}" for k, v in thr.items() if k in
                          ("device", "batch_size", "resolution", "amp", "callable")))
    proxy = s["proxy"]
    lines = [
        "# Progressive model shrinking",
        "",
        f"Seed `{s['seed_arch']}`; targets: "
        + "; ".join(f"{t.get('label') or t.get('name') or 'target'} ({_limits_text(t)})"
                    for t in s["targets"]) + ".",
        f"Counts: {s['cost']['counter']}, {s['cost']['num_classes']}-class head, "
        f"{s['cost']['resolution']}px. Throughput: {thr_text}.",
        "Proxy: " + ", ".join(f"{k} {v}" for k, v in proxy.items()) + ".",
        f"Search: seed {s['seed']}, {s['candidates_per_round']} candidates per round, "
        f"round ratio {s['round_ratio']}, band {s['band']}, factors "
        f"{', '.join(s['space']['factors'])}.",
        "",
        "## Chosen architectures",
        "",
    ]
    compare = s.get("compare") or {}
    header = ["target", "architecture", "params", "MACs", "img/s", "score"]
    if compare:
        header += ["reference", "ref params", "ref MACs", "params vs ref"]
    rows = []
    for label, c in result.chosen_candidates().items():
        row = [label, _fmt_arch(c.arch), format_si(c.params), format_si(c.macs),
               None if c.throughput is None else f"{c.throughput:.4g}",
               None if c.score is None else f"{c.score:.4g}"]
        if compare:
            ref = compare.get(label)
            row += ([ref["arch"], format_si(ref["params"]), format_si(ref["macs"]),
                     f"{100.0 * (c.params / ref['params'] - 1):+.1f}%"] if ref else [None] * 4)
        rows.append(row)
    lines += _md_table(header, rows)
    lines += ["", "## Every candidate", ""]
    limits = {r.round: r.limits for r in result.rounds}
    for r in result.rounds:
        lines += [f"### Round {r.round} (target {r.target}): {_limits_text(limits[r.round])}; "
                  f"from `{r.start_key}`", ""]
        rows = [[c.key, format_si(c.params), format_si(c.macs),
                 None if c.throughput is None else f"{c.throughput:.4g}",
                 None if c.score is None else f"{c.score:.4g}", c.status, c.reason,
                 " / ".join(c.path) or "(unchanged)"]
                for c in result.candidates if c.round == r.round]
        lines += _md_table(["candidate", "params", "MACs", "img/s", "score", "status", "why",
                            "steps"], rows)
        lines.append("")
    return "\n".join(lines)


def _limits_text(lim: dict) -> str:
    parts = []
    if lim.get("max_params") is not None:
        parts.append(f"params <= {format_si(lim['max_params'])}")
    if lim.get("max_macs") is not None:
        parts.append(f"MACs <= {format_si(lim['max_macs'])}")
    if lim.get("min_throughput") is not None:
        parts.append(f"img/s >= {lim['min_throughput']:.4g}")
    return ", ".join(parts)


def write_tables(result: SearchResult, out_dir: str) -> dict[str, str]:
    paths = dict(csv=os.path.join(out_dir, "candidates.csv"),
                 markdown=os.path.join(out_dir, "candidates.md"))
    atomic_write_text(paths["csv"], to_csv(result))
    atomic_write_text(paths["markdown"], to_markdown(result))
    return paths


def write_outputs(result: SearchResult, out_dir: str) -> dict[str, str]:
    """Write the architectures, the record and the tables; return ``{what: path}``."""
    paths = {}
    for label, cand in result.chosen_candidates().items():
        paths[f"arch {label}"] = os.path.join(out_dir, arch_filename(label))
        write_arch(paths[f"arch {label}"], cand.arch)
    paths["record"] = os.path.join(out_dir, "search.json")
    atomic_write_text(paths["record"], json.dumps(result.to_dict(), indent=1) + "\n")
    paths.update(write_tables(result, out_dir))
    return paths


def load_result(path: str) -> SearchResult:
    """Read a ``search.json`` record, with a clear error when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return SearchResult.from_dict(data)
    except FileNotFoundError:
        raise ValueError(f"search record not found: {path!r} (run the `search` command first; "
                         "it writes OUT/search.json)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path!r} is not a search record written by `search` "
                         f"({type(err).__name__}: {err})") from None
