"""CPU inference: the project's default runtime against every peer, all measured in one run.

Runtimes, on the same random-weight TinyViT classifier (timm's ``tiny_vit_{5m,11m,21m}_224``,
its 21,841-class head included) and the same fp32 input, each with torch's thread count:

* peers: ``timm eager`` (the baseline); ``torch.compile`` of the timm model (inductor, see
  :func:`compile_peer`; its compile time in ``extra``); ``onnxruntime (timm export)``: the
  timm model exported by
  ``torch.onnx.export`` at the measured shape and run by ONNX Runtime (what a user of timm gets
  without this project);
* this project: ``default``, the one ``--backend auto`` runs on the CPU:
  :func:`~tinyvit_backbone.inference.fuse_for_inference` under
  :class:`~tinyvit_backbone.inference.BatchParallel` in its ``auto`` mode, which measures its
  two ways on the first calls and keeps the faster (warmed up here until it has chosen; the
  choice is in ``extra``): ``fast path, threads`` (batches split over one-thread workers,
  single images split into row bands over them) and ``fast path, OpenMP`` (the same fused model
  called directly, one stream over torch's OpenMP threads), both also measured alone;
  ``onnxruntime (tinyvit-export)``:
  the graph of ``tinyvit-export`` (dynamic axes, checked against PyTorch), which
  ``--backend onnxruntime`` runs.

Inputs: 224x224 batch 8, 512x512 batch 2, 800x1333 batch 1 (COCO's test size), each for 5M,
11M and 21M; plus the probe's feature extraction from 224-px JPEG files (decode, resize,
crop, forward, cache writes) with each backend.

Timing: every runtime runs once per round, the order reversed every other round, so a load
change on the shared machine falls on all of them alike; a runtime's figure is its median over
the rounds, and the 1-minute load average is recorded after every round (``load_range``).
``default vs best peer`` is the median of the per-round ratios to the peer with the best
median, their quartiles in ``extra``. The fraction of peak is the model's FLOPs (timm's
computation counted by ``torch.utils.flop_counter`` on the meta device) per second over the
machine's fp32 matmul peak measured in the same run: the best ``torch.mm`` rate at 1024..3072
squared, before and after the models (the goal's definition). oneDNN's matmul, which the
default runs on, is faster than ``torch.mm``'s MKL on some CPUs (AVX-512 AMD): its best rate
and the fraction against it are in ``extra`` too (``onednn_peak_fraction``). Goals: default >=
1.0x the best peer everywhere; >= 85% of the peak at 224.

The run ends with the table of every runtime (img/s) per model and input, the default's share
of the peak, and its ratio to the best peer.

Fairness notes: ONNX Runtime's threads do not spin after a run (see
:class:`~tinyvit_backbone.onnx_runtime.OnnxRuntimeModel`): at its own unchanged speed, its
spinning would otherwise slow whichever runtime follows it in a round by a quarter. The fast
path keeps freed memory in the process (glibc mallopt, see
:func:`~tinyvit_backbone.inference.retain_freed_memory`), which then also spares the peers in
this process their page faults: they are measured at their best, not as a fresh process runs
them. ``--quick`` (about a minute): TinyViT-5M at 224 batch 8 and 800x1333 batch 1, no
torch.compile, 32 JPEGs.
"""
from __future__ import annotations

import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Figure, build_parser, main  # noqa: E402

BENCH = "inference"
ARCHS = ("5m", "11m", "21m")
SIZES = (((224, 224), 8), ((512, 512), 2), ((800, 1333), 1))
PEERS = ("timm eager", "torch.compile", "onnxruntime (timm export)")
DEFAULT = "default (fast path, auto)"
PROJECT = (DEFAULT, "fast path, threads", "fast path, OpenMP", "onnxruntime (tinyvit-export)")
PEAK = "fp32 torch.mm peak of this machine"
PEAK_GOAL = 0.85


# --------------------------------------------------------------------------- measurements
def matmul_peak_gflops(sizes=(1024, 2048, 3072), repeat: int = 3, onednn: bool = False) -> float:
    """Best fp32 matmul rate (GFLOP/s) at torch's thread count: ``torch.mm`` (MKL), or with
    ``onednn`` the oneDNN matmul the fast path's convolutions come from."""
    best = 0.0
    with torch.inference_mode():
        for n in sizes:
            a, b = torch.randn(n, n), torch.randn(n, n)
            for i in range(repeat + 1):  # the first call warms up
                start = time.perf_counter()
                if onednn:
                    torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
                else:
                    a @ b
                if i == 0:
                    continue
                best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return best


def model_gflop(arch: str, batch: int, h: int, w: int) -> float:
    """GFLOP of one timm classifier forward, counted from shapes on the meta device."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = timm.create_model(f"tiny_vit_{arch}_224", pretrained=False).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.empty(batch, 3, h, w))
    return counter.get_total_flops() / 1e9


def rounds_of(fns: dict, rounds: int) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per call of each function, one call each per round, order reversed every other
    round (after one warm-up call each); and the 1-minute load average after each round."""
    for fn in fns.values():
        fn()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    loads = []
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
        loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
    return times, loads


def _quartiles(values: list[float]) -> list[float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return [round(v, 3) for v in q]


def _onnx_of_timm(model, x) -> bytes:
    import io
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["logits"])
    return buffer.getvalue()


def compile_peer(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` (inductor) for one fixed input shape, as the ONNX Runtime peer's
    fixed-shape export: ``dynamic=False``. Left to decide, dynamo compiled a second input shape
    of timm's ``forward`` (or one remembered in inductor's cache folder from an earlier run) with
    dynamic sizes, and inductor's index simplification then had not finished TinyViT-21M at
    224 px batch 8 after 28 minutes on this project's 2-core machine; with static shapes the
    two compiles of the first calls (the second after timm fills its attention-bias cache) took
    38 s and 17 s."""
    torch._dynamo.reset()  # no shape decisions carried over from another model or input
    return torch.compile(model, dynamic=False)


def _runtimes(arch: str, x: torch.Tensor, with_compile: bool) -> tuple[dict, dict]:
    """The callables of every runtime, and setup facts (compile / export seconds)."""
    import timm

    from tinyvit_backbone.export import export_module
    from tinyvit_backbone.inference import TRIAL_CALLS, BatchParallel, fuse_for_inference
    from tinyvit_backbone.onnx_runtime import OnnxRuntimeModel

    torch.manual_seed(0)
    model = timm.create_model(f"tiny_vit_{arch}_224", pretrained=False).eval()
    fast = fuse_for_inference(copy.deepcopy(model))
    setup: dict = {}
    fns = {"timm eager": lambda: model(x)}
    if with_compile:
        compiled = compile_peer(copy.deepcopy(model))
        with torch.inference_mode():
            start = time.perf_counter()
            compiled(x)
            setup["compile_s"] = round(time.perf_counter() - start, 1)
        fns["torch.compile"] = lambda: compiled(x)
    start = time.perf_counter()
    timm_ort = OnnxRuntimeModel(_onnx_of_timm(model, x))
    setup["timm_export_s"] = round(time.perf_counter() - start, 1)
    fns["onnxruntime (timm export)"] = lambda: timm_ort(x)
    auto = BatchParallel(fast)
    with torch.inference_mode():
        for _ in range(TRIAL_CALLS):  # its trials: from here on it runs its choice
            auto(x)
    setup["auto_chose"] = dict(auto.chosen)
    threaded = BatchParallel(fast, mode="threads")
    fns[DEFAULT] = lambda: auto(x)
    fns["fast path, threads"] = lambda: threaded(x)
    fns["fast path, OpenMP"] = lambda: fast(x)
    start = time.perf_counter()
    exported = export_module(model, ["logits"], [None], check_sizes=[tuple(x.shape[2:])])
    setup["tinyvit_export_s"] = round(time.perf_counter() - start, 1)
    setup["tinyvit_export_max_abs_diff"] = exported.worst_diff
    ours_ort = OnnxRuntimeModel(exported.onnx)
    fns["onnxruntime (tinyvit-export)"] = lambda: ours_ort(x)
    with torch.inference_mode():
        reference = model(x)
        setup["default_max_abs_diff"] = max((f(x) - reference).abs().max().item()
                                            for f in (auto, threaded, fast))
    return fns, setup


def _default_runtime() -> str:
    from tinyvit_backbone.inference import resolve_backend
    backend = resolve_backend("auto", "cpu", tinyvit=True)
    return DEFAULT if backend == "torch" else "onnxruntime (tinyvit-export)"


def measure_forward(arch: str, size: tuple[int, int], batch: int, rounds: int,
                    with_compile: bool) -> list[Figure]:
    """Figures of one model and input; the fractions of the matmul peak are added by
    :func:`run` once the peak is known (``achieved_gflops`` in ``extra``)."""
    h, w = size
    where = f"@{h}x{w} batch {batch}"
    x = torch.randn(batch, 3, h, w)
    fns, setup = _runtimes(arch, x, with_compile)
    with torch.inference_mode():
        times, loads = rounds_of(fns, rounds)
    gflop = model_gflop(arch, batch, h, w)
    median = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: batch / v for k, v in median.items()}
    achieved = {k: round(gflop / v, 2) for k, v in median.items()}
    default = _default_runtime()
    peers = [p for p in PEERS if p in median]
    best_peer = min(peers, key=median.get)
    pair = [p / d for p, d in zip(times[best_peer], times[default])]  # > 1: default faster
    common = dict(model=f"tinyvit-{arch}", input_size=[h, w], batch=batch, rounds=rounds,
                  threads=torch.get_num_threads(), gflop_per_forward=round(gflop, 2),
                  load_range=[round(min(loads), 2), round(max(loads), 2)], **setup)
    figures = [Figure(
        BENCH, f"tinyvit-{arch} {where}: default vs best peer ({best_peer})",
        statistics.median(pair) * ips[best_peer], "img/s", f"best peer: {best_peer}",
        ips[best_peer], goal=1.0,
        extra=dict(common, default=default, estimator="median of per-round ratios",
                   pair_ratio_quartiles=_quartiles(pair),
                   images_per_s={k: round(v, 3) for k, v in ips.items()},
                   achieved_gflops=achieved))]
    for name in fns:
        if name == "timm eager":
            continue
        ratio = [b / a for a, b in zip(times[name], times["timm eager"])]
        figures.append(Figure(
            BENCH, f"tinyvit-{arch} {where}: {name} vs timm eager", ips[name], "img/s",
            "timm eager", ips["timm eager"],
            extra=dict(common, peer=name in PEERS, pair_ratio_quartiles=_quartiles(ratio),
                       achieved_gflops={name: achieved[name],
                                        "timm eager": achieved["timm eager"]})))
    figures.append(Figure(
        BENCH, f"tinyvit-{arch} {where}: default GFLOP/s vs matmul peak",
        gflop / median[default], "GFLOP/s", PEAK, float("nan"),
        goal=PEAK_GOAL if (h, w) == (224, 224) else None, extra=common))
    return figures


def table_markdown(figures: list[Figure]) -> str:
    """The run's table: img/s of every runtime per model and input (``default`` in bold is
    what the project runs), the default's share of the matmul peak, its ratio to the best
    peer (median of paired rounds) and the load average over the rounds."""
    from tinyvit_backbone.tabular import Column, Table, num, text
    from tinyvit_backbone.tabular import to_markdown as render

    runtimes = list(PEERS[:1]) + [DEFAULT, "fast path, threads", "fast path, OpenMP",
                                  *PEERS[1:], "onnxruntime (tinyvit-export)"]
    table = Table("inference", "CPU inference, img/s (median of paired rounds)",
                  [Column("model"), Column("input")]
                  + [Column(f"**{r}**" if r == DEFAULT else r, numeric=True, digits=2)
                     for r in runtimes]
                  + [Column("default, % of matmul peak", numeric=True, digits=0),
                     Column("default, % of oneDNN peak", numeric=True, digits=0),
                     Column("default / best peer", numeric=True, digits=2),
                     Column("best peer"), Column("auto chose"), Column("load")])
    for fig in figures:
        if "vs best peer" not in fig.name or "input_size" not in fig.extra:
            continue  # the extraction loop's figures have their own lines
        e = fig.extra
        ips = e["images_per_s"]
        peak = next(f for f in figures if f.baseline == PEAK and f.extra["model"] == e["model"]
                    and f.extra["input_size"] == e["input_size"])
        h, w = e["input_size"]
        table.add_row([text(e["model"]), text(f"{h}x{w} b{e['batch']}")]
                      + [num(ips.get(r)) for r in runtimes]
                      + [num(100 * peak.ratio),
                         num(100 * peak.value / max(peak.extra["onednn_matmul_peak_gflops"])),
                         num(fig.ratio),
                         text(fig.baseline.split(": ", 1)[1]),
                         text(", ".join(e.get("auto_chose", {}).values()) or "-"),
                         text("{}-{}".format(*e["load_range"]))])
    if figures:
        peaks = next(f.extra["matmul_peak_gflops"] for f in figures if f.baseline == PEAK)
        onednn = next(f.extra["onednn_matmul_peak_gflops"] for f in figures if f.baseline == PEAK)
        table.footnotes = [
            f"matmul peak: torch.mm {max(peaks):.0f} GFLOP/s (runs {', '.join(f'{p:.0f}' for p in peaks)}); "
            f"oneDNN {max(onednn):.0f} GFLOP/s; threads {torch.get_num_threads()}",
            "default = --backend auto: fuse_for_inference under BatchParallel, mode auto "
            "(the faster of threads and OpenMP, measured on its first calls)"]
    return render(table, heading_level=0)


# --------------------------------------------------------------------------- extraction
def _jpeg_folder(root: str, images: int) -> str:
    """An ImageFolder of smooth random 320x240 JPEGs (they compress like photos)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = os.path.join(root, "test", f"class{i % 4}")
        os.makedirs(folder, exist_ok=True)
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(
            os.path.join(folder, f"{i}.jpg"), quality=90)
    for c in range(4):
        os.makedirs(os.path.join(root, "train", f"class{c}"), exist_ok=True)
    return root


def measure_extraction(arch: str, images: int, rounds: int, with_compile: bool) -> list[Figure]:
    """The probe's whole extraction loop (JPEG decode + resize + crop in a prefetch thread,
    forward, memory-mapped cache writes) per backend; timm eager = the unfused extractor."""
    from linear_probe.backbones import FeatureExtractor, ModelSpec, build_extractor, build_network
    from linear_probe.extract import extract_splits
    from tinyvit_backbone.inference import resolve_backend

    spec = ModelSpec("tinyvit", arch=arch)
    batch = 64
    default = resolve_backend("auto", "cpu")
    extractors = {"timm eager": FeatureExtractor(build_network(spec)).eval(),
                  "torch": build_extractor(spec, backend="torch"),
                  "onnxruntime": build_extractor(spec, backend="onnxruntime", image_size=224)}
    if with_compile:
        extractors["torch.compile"] = compile_peer(FeatureExtractor(build_network(spec)).eval())
    with tempfile.TemporaryDirectory() as root:
        dataset = f"imagefolder:{_jpeg_folder(root, images)}"

        def run(extractor):
            with tempfile.TemporaryDirectory() as cache:
                entry = extract_splits(spec, dataset, ["test"], cache_dir=cache, image_size=224,
                                       batch_size=batch, device="cpu", progress=False,
                                       extractor=extractor).splits["test"]
            return entry.meta["extract_s"]

        loop: dict[str, list[float]] = {k: [] for k in extractors}
        for extractor in extractors.values():
            run(extractor)  # warm-up (and torch.compile's compilation)
        names = list(extractors)
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                loop[name].append(run(extractors[name]))
    ips = {k: images / statistics.median(v) for k, v in loop.items()}
    peers = [p for p in ("timm eager", "torch.compile") if p in ips] + ["onnxruntime"]
    peers = [p for p in peers if p != default]
    best_peer = max(peers, key=ips.get)
    pair = [p / d for p, d in zip(loop[best_peer], loop[default])]
    extra = dict(model=f"tinyvit-{arch}", images=images, batch=batch, rounds=rounds,
                 images_per_s={k: round(v, 2) for k, v in ips.items()},
                 pair_ratio_quartiles=_quartiles(pair), threads=torch.get_num_threads())
    figures = [Figure(BENCH, f"extract jpeg224 tinyvit-{arch}: default ({default}) vs best peer "
                             f"({best_peer})", statistics.median(pair) * ips[best_peer], "img/s",
                      f"best peer: {best_peer}", ips[best_peer], goal=1.0, extra=extra)]
    for name in extractors:
        if name != "timm eager":
            figures.append(Figure(BENCH, f"extract jpeg224 tinyvit-{arch}: {name} vs timm eager",
                                  ips[name], "img/s", "timm eager (unfused extractor)",
                                  ips["timm eager"], extra=extra))
    return figures


def run(quick: bool = False, archs: Sequence[str] = ARCHS) -> list[Figure]:
    if torch.cuda.is_available():
        raise RuntimeError("bench_inference measures CPU runtimes; run it on a CPU machine "
                           "(CUDA_VISIBLE_DEVICES= python bench/bench_inference.py)")
    from tinyvit_backbone.inference import retain_freed_memory
    retain_freed_memory()  # as the fast path does; process-wide, so for every runtime alike
    sizes = (1024, 2048) if quick else (1024, 2048, 3072)
    peaks = [matmul_peak_gflops(sizes)]
    onednn_peaks = [matmul_peak_gflops(sizes, onednn=True)]
    figures: list[Figure] = []
    if quick:
        figures += measure_forward("5m", (224, 224), 8, rounds=3, with_compile=False)
        figures += measure_forward("5m", (800, 1333), 1, rounds=3, with_compile=False)
        figures += measure_extraction("5m", images=32, rounds=1, with_compile=False)
    else:
        for size, batch in SIZES:
            for arch in archs:
                figures += measure_forward(arch, size, batch, rounds=7 if batch > 1 else 5,
                                           with_compile=True)
        figures += measure_extraction("5m", images=256, rounds=3, with_compile=True)
    peaks.append(matmul_peak_gflops(sizes))  # before and after the models: the larger counts
    onednn_peaks.append(matmul_peak_gflops(sizes, onednn=True))
    peak, onednn_peak = max(peaks), max(onednn_peaks)
    for fig in figures:
        if fig.baseline == PEAK:
            fig.baseline_value = peak
        if "achieved_gflops" in fig.extra or fig.baseline == PEAK:
            fig.extra["matmul_peak_gflops"] = [round(p, 1) for p in peaks]
            fig.extra["onednn_matmul_peak_gflops"] = [round(p, 1) for p in onednn_peaks]
        if fig.baseline == PEAK:
            fig.extra["onednn_peak_fraction"] = round(fig.value / onednn_peak, 3)
        if "achieved_gflops" in fig.extra:
            fig.extra["peak_fraction"] = {k: round(v / peak, 3)
                                          for k, v in fig.extra["achieved_gflops"].items()}
    print(table_markdown(figures), flush=True)
    return figures


def build_inference_parser():
    parser = build_parser(__doc__)
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS),
                        help="the TinyViT sizes the full run measures at every input (default: "
                             "all three; each costs several torch.compile runs)")
    return parser


if __name__ == "__main__":
    sys.exit(main(run, parser=build_inference_parser(), options=("archs",)))
