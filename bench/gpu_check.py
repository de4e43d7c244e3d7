"""Every GPU path of the project in one run (at most 8 minutes on one GPU), one JSON report.

    make gpu-check                      # python tools/gpu_check.py --out results/gpu_check/report.json

Sections, in run order (each one's result lands in the report, whatever the others do):

* ``mmcv_ops``: mmcv's nms and RoIAlign on CUDA tensors against the CPU ops (same kept boxes,
  max |diff| of the pooled features); RoIAlign also in fp16 (what AMP detectors feed it) and
  bf16 (recorded: mmcv 2.1's kernels dispatch float, double and half);
* ``backbone_amp``: TinyViT-21M forward + backward under bf16 and fp16 autocast (fp16 with a
  GradScaler) against fp32: output error, gradient cosine, seconds per step;
* ``fast_path``: :func:`~tinyvit_backbone.inference.fuse_for_inference` (fused SDPA attention
  on CUDA) against the plain backbone, max |diff| at 224 px and at a detection size, TF32 off;
  whether the memory-efficient SDPA kernel takes TinyViT's bias mask; speed with AMP;
* ``cascade``: Cascade Mask R-CNN TinyViT-21M and Swin-T, 30 training iterations each at
  1333x800, batch 2, AMP, COCO's proposal and sampling budgets: s/iter, peak memory, ratios;
* ``mask_rcnn`` and ``upernet``: 20 iterations each through ``tools/train.py --embedded --amp``
  (mmengine's Runner, evaluation and checkpoint included);
* ``distill``: the mini reproduction at 224 px with a TinyViT-21M student: save-logits, then
  student epochs from the store against supervised epochs (img/s, ratio);
* ``probe_extraction``: linear_probe's extraction pipeline against the raw forward of the same
  fused model on the same batches in memory (img/s, ratio);
* ``classification``: TinyViT-21M against Swin-T classification throughput at 224, batch 256,
  fp16 autocast, with the paper's V100 figures (1,571 vs 1,393 img/s) beside.

A section whose numbers are out of tolerance is ``failed`` with its problems listed; one that
raises is ``error`` with the traceback; ``skipped`` once the time budget is spent. The report is
rewritten (atomically) after every section, so an interrupted run keeps what it measured.

The GPU-only calls go through :class:`Gpu`; the CPU test suite passes a stand-in and
:meth:`Sizes.tiny` to run the same wiring in seconds. The project's own APIs are called from
the "project calls" block below and nowhere else.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REPORT_FORMAT = "tinyvit-transfer gpu-check"
REPORT_VERSION = 1
DEFAULT_BUDGET_S = 480.0
# The paper's throughput table (V100, batch 256, 224 px, AMP), images/s.
PAPER_V100_IMG_S = {"tinyvit-21m": 1571, "swin-t": 1393}


class NoGpu(Exception):
    """torch sees no CUDA device: the check cannot run here."""


# ------------------------------------------------------------------------------- the device
class Gpu:
    """The calls that need an NVIDIA GPU, in one place. Tests pass a CPU stand-in (a subclass
    with ``device = cpu`` and these methods as no-ops) to run the wiring without one."""

    #: mmengine's AmpOptimWrapper and tools/train.py --amp need CUDA
    mmengine_amp = True

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            raise NoGpu("make gpu-check needs an NVIDIA GPU that torch can use, and torch sees "
                        "none here (no driver, a CPU-only torch build, or CUDA_VISIBLE_DEVICES "
                        "hides it); run it on a GPU machine after `make env` there")
        self.device = torch.device("cuda", torch.cuda.current_device())

    def describe(self) -> dict:
        props = torch.cuda.get_device_properties(self.device)
        return dict(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1),
                    visible_gpus=torch.cuda.device_count(), torch_cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_mib(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def release(self) -> None:
        """Hand cached blocks back between models, so one model's peak does not hide another's."""
        gc.collect()
        torch.cuda.empty_cache()

    def bf16_supported(self) -> bool:
        return torch.cuda.is_bf16_supported()

    @contextlib.contextmanager
    def exact_math(self):
        """TF32 off for convolutions and matmuls: the fast-path comparison measures the
        rewrite, not TF32's 10-bit mantissa."""
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    @contextlib.contextmanager
    def tuned_kernels(self):
        """cuDNN autotuning for fixed-shape throughput runs (what benchmarks of the paper's kind use)."""
        saved = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = saved


@dataclass(frozen=True)
class Sizes:
    """Every size the check uses; the defaults are the GPU run's, :meth:`tiny` the tests'."""

    arch: str | dict = "21m"              # the paper's transfer backbone
    backbone_batch: int = 32
    backbone_size: int = 224
    backbone_steps: int = 5
    fast_inputs: tuple = ((8, 224, 224), (2, 800, 1344))  # (batch, h, w): 224 and COCO-sized
    fast_timing_batch: int = 64
    timing_rounds: int = 5
    det_scale: tuple = (1333, 800)        # (w, h), mmdet's order
    det_batch: int = 2
    det_arch: str | None = None           # None: the configs' own TinyViT-21M
    coco_budgets: bool = True             # the configs' proposal / RoI sampling budgets
    cascade_iters: int = 30
    warmup_iters: int = 3
    train_iters: int = 20
    mask_rcnn_size: int = 800
    upernet_size: int = 512
    seg_batch: int = 2                    # UperNet's pooling branch needs 2+ images for BatchNorm
    distill_arch: str | dict | None = "21m"
    distill_size: int = 224
    probe_arch: str | dict = "21m"
    probe_size: int = 224
    probe_batch: int = 256
    cls_models: tuple = ("tiny_vit_21m_224", "swin_tiny_patch4_window7_224")
    cls_kwargs: tuple = ({}, {})          # timm.create_model keyword arguments of each
    cls_size: int = 224
    cls_batch: int = 256
    cls_rounds: int = 10
    nms_boxes: int = 2000
    roi_features: tuple = (2, 256, 200, 336)  # FPN P2 of a 1333x800 batch of 2
    rois: int = 512
    workers: int = field(default_factory=lambda: max(0, min(8, (os.cpu_count() or 1) - 1)))

    @classmethod
    def tiny(cls) -> Sizes:
        """The same wiring in seconds on a CPU (tests)."""
        tiny_arch = {"embed_dims": [32, 64, 96, 128], "depths": [1, 1, 2, 1],
                     "num_heads": [1, 2, 3, 4], "window_sizes": [7, 4, 2, 1]}
        return cls(arch=tiny_arch, backbone_batch=4, backbone_size=64, backbone_steps=1,
                   fast_inputs=((2, 32, 32), (1, 32, 48)), fast_timing_batch=2, timing_rounds=1,
                   det_scale=(128, 96), det_batch=1,
                   det_arch="5m", coco_budgets=False, cascade_iters=1, warmup_iters=0, train_iters=1,
                   mask_rcnn_size=96, upernet_size=64, distill_arch=None, distill_size=32,
                   probe_arch=tiny_arch, probe_size=32, probe_batch=64,
                   cls_models=("tiny_vit_5m_224", "swin_tiny_patch4_window7_224"),
                   cls_kwargs=({}, {"img_size": 64, "window_size": 4}), cls_size=64,
                   cls_batch=1, cls_rounds=1, nms_boxes=50, roi_features=(1, 4, 16, 16), rois=8,
                   workers=0)


@dataclass
class Context:
    gpu: Gpu
    sizes: Sizes
    scratch: Path
    log: Callable[[str], None] = print


# ------------------------------------------------------------------------------ project calls
# The only place that calls the project's APIs: they are still moving, keep these thin.

def build_backbone(arch):
    from tinyvit_backbone import TinyViT
    return TinyViT(arch=arch)


def fuse(model):
    from tinyvit_backbone.inference import fuse_for_inference
    return fuse_for_inference(model)


def scenes(root: Path) -> str:
    from tinyvit_backbone.embedded.scenes import ensure_scenes
    return ensure_scenes(str(root))


def detector_config(config: str, data_root: str, *, iters: int, scale: tuple, batch: int,
                    work_dir: str, amp: bool, arch=None, coco_budgets: bool = True):
    """``config`` under the embedded-scenes overlay, then put back what a cost measurement at
    COCO scale needs: the config's own proposal / sampling budgets (the overlay shrinks them
    for a handful of objects), an exact ``scale`` resize, and AMP. AMP is float16: mmcv 2.1's
    CUDA RoIAlign dispatches float, double and half only."""
    from mmengine.config import Config

    import tinyvit_backbone  # noqa: F401  (registers TinyViT)
    from tinyvit_backbone.config_overlay import apply_overlay

    original = Config.fromfile(str(ROOT / config))
    cfg = apply_overlay(original, data_root, iters=iters, batch_size=batch, work_dir=work_dir,
                        arch=arch)
    if coco_budgets:
        cfg.model.train_cfg = copy.deepcopy(original.model.train_cfg)
    for step in cfg.train_dataloader.dataset.pipeline:
        if step["type"] == "Resize":
            step.update(scale=tuple(scale), keep_ratio=False)
    if amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.update(loss_scale="dynamic", dtype="float16")
    cfg.log_level = "WARNING"
    return cfg


def train_cli(config: str, data_root: str, work_dir: str, *, iters: int, size: int, batch: int,
              amp: bool, arch=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), config, "--embedded",
           "--data-root", data_root, "--iters", str(iters), "--image-size", str(size),
           "--batch-size", str(batch), "--work-dir", work_dir] + (["--amp"] if amp else [])
    if arch:
        cmd += ["--arch", arch]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def distill_pipeline(out_dir: Path, *, arch, image_size: int, device: str, workers: int) -> dict:
    """The mini reproduction (teacher -> store -> students) at its smallest schedule, and the
    per-epoch records of the two students (the run's own layout, read here only)."""
    from tinyvit_backbone.distill import run_pipeline

    result = run_pipeline(str(out_dir), arch, image_size=image_size, scale="smoke",
                          device=device, workers=workers, progress=False, log=lambda _: None)
    students = {}
    for mode in ("store", "labels"):
        with open(out_dir / f"student_{mode}" / "result.json") as f:
            students[mode] = json.load(f)
    return dict(pipeline=result, students=students)


def probe_extraction(spec_arch, *, image_size: int, batch_size: int, device: torch.device,
                     cache_dir: Path, workers: int, extractor=None):
    """linear_probe's extraction of the digits' train split; returns its cache entry's meta."""
    from linear_probe.backbones import ModelSpec
    from linear_probe.extract import extract_splits

    spec = ModelSpec(model="tinyvit", arch=spec_arch)
    out = extract_splits(spec, "digits", ["train"], cache_dir=cache_dir, image_size=image_size,
                         batch_size=batch_size, device=device, progress=False, workers=workers,
                         extractor=extractor)
    return out.splits["train"].meta


def probe_batches(spec_arch, *, image_size: int, batch_size: int, device: torch.device):
    """The fused extractor and the same preprocessed digits batches, in memory."""
    from linear_probe.backbones import ModelSpec, build_extractor
    from linear_probe.extract import preprocessed_batches

    spec = ModelSpec(model="tinyvit", arch=spec_arch)
    batches = preprocessed_batches(spec, "digits", "train", image_size, batch_size)
    return build_extractor(spec, "pooled", device), batches


def amp_dtype(device: torch.device):
    from tinyvit_backbone.device import amp_dtype as policy
    return policy(device, True)


# ------------------------------------------------------------------------------ measurement
def seconds_of(fn: Callable[[], object], gpu: Gpu) -> float:
    """Wall seconds of one call with the GPU's queue drained on both sides."""
    gpu.synchronize()
    start = time.perf_counter()
    fn()
    gpu.synchronize()
    return time.perf_counter() - start


def max_abs_diff(a, b) -> float:
    if isinstance(a, (tuple, list)):
        return max(max_abs_diff(x, y) for x, y in zip(a, b))
    return float((a.float() - b.float()).abs().max())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


# ------------------------------------------------------------------------------ the sections
def check_mmcv_ops(ctx: Context) -> dict:
    from mmcv.ops import RoIAlign, get_compiling_cuda_version, nms

    dev, s = ctx.gpu.device, ctx.sizes
    problems = []
    compiled = get_compiling_cuda_version()
    if dev.type == "cuda" and compiled != torch.version.cuda:
        problems.append(f"mmcv compiled with CUDA {compiled!r}, torch has {torch.version.cuda}")
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(s.nms_boxes, 2, generator=g) * 800
    boxes = torch.cat([xy, xy + 8 + torch.rand(s.nms_boxes, 2, generator=g) * 120], 1)
    scores = torch.rand(s.nms_boxes, generator=g)
    _, keep_cpu = nms(boxes, scores, iou_threshold=0.5)
    _, keep_dev = nms(boxes.to(dev), scores.to(dev), iou_threshold=0.5)
    same_keep = keep_dev.cpu().tolist() == keep_cpu.tolist()
    if not same_keep:
        problems.append("nms keeps other boxes on the GPU than on the CPU")
    n, c, h, w = s.roi_features
    feats = torch.randn(n, c, h, w, generator=g)
    x0 = torch.rand(s.rois, 2, generator=g) * torch.tensor([w * 3.0, h * 3.0])
    rois = torch.cat([torch.randint(0, n, (s.rois, 1), generator=g).float(), x0,
                      x0 + 4 + torch.rand(s.rois, 2, generator=g) * 60], 1)
    align = RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=0, aligned=True)
    ref = align(feats, rois)
    diff = max_abs_diff(align(feats.to(dev), rois.to(dev)).cpu(), ref)
    if diff > 1e-4:
        problems.append(f"RoIAlign differs from the CPU by {diff:.2e} (tolerance 1e-4)")
    low = {}
    if dev.type == "cuda":  # the dtypes AMP detectors feed it (mmcv's CPU kernels are fp32 only)
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            try:
                low[name] = max_abs_diff(align(feats.to(dev, dtype), rois.to(dev, dtype)).cpu(), ref)
            except RuntimeError as err:
                low[name] = f"unsupported: {str(err).splitlines()[0][:120]}"
        if not isinstance(low["fp16"], float) or low["fp16"] > 2e-2:
            problems.append(f"fp16 RoIAlign (AMP detectors): {low['fp16']} (tolerance 2e-2)")
    return dict(problems=problems, compiled_cuda=compiled, torch_cuda=torch.version.cuda,
                nms_boxes=s.nms_boxes, nms_kept=len(keep_cpu), nms_same_keep=same_keep,
                roi_align_max_abs_diff=diff, roi_align_low_precision_max_abs_diff=low,
                roi_feature_shape=list(s.roi_features), rois=s.rois)


def check_backbone_amp(ctx: Context) -> dict:
    """Forward + backward of the detection backbone (all four stages out) in fp32, bf16 and
    fp16; the loss is a fixed random projection of every stage, so each gradient is non-trivial."""
    gpu, s = ctx.gpu, ctx.sizes
    dev = gpu.device
    torch.manual_seed(0)
    base = build_backbone(s.arch).to(dev).train()
    x = torch.randn(s.backbone_batch, 3, s.backbone_size, s.backbone_size, device=dev)
    with torch.no_grad():
        probes = [torch.randn_like(o) for o in base(x)]

    def step(model, dtype):
        """One step as an AMP training loop takes it: fp16 halves the loss scale and retries
        while the scaled gradients overflow. Returns the outputs and the (unscaled) loss."""
        scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
        autocast = (torch.autocast(dev.type, dtype=dtype) if dtype is not None
                    else contextlib.nullcontext())
        for _ in range(16):
            model.zero_grad(set_to_none=True)
            with autocast:
                outs = model(x)
                loss = sum((o.float() * p).mean() for o, p in zip(outs, probes))
            scaler.scale(loss).backward()
            if not scaler.is_enabled():
                break
            scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.0))
            if all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
                break
            scaler.update()
        return outs, loss

    runs = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if not gpu.bf16_supported():
        runs.pop("bf16")
    result, problems, reference = dict(arch=str(s.arch), batch=s.backbone_batch,
                                       size=s.backbone_size), [], None
    for name, dtype in runs.items():
        model = copy.deepcopy(base)
        outs, loss = step(model, dtype)  # warm-up, and the figures below
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        secs = statistics.median(seconds_of(lambda m=model, d=dtype: step(m, d), gpu)
                                 for _ in range(s.backbone_steps))
        flat = torch.cat([o.detach().float().flatten() for o in outs])
        entry = dict(loss=float(loss.detach()), s_per_step=secs,
                     finite=bool(torch.isfinite(grads).all()),
                     out_dtype=str(outs[0].dtype).removeprefix("torch."))
        if reference is None:
            reference = (flat, grads)
        else:
            entry.update(out_rel_error=float((flat - reference[0]).norm() / reference[0].norm()),
                         out_max_abs_diff=float((flat - reference[0]).abs().max()),
                         grad_cosine=cosine(grads, reference[1]),
                         speedup_vs_fp32=result["fp32"]["s_per_step"] / secs)
            if not entry["finite"]:
                problems.append(f"{name}: non-finite gradients")
            if entry["grad_cosine"] < 0.99:
                problems.append(f"{name}: gradient cosine to fp32 {entry['grad_cosine']:.4f} < 0.99")
            if entry["out_rel_error"] > 0.05:
                problems.append(f"{name}: outputs off fp32 by {entry['out_rel_error']:.3f} "
                                "(relative L2, tolerance 0.05)")
        result[name] = entry
        del model
    if "bf16" not in runs:
        result["bf16"] = "not supported by this GPU"
    return dict(result, problems=problems)


def check_fast_path(ctx: Context) -> dict:
    gpu, s = ctx.gpu, ctx.sizes
    dev = gpu.device
    torch.manual_seed(0)
    plain = build_backbone(s.arch).to(dev).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the conv+BN folding is tested
        for m in plain.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    fast = fuse(copy.deepcopy(plain))
    problems, inputs = [], []
    with torch.inference_mode(), gpu.exact_math():
        for b, h, w in s.fast_inputs:
            x = torch.randn(b, 3, h, w, device=dev)
            ref, out = plain(x), fast(x)
            diff = max_abs_diff(out, ref)
            scale = max(float(o.abs().max()) for o in ref)
            inputs.append(dict(shape=[b, 3, h, w], max_abs_diff=diff, max_abs_output=scale))
            if diff > 1e-4 * max(1.0, scale):
                problems.append(f"fast path differs by {diff:.2e} at {h}x{w} (tolerance 1e-4 of "
                                "the output range)")
    sdpa = _sdpa_kernels(fast, s, dev)
    if dev.type == "cuda" and not any(sdpa.get(k) == "runs" for k in ("efficient", "cudnn")):
        problems.append("no fused SDPA kernel takes TinyViT's bias mask: the fast path falls back "
                        "to the math kernel on this GPU")
    result = dict(arch=str(s.arch), inputs=inputs, sdpa=sdpa)
    _, h, w = s.fast_inputs[0]
    x = torch.randn(s.fast_timing_batch, 3, h, w, device=dev)
    dtype = amp_dtype(dev)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype):
        timed = {}
        for name, model in (("plain", plain), ("fast", fast)):
            model(x)
            timed[name] = min(seconds_of(lambda m=model: m(x), gpu) for _ in range(s.timing_rounds))
    result.update(amp=str(dtype).removeprefix("torch."), batch=s.fast_timing_batch,
                  img_s=dict(plain=x.shape[0] / timed["plain"], fast=x.shape[0] / timed["fast"]),
                  speedup=timed["plain"] / timed["fast"])
    return dict(result, problems=problems)


def _sdpa_kernels(fast, s: Sizes, dev: torch.device) -> dict:
    """Which fused SDPA kernels run TinyViT's windows with their float bias mask (the flash
    kernel takes no arbitrary mask; the memory-efficient one should)."""
    if dev.type != "cuda":
        return {"skipped": "CPU: the fast path uses matmul + softmax there"}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, w = s.fast_inputs[0]
    x = torch.randn(b, 3, h, w, device=dev)
    out = {}
    for name, backend in (("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)):
        try:
            with torch.inference_mode(), sdpa_kernel([backend]), \
                    torch.autocast("cuda", dtype=torch.float16):
                fast(x)
            out[name] = "runs"
        except RuntimeError as err:
            out[name] = f"refused: {str(err).splitlines()[0][:160]}"
    return out


def _take(loader, n: int) -> list:
    """``n`` batches, going round the loader as often as needed."""
    batches = []
    while len(batches) < n:
        for batch in loader:
            batches.append(batch)
            if len(batches) == n:
                break
    return batches


def detector_iterations(ctx: Context, config: str, data_root: str, arch=None) -> dict:
    """Seconds per training iteration (forward, backward, AdamW step) over ``cascade_iters``
    iterations after ``warmup_iters``, and the peak GPU memory of the timed ones."""
    from mmengine.runner import Runner

    s = ctx.sizes
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as work_dir:
        cfg = detector_config(config, data_root, iters=s.cascade_iters, scale=s.det_scale,
                              batch=s.det_batch, work_dir=work_dir, amp=ctx.gpu.mmengine_amp,
                              arch=arch, coco_budgets=s.coco_budgets)
        result = _timed_train_steps(Runner.from_cfg(cfg), cfg, ctx.gpu, s)
    ctx.gpu.release()
    return result


def _timed_train_steps(runner, cfg, gpu: Gpu, s: Sizes) -> dict:
    model = runner.model.train()
    wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    batches = _take(runner.build_dataloader(cfg.train_dataloader), s.warmup_iters + s.cascade_iters)
    for data in batches[:s.warmup_iters]:
        model.train_step(data, wrapper)
    gpu.synchronize()
    gpu.reset_peak_memory()
    logs, times = [], []
    for data in batches[s.warmup_iters:]:
        times.append(seconds_of(lambda d=data: logs.append(model.train_step(d, wrapper)), gpu))
    peak = gpu.peak_memory_mib()
    total = [float(torch.as_tensor(log["loss"]).detach()) for log in logs]  # sum of all terms
    return dict(s_per_iter=statistics.median(times), mean_s_per_iter=statistics.fmean(times),
                peak_mib=peak, iters=len(times), first_loss=total[0], last_loss=total[-1],
                finite=all(math.isfinite(v) for v in total),
                backbone_params_m=sum(p.numel() for p in model.backbone.parameters()) / 1e6)


def check_cascade(ctx: Context) -> dict:
    s = ctx.sizes
    root = scenes(ctx.scratch / "scenes")
    tiny = detector_iterations(ctx, "det_configs/cascade_tinyvit21m.py", root, arch=s.det_arch)
    swin = detector_iterations(ctx, "det_configs/cascade_swin-t_1x.py", root)
    problems = [f"{name}: non-finite loss" for name, r in (("tinyvit", tiny), ("swin-t", swin))
                if not r["finite"]]
    return dict(problems=problems, scale=list(s.det_scale), batch=s.det_batch,
                amp="float16" if ctx.gpu.mmengine_amp else None, tinyvit_21m=tiny, swin_t=swin,
                s_per_iter_ratio=tiny["s_per_iter"] / swin["s_per_iter"],
                peak_memory_ratio=tiny["peak_mib"] / swin["peak_mib"] if swin["peak_mib"] else None)


def _scalars(work_dir: str) -> list[dict]:
    return [json.loads(line) for path in glob.glob(f"{work_dir}/*/vis_data/scalars.json")
            for line in open(path)]


def training_run(ctx: Context, config: str, size: int, batch: int, arch=None) -> dict:
    """``tools/train.py CONFIG --embedded --amp`` for ``train_iters`` iterations; the figures
    come from the run's own scalars (mmengine's ``time`` per iteration, ``memory`` in MiB)."""
    s = ctx.sizes
    root = scenes(ctx.scratch / "scenes")
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as work_dir:
        start = time.perf_counter()
        out = train_cli(config, root, work_dir, iters=s.train_iters, size=size, batch=batch,
                        amp=ctx.gpu.mmengine_amp, arch=arch)
        wall = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"tools/train.py {config} failed:\n{out.stderr[-3000:]}")
        lines = _scalars(work_dir)
        ckpts = sorted(os.path.basename(p) for p in glob.glob(f"{work_dir}/*.pth"))
    train = [line for line in lines if "loss" in line]
    evals = [line for line in lines if "loss" not in line and "step" in line]
    problems = []
    if not train:
        problems.append("no training iteration was logged")
    elif not all(math.isfinite(line["loss"]) for line in train):
        problems.append("non-finite loss")
    if not ckpts:
        problems.append("no checkpoint written")
    memory = [line["memory"] for line in train if "memory" in line]
    return dict(problems=problems, config=config, iters=s.train_iters, image_size=size,
                batch=batch, amp="float16" if ctx.gpu.mmengine_amp else None, wall_s=wall,
                s_per_iter=statistics.median(line["time"] for line in train if "time" in line)
                if train else None,
                first_loss=train[0]["loss"] if train else None,
                last_loss=train[-1]["loss"] if train else None,
                peak_memory_mib=max(memory) if memory else None,
                evaluation={k: v for k, v in (evals[-1] if evals else {}).items()
                            if k not in ("step", "data_time", "time")},
                checkpoints=ckpts)


def check_mask_rcnn(ctx: Context) -> dict:
    s = ctx.sizes
    return training_run(ctx, "det_configs/mask_rcnn_tinyvit21m_1x.py", s.mask_rcnn_size,
                        s.det_batch, arch=s.det_arch)


def check_upernet(ctx: Context) -> dict:
    s = ctx.sizes
    return training_run(ctx, "seg_configs/upernet_tinyvit21m_8xb2_160k_ade20k_512x512.py",
                        s.upernet_size, s.seg_batch, arch=s.det_arch)


def check_distill(ctx: Context) -> dict:
    s = ctx.sizes
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as out:
        run = distill_pipeline(Path(out), arch=s.distill_arch, image_size=s.distill_size,
                               device=ctx.gpu.device.type, workers=s.workers)
    pipe, students = run["pipeline"], run["students"]
    # the last epoch of each student: the first one also pays cuDNN's and the allocator's warm-up
    img_s = {mode: r["history"][-1]["images_per_s"] for mode, r in students.items()}
    stored = pipe["settings"]["epochs"] * students["store"]["config"]["dataset"]["num_samples"]
    save_s = pipe["seconds"]["save_logits"]
    return dict(problems=[], student_arch=str(s.distill_arch or "demo"), image_size=s.distill_size,
                batch=pipe["settings"]["batch_size"], amp=pipe["settings"]["amp"],
                workers=s.workers, save_logits_s=save_s,
                save_logits_img_s=stored / save_s if save_s else None,
                store_img_s=img_s["store"], labels_img_s=img_s["labels"],
                store_vs_labels_ratio=img_s["store"] / img_s["labels"],
                accuracy=pipe["accuracy"], record_bytes=pipe["store"]["record_bytes"])


def check_probe_extraction(ctx: Context) -> dict:
    gpu, s = ctx.gpu, ctx.sizes
    dev = gpu.device
    extractor, batches = probe_batches(s.probe_arch, image_size=s.probe_size,
                                       batch_size=s.probe_batch, device=dev)
    n = sum(len(b) for b in batches)
    dtype = amp_dtype(dev) if dev.type == "cuda" else None
    autocast = (torch.autocast(dev.type, dtype=dtype) if dtype is not None
                else contextlib.nullcontext())

    def forward_all():
        with torch.inference_mode(), autocast:
            for images in batches:
                extractor(images.to(dev, non_blocking=True))

    forward_all()  # warm-up
    raw_s = min(seconds_of(forward_all, gpu) for _ in range(3))
    loops = []
    for _ in range(2):
        with tempfile.TemporaryDirectory(dir=ctx.scratch) as cache:
            loops.append(probe_extraction(s.probe_arch, image_size=s.probe_size,
                                          batch_size=s.probe_batch, device=dev,
                                          cache_dir=Path(cache), workers=s.workers,
                                          extractor=extractor))
    best = max(loops, key=lambda m: m["images_per_s"])
    return dict(problems=[], arch=str(s.probe_arch), image_size=s.probe_size,
                batch=s.probe_batch, images=n, workers=s.workers,
                amp=str(dtype).removeprefix("torch.") if dtype else None,
                pipeline_img_s=best["images_per_s"], raw_forward_img_s=n / raw_s,
                pipeline_vs_raw_ratio=best["images_per_s"] / (n / raw_s))


def check_classification(ctx: Context) -> dict:
    """timm classifiers (random weights), eval, fp16 autocast as on the paper's V100; the
    models run round-robin and each keeps its best round."""
    import timm

    gpu, s = ctx.gpu, ctx.sizes
    dev = gpu.device
    names = dict(zip(("tinyvit-21m", "swin-t"), s.cls_models))
    models = {k: timm.create_model(v, pretrained=False, **kw).to(dev).eval()
              for (k, v), kw in zip(names.items(), s.cls_kwargs)}
    models["tinyvit-21m fast"] = fuse(copy.deepcopy(models["tinyvit-21m"]))
    x = torch.randn(s.cls_batch, 3, s.cls_size, s.cls_size, device=dev)
    best = {k: math.inf for k in models}
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.float16), gpu.tuned_kernels():
        for m in models.values():
            m(x)
            m(x)
        for _ in range(s.cls_rounds):
            for k, m in models.items():
                best[k] = min(best[k], seconds_of(lambda m=m: m(x), gpu))
    img_s = {k: s.cls_batch / v for k, v in best.items()}
    paper = PAPER_V100_IMG_S
    return dict(problems=[], models=names, batch=s.cls_batch, image_size=s.cls_size,
                amp="float16", img_s=img_s, tinyvit_vs_swin=img_s["tinyvit-21m"] / img_s["swin-t"],
                fast_tinyvit_vs_swin=img_s["tinyvit-21m fast"] / img_s["swin-t"],
                paper_v100_img_s=paper,
                paper_tinyvit_vs_swin=paper["tinyvit-21m"] / paper["swin-t"])


SECTIONS: dict[str, tuple[str, Callable[[Context], dict]]] = {
    "mmcv_ops": ("mmcv nms / RoIAlign on CUDA vs CPU", check_mmcv_ops),
    "backbone_amp": ("backbone forward + backward under bf16 / fp16 AMP", check_backbone_amp),
    "fast_path": ("fast path (SDPA) vs plain path", check_fast_path),
    "cascade": ("Cascade Mask R-CNN TinyViT-21M vs Swin-T training iterations", check_cascade),
    "mask_rcnn": ("Mask R-CNN TinyViT-21M, tools/train.py", check_mask_rcnn),
    "upernet": ("UperNet TinyViT-21M, tools/train.py", check_upernet),
    "distill": ("save-logits, student from the store vs supervised", check_distill),
    "probe_extraction": ("linear-probe feature extraction vs raw forward", check_probe_extraction),
    "classification": ("classification throughput TinyViT-21M vs Swin-T", check_classification),
}


# ------------------------------------------------------------------------------ the run
def preflight() -> None:
    """Refuse a run whose detector sections could only fail: mmcv without CUDA ops."""
    from mmcv.ops import get_compiling_cuda_version

    if get_compiling_cuda_version() == "not available":
        raise NoGpu("mmcv was built without its CUDA ops (this environment was set up on a "
                    "machine without a GPU): run `make env` on this GPU machine, which rebuilds "
                    "mmcv with them, then rerun")


def run_check(gpu: Gpu, sizes: Sizes, out: Path, *, only: Iterable[str] | None = None,
              budget_s: float = DEFAULT_BUDGET_S, sections=None,
              log: Callable[[str], None] = print, clock: Callable[[], float] = time.perf_counter,
              machine: dict | None = None) -> dict:
    """Run the sections (all, or ``only``) in order and write the report to ``out``.

    Sections start only while ``budget_s`` is not spent (the rest are ``skipped``). Returns
    the report, which is also rewritten atomically at ``out`` after every section.
    """
    from tinyvit_backbone.files import atomic_write_json

    sections = SECTIONS if sections is None else sections
    chosen = list(sections) if only is None else list(only)
    unknown = [name for name in chosen if name not in sections]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; choose from {list(sections)}")
    if machine is None:
        sys.path.insert(0, str(ROOT))
        from bench.common import machine_info
        machine = machine_info()
    start = clock()
    report = dict(format=REPORT_FORMAT, format_version=REPORT_VERSION, complete=False, ok=False,
                  started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  budget_s=budget_s, seconds=0.0, within_budget=True, gpu=gpu.describe(),
                  machine=machine, sizes=_jsonable(asdict(sizes)),
                  sections={name: dict(title=sections[name][0], status="pending")
                            for name in chosen})
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, _jsonable(report))
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        ctx = Context(gpu, sizes, Path(scratch), log)
        for name in chosen:
            title, fn = sections[name]
            entry = report["sections"][name]
            elapsed = clock() - start
            if elapsed > budget_s:
                entry.update(status="skipped", reason=f"time budget of {budget_s:.0f} s spent "
                                                      f"({elapsed:.0f} s)")
                log(f"[gpu-check] {name}: skipped (budget spent)")
                continue
            log(f"[gpu-check] {name}: {title} ...")
            t0 = clock()
            try:
                result = fn(ctx)
                problems = list(result.pop("problems", []))
                entry.update(status="failed" if problems else "ok", problems=problems,
                             result=_jsonable(result))
            except Exception as err:  # one broken path must not hide the others' figures
                entry.update(status="error", error=f"{type(err).__name__}: {err}"[:2000],
                             traceback=traceback.format_exc(limit=12))
            entry["seconds"] = round(clock() - t0, 2)
            log(f"[gpu-check] {name}: {entry['status']} in {entry['seconds']:.1f} s"
                + "".join(f"\n[gpu-check]   {p}" for p in entry.get("problems", []))
                + (f"\n[gpu-check]   {entry['error']}" if "error" in entry else ""))
            report["seconds"] = round(clock() - start, 2)
            atomic_write_json(out, _jsonable(report))
    report["seconds"] = round(clock() - start, 2)
    report["within_budget"] = report["seconds"] <= budget_s
    report["complete"] = True
    report["ok"] = all(e["status"] == "ok" for e in report["sections"].values())
    report = _jsonable(report)
    atomic_write_json(out, report)
    return report


def _jsonable(obj):
    """Floats rounded to 6 significant digits, NaN / inf as strings (strict JSON); tuples as
    lists, as they read back."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if math.isfinite(obj) else str(obj)
    return obj


def summary(report: dict, out: Path) -> dict:
    """The one JSON line tools/gpu_check.py prints: where the report is and how it went."""
    return dict(report=str(out), ok=report["ok"], complete=report["complete"],
                seconds=report["seconds"], within_budget=report["within_budget"],
                gpu=report["gpu"].get("name"),
                sections={k: v["status"] for k, v in report["sections"].items()})
