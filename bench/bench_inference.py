"""CPU inference: the project's default runtime against every peer, all measured in one run.

Runtimes, on the same random-weight TinyViT classifier (timm's ``tiny_vit_{5m,11m,21m}_224``)
and the same fp32 input, with torch's thread count for every one of them:

* peers: ``timm eager`` (the baseline); ``torch.compile`` of the timm model (inductor; its
  compile time is reported separately, in ``extra``); ``onnxruntime (timm export)``: the timm
  model exported by ``torch.onnx.export`` at the measured shape and run by ONNX Runtime,
  which is what a user of timm gets without this project;
* this project: ``fast path`` (:func:`~tinyvit_backbone.inference.fuse_for_inference`, one
  stream over torch's OpenMP threads); ``fast path, batch threads``
  (:class:`~tinyvit_backbone.inference.BatchParallel`); ``onnxruntime (tinyvit-export)``: the
  graph of ``tinyvit-export`` (dynamic axes, checked against PyTorch);
* ``default``: the one of those the project picks on the CPU (``--backend auto``,
  :func:`~tinyvit_backbone.inference.resolve_backend`).

Inputs: 224x224 batch 8, 512x512 batch 2, 800x1333 batch 1 (COCO's test size), each for 5M,
11M and 21M; plus the probe's feature extraction from 224-px JPEG files (decode, resize,
crop, forward, cache writes) with each backend.

Timing: every runtime runs once per round, the order reversed every other round, so a load
change on the shared machine falls on all of them alike; a runtime's figure is its median over
the rounds. ``default vs best peer`` is the median of the per-round ratios to the peer with
the best median, with their quartiles in ``extra`` (the run's noise). The fraction of peak is
the model's FLOPs (timm's computation, counted by ``torch.utils.flop_counter`` on the meta
device, the counter of :mod:`tinyvit_backbone.complexity`) per second over the
machine's fp32 matmul peak, measured in the same run (best ``torch.mm`` rate at 1024..3072
squared, before and after the models). Goals: default >= 1.0x the best peer everywhere; >= 80%
of the peak at 224.

Fairness notes: the fast path keeps freed memory in the process (glibc mallopt, see
:func:`~tinyvit_backbone.inference.retain_freed_memory`), which then also spares the peers in
this process their page faults: they are measured at their best, not as a fresh process runs
them. ``--quick`` (a minute or two): TinyViT-5M at 224 only, no torch.compile, 32 JPEGs.
"""
from __future__ import annotations

import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Figure, main  # noqa: E402

BENCH = "inference"
ARCHS = ("5m", "11m", "21m")
SIZES = (((224, 224), 8), ((512, 512), 2), ((800, 1333), 1))
PEERS = ("timm eager", "torch.compile", "onnxruntime (timm export)")
PROJECT = ("fast path", "fast path, batch threads", "onnxruntime (tinyvit-export)")
PEAK = "fp32 torch.mm peak of this machine"


# --------------------------------------------------------------------------- measurements
def matmul_peak_gflops(sizes=(1024, 2048, 3072), repeat: int = 3) -> float:
    """Best fp32 ``torch.mm`` rate (GFLOP/s) at torch's thread count."""
    best = 0.0
    with torch.inference_mode():
        for n in sizes:
            a, b = torch.randn(n, n), torch.randn(n, n)
            a @ b
            for _ in range(repeat):
                start = time.perf_counter()
                a @ b
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


def rounds_of(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, one call each per round, order reversed every other
    round (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


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


def _runtimes(arch: str, x: torch.Tensor, with_compile: bool) -> tuple[dict, dict]:
    """The callables of every runtime, and setup facts (compile / export seconds)."""
    import timm

    from tinyvit_backbone.export import OnnxRuntimeModel, export_module
    from tinyvit_backbone.inference import BatchParallel, fuse_for_inference

    torch.manual_seed(0)
    model = timm.create_model(f"tiny_vit_{arch}_224", pretrained=False).eval()
    fast = fuse_for_inference(copy.deepcopy(model))
    setup: dict = {}
    fns = {"timm eager": lambda: model(x)}
    if with_compile:
        compiled = torch.compile(copy.deepcopy(model))
        with torch.inference_mode():
            start = time.perf_counter()
            compiled(x)
            setup["compile_s"] = round(time.perf_counter() - start, 1)
        fns["torch.compile"] = lambda: compiled(x)
    start = time.perf_counter()
    timm_ort = OnnxRuntimeModel(_onnx_of_timm(model, x))
    setup["timm_export_s"] = round(time.perf_counter() - start, 1)
    fns["onnxruntime (timm export)"] = lambda: timm_ort(x)
    fns["fast path"] = lambda: fast(x)
    threaded = BatchParallel(fast)
    fns["fast path, batch threads"] = lambda: threaded(x)
    start = time.perf_counter()
    exported = export_module(model, ["logits"], [None], check_sizes=[tuple(x.shape[2:])])
    setup["tinyvit_export_s"] = round(time.perf_counter() - start, 1)
    setup["tinyvit_export_max_abs_diff"] = exported.worst_diff
    ours_ort = OnnxRuntimeModel(exported.onnx)
    fns["onnxruntime (tinyvit-export)"] = lambda: ours_ort(x)
    return fns, setup


def _default_runtime(batch: int) -> str:
    from tinyvit_backbone.inference import resolve_backend
    backend = resolve_backend("auto", "cpu", tinyvit=True, batch_size=batch)
    if backend == "onnxruntime":
        return "onnxruntime (tinyvit-export)"
    return "fast path, batch threads" if batch > 1 and torch.get_num_threads() > 1 else "fast path"


def measure_forward(arch: str, size: tuple[int, int], batch: int, rounds: int,
                    with_compile: bool) -> list[Figure]:
    """Figures of one model and input; the fractions of the matmul peak are added by
    :func:`run` once the peak is known (``achieved_gflops`` in ``extra``)."""
    h, w = size
    where = f"@{h}x{w} batch {batch}"
    x = torch.randn(batch, 3, h, w)
    fns, setup = _runtimes(arch, x, with_compile)
    with torch.inference_mode():
        times = rounds_of(fns, rounds)
    gflop = model_gflop(arch, batch, h, w)
    median = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: batch / v for k, v in median.items()}
    achieved = {k: round(gflop / v, 2) for k, v in median.items()}
    default = _default_runtime(batch)
    peers = [p for p in PEERS if p in median]
    best_peer = min(peers, key=median.get)
    pair = [p / d for p, d in zip(times[best_peer], times[default])]  # > 1: default faster
    common = dict(model=f"tinyvit-{arch}", input_size=[h, w], batch=batch, rounds=rounds,
                  threads=torch.get_num_threads(), gflop_per_forward=round(gflop, 2), **setup)
    figures = [Figure(
        BENCH, f"tinyvit-{arch} {where}: default ({default}) vs best peer ({best_peer})",
        statistics.median(pair) * ips[best_peer], "img/s", f"best peer: {best_peer}",
        ips[best_peer], goal=1.0,
        extra=dict(common, estimator="median of per-round ratios",
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
        BENCH, f"tinyvit-{arch} {where}: default ({default}) GFLOP/s vs matmul peak",
        gflop / median[default], "GFLOP/s", PEAK, float("nan"),
        goal=0.8 if (h, w) == (224, 224) else None, extra=common))
    return figures


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
    default = resolve_backend("auto", "cpu", batch_size=batch)
    extractors = {"timm eager": FeatureExtractor(build_network(spec)).eval(),
                  "torch": build_extractor(spec, backend="torch"),
                  "onnxruntime": build_extractor(spec, backend="onnxruntime", image_size=224)}
    if with_compile:
        extractors["torch.compile"] = torch.compile(FeatureExtractor(build_network(spec)).eval())
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


def run(quick: bool = False) -> list[Figure]:
    if torch.cuda.is_available():
        raise RuntimeError("bench_inference measures CPU runtimes; run it on a CPU machine "
                           "(CUDA_VISIBLE_DEVICES= python bench/bench_inference.py)")
    from tinyvit_backbone.inference import retain_freed_memory
    retain_freed_memory()  # as the fast path does; process-wide, so for every runtime alike
    sizes = (1024, 2048) if quick else (1024, 2048, 3072)
    peaks = [matmul_peak_gflops(sizes)]
    figures: list[Figure] = []
    if quick:
        figures += measure_forward("5m", (224, 224), 8, rounds=3, with_compile=False)
        figures += measure_extraction("5m", images=32, rounds=1, with_compile=False)
    else:
        for size, batch in SIZES:
            for arch in ARCHS:
                figures += measure_forward(arch, size, batch, rounds=7 if batch > 1 else 5,
                                           with_compile=True)
        figures += measure_extraction("5m", images=256, rounds=3, with_compile=True)
    peaks.append(matmul_peak_gflops(sizes))  # before and after the models: the larger counts
    peak = max(peaks)
    for fig in figures:
        if fig.baseline == PEAK:
            fig.baseline_value = peak
        if "achieved_gflops" in fig.extra:
            fig.extra["matmul_peak_gflops"] = [round(p, 1) for p in peaks]
            fig.extra["peak_fraction"] = {k: round(v / peak, 3)
                                          for k, v in fig.extra["achieved_gflops"].items()}
        elif fig.baseline == PEAK:
            fig.extra["matmul_peak_gflops"] = [round(p, 1) for p in peaks]
    return figures


if __name__ == "__main__":
    sys.exit(main(run))
