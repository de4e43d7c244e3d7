"""PNG plots of the report, drawn with matplotlib's object API and the Agg canvas (no pyplot,
so no global backend or figure state is touched).

PNG bytes are reproducible: a fixed figure size and dpi, no "Software" metadata, and PNG
carries no date unless asked; the tests check two runs give identical bytes.
"""
from __future__ import annotations

import io
import re

from tinyvit_backbone.complexity import classifier_complexity

from . import published as pub
from .bench_report import BenchReport
from .probes import ProbeResults, dataset_order, kshot_stats

FIGSIZE = (6.4, 4.2)
DPI = 100


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "dataset"


def fewshot_plots(results: ProbeResults) -> dict[str, bytes]:
    """{"fewshot_<dataset>.png": png}: accuracy vs k, one line per model and protocol
    (k-shot probe: mean ± std over seeds; episodes: mean ± 95% CI)."""
    stats = kshot_stats(results.records)
    episodes: dict[tuple[str, str, str, int], dict[int, tuple[float, float | None]]] = {}
    for r in results.records:
        if r.task == "episodes":
            protocol = r.protocol + (f", {r.backbone_mode}" if r.backbone_mode else "")
            episodes.setdefault((r.model, protocol, r.dataset, r.n_way), {})[r.k] = (r.value,
                                                                                     r.ci95)
    datasets = sorted({d for _, _, d in stats} | {d for _, _, d, _ in episodes},
                      key=dataset_order)
    out: dict[str, bytes] = {}
    for ds in datasets:
        fig = _new_figure()
        ax = fig.add_subplot()
        ks_all: set[int] = set()
        for (model, protocol, d), per in sorted(stats.items()):
            if d != ds:
                continue
            ks = sorted(per)
            ks_all.update(ks)
            ax.errorbar(ks, [per[k].mean for k in ks], yerr=[per[k].std or 0.0 for k in ks],
                        marker="o", capsize=3, label=f"{model} (k-shot probe, {protocol})")
        for (model, protocol, d, n_way), per in sorted(episodes.items()):
            if d != ds:
                continue
            ks = sorted(per)
            ks_all.update(ks)
            ax.errorbar(ks, [per[k][0] for k in ks], yerr=[per[k][1] or 0.0 for k in ks],
                        marker="s", linestyle="--", capsize=3,
                        label=f"{model} ({n_way}-way episodes, {protocol})")
        ks_sorted = sorted(ks_all)
        if ks_sorted and ks_sorted[0] > 0 and ks_sorted[-1] / ks_sorted[0] >= 4:
            ax.set_xscale("log")
        ax.set_xticks(ks_sorted, [str(k) for k in ks_sorted])
        ax.minorticks_off()
        ax.set_xlabel("shots per class (k)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{ds}: few-shot accuracy vs k")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out[f"fewshot_{slug(ds)}.png"] = png_bytes(fig)
    return out


def _arch_label(p: pub.PublishedArch) -> str:
    return p.name.removeprefix("TinyViT-") + ("" if p.input_size == 224 else f"@{p.input_size}")


def accuracy_plots(bench: BenchReport) -> dict[str, bytes]:
    """Published ImageNet-1k top-1 against counted params and against measured images/s
    (the benchmark's 'backbone' path, else 'fast'); the second only with measurements."""
    out: dict[str, bytes] = {}
    fig = _new_figure()
    ax = fig.add_subplot()
    for key, label, marker in (("top1_in22k_distill", "IN-21k distill", "o"),
                               ("top1_in1k", "IN-1k only", "s")):
        pts = [(classifier_complexity(p.arch, p.input_size).params_m, getattr(p, key), p)
               for p in pub.MODELS if getattr(p, key) is not None]
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker=marker, linestyle="",
                label=f"TinyViT, {label} (paper top-1)")
        for x, y, p in pts:
            ax.annotate(_arch_label(p), (x, y), textcoords="offset points", xytext=(4, 2),
                        fontsize=7)
    ax.set_xlabel("parameters (M, counted)")
    ax.set_ylabel("ImageNet-1k top-1 (%)")
    ax.set_title("Accuracy vs parameters")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out["accuracy_vs_params.png"] = png_bytes(fig)

    pts = []
    for p in pub.MODELS:
        measured = bench.throughput.get((p.arch, p.input_size), {})
        ips = measured.get("backbone", measured.get("fast"))
        if ips is not None and p.top1_in22k_distill is not None:
            pts.append((ips, p.top1_in22k_distill, p))
    if pts:
        fig = _new_figure()
        ax = fig.add_subplot()
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", linestyle="",
                label="TinyViT, IN-21k distill (paper top-1)")
        for x, y, p in pts:
            ax.annotate(_arch_label(p), (x, y), textcoords="offset points", xytext=(4, 2),
                        fontsize=7)
        ax.set_xlabel("images/s (measured by the project's benchmark)")
        ax.set_ylabel("ImageNet-1k top-1 (%)")
        ax.set_title("Accuracy vs measured throughput")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out["accuracy_vs_throughput.png"] = png_bytes(fig)
    return out
