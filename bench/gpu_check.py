"""Every GPU path of the project in one run (at most 8 minutes on one GPU), one JSON report.

    python tools/gpu_check.py --out DIR/report.json [--only SECTION ...] [--budget-s S]

The check is a list of independent sections, run in the order below (cheap and most telling
first). Each declares what it needs; one whose needs are not met here is ``skipped`` with the
reason, and never blocks the others. Needs: ``cuda`` (torch sees a GPU), a package (``timm``,
``mmengine``, ``mmdet``, ``mmseg``, ``onnx``, ``onnxruntime``), and ``mmcv_ops``: ops that run
mmcv's nms and RoIAlign on the check's device, i.e. mmcv's compiled ops, or else the labelled
stand-in on torchvision's kernels (:mod:`tinyvit_backbone.mmcv_standin`). The project's TinyViT
module and everything built on it import mmengine, hence that need.

==================  =====================================  =====  ===============================
section             needs                                  limit  measures
==================  =====================================  =====  ===============================
mmcv_ops            cuda, mmengine, mmcv_ops               30 s   nms / RoIAlign on CUDA vs CPU
backbone_amp        cuda, mmengine                         45 s   bf16 / fp16 AMP vs fp32
fast_path           cuda, mmengine                         45 s   SDPA fast path vs plain
classification      cuda, timm                             60 s   21M vs Swin-T img/s, 224 b256
onnxruntime         timm, onnx, onnxruntime                90 s   every execution provider
probe_extraction    cuda, mmengine                         45 s   extraction vs raw forward
cdfsl               cuda, mmengine                         90 s   fine-tuned episodes, E together
mocov3              cuda, mmengine                         75 s   loop vs raw forward, 21M/224
cascade             cuda, mmengine, mmdet, mmcv_ops        150 s  Cascade 21M vs Swin-T 1333x800
distill             cuda, mmengine                         90 s   store vs supervised steps
mask_rcnn           cuda, mmengine, mmdet, mmcv_ops        90 s   tools/train.py --amp
upernet             cuda, mmengine, mmseg, mmcv_ops        90 s   tools/train.py --amp
==================  =====================================  =====  ===============================

* ``mmcv_ops``: the nms and RoIAlign the detection sections will use, on CUDA tensors against
  the CPU (same kept boxes, max |diff| of the pooled features; RoIAlign also in fp16, what AMP
  detectors feed it, and bf16);
* ``backbone_amp``: TinyViT-21M forward + backward under bf16 and fp16 autocast (fp16 with a
  GradScaler) against fp32: output error, gradient cosine, seconds per step;
* ``fast_path``: :func:`~tinyvit_backbone.inference.fuse_for_inference` (fused SDPA attention
  on CUDA) against the plain backbone, max |diff| at 224 px and at a detection size, TF32 off;
  which fused SDPA kernels take TinyViT's bias mask; speed with AMP;
* ``classification``: TinyViT-21M against Swin-T classification throughput at 224, batch 256,
  fp16 autocast, with the paper's V100 figures (1,571 vs 1,393 img/s) beside;
* ``onnxruntime``: a TinyViT-5M classifier exported by the project's checked export, run on
  every execution provider ONNX Runtime offers here, against torch (max |diff|, ms per batch);
* ``probe_extraction``: linear_probe's extraction pipeline against the raw forward of the same
  fused model on the same batches in memory (img/s, ratio);
* ``cdfsl``: a fine-tuned 5-way 5-shot episode (cdfsl's recipe, fewer epochs) on the GPU at
  21M/224, against the bare backbone steps on the same mini-batches; the 100-epoch episode is
  extrapolated (labelled so); then 8 episodes trained together against the same 8 one at a time;
* ``mocov3``: the MoCo v3 probe's training epochs at 21M/224 on generated JPEGs (decoding and
  augmentation in DataLoader workers) against the raw frozen forward on the same augmented
  batches in memory (img/s, ratio; the goal is 0.9);
* ``cascade``: Cascade Mask R-CNN TinyViT-21M and Swin-T, 30 training iterations each at
  1333x800, batch 2, AMP, COCO's proposal and sampling budgets: s/iter, peak memory, ratios;
* ``distill``: the mini reproduction at 224 px with a TinyViT-21M student: save-logits, then
  student epochs from the store against supervised epochs (img/s, ratio);
* ``mask_rcnn`` and ``upernet``: 20 iterations each through ``tools/train.py --embedded --amp``
  (mmengine's Runner, evaluation and checkpoint included).

Which mmcv ops ran is in the report (``mmcv_ops``, and per section): compiled mmcv CUDA ops,
compiled CPU ops, or the stand-in. A figure measured on the stand-in measures torchvision's
kernels: its section says ``proves_mmcv_kernels: false``, and the report's
``mmcv_kernels_proven`` stays false unless mmcv's own compiled kernels (on a GPU: its CUDA
kernels) ran a section that passed.

Running: each section runs in its own process (its own CUDA context; a crash or an
out-of-memory error stays there) and is stopped, with every process it started, when it runs
past its limit or past what is left of the check's budget (``--budget-s``, default 480 s): it
is then ``timed_out`` and the next section starts. No section starts once the budget is spent
(``skipped``). Statuses: ``ok``; ``failed`` (numbers out of tolerance, ``problems`` lists
them); ``error`` (it raised: the error and traceback; or its process died: the exit status and
the last lines of its output); ``timed_out``; ``skipped`` (with ``reason``); ``interrupted``
(Ctrl-C or SIGTERM stopped the check there). The report is rewritten atomically after every
section, so an interrupted run keeps what it measured.

The GPU-only calls go through :class:`Gpu`; without a GPU the check runs on :class:`CpuOnly`
(the sections that need CUDA are skipped). The CPU test suite passes a stand-in :class:`Gpu`
and :meth:`Sizes.tiny` to run the same wiring in seconds. The project's own APIs are called from
the "project calls" block below and nowhere else.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import ctypes
import gc
import glob
import importlib.util
import json
import math
import os
import pickle
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REPORT_FORMAT = "tinyvit-transfer gpu-check"
REPORT_VERSION = 2
DEFAULT_BUDGET_S = 480.0
# No section starts with less than this left of the budget: a process needs a few seconds to
# import torch and create its CUDA context before it measures anything.
MIN_START_S = 10.0
# The paper's throughput table (V100, batch 256, 224 px, AMP), images/s.
PAPER_V100_IMG_S = {"tinyvit-21m": 1571, "swin-t": 1393}
FAILED = ("failed", "error", "timed_out", "interrupted")


class NoGpu(Exception):
    """torch sees no CUDA device."""


# ------------------------------------------------------------------------------- the device
class Gpu:
    """The calls that need an NVIDIA GPU, in one place. Tests pass a CPU stand-in (a subclass
    with ``device = cpu`` and these methods as no-ops) to run the wiring without one."""

    #: this device satisfies the ``cuda`` need (a GPU, or a test's stand-in for one)
    is_gpu = True
    #: mmengine's AmpOptimWrapper and tools/train.py --amp need CUDA
    mmengine_amp = True

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            raise NoGpu(no_gpu_reason())
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


class CpuOnly:
    """No GPU here: the device of the sections that need none (``onnxruntime``)."""

    is_gpu = False
    mmengine_amp = False

    def __init__(self, reason: str) -> None:
        self.device = torch.device("cpu")
        self.reason = reason

    def describe(self) -> dict:
        return dict(name=None, cuda=False, reason=self.reason)

    def synchronize(self) -> None:
        pass


def no_gpu_reason() -> str:
    return (f"torch {torch.__version__} sees no CUDA GPU (built with CUDA "
            f"{torch.version.cuda}; no driver, a CPU-only build, or CUDA_VISIBLE_DEVICES hides it)")


def detect_device() -> Gpu | CpuOnly:
    """The GPU when torch sees one, else :class:`CpuOnly` saying why not."""
    try:
        return Gpu()
    except NoGpu as err:
        return CpuOnly(str(err))


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
    ort_model: str = "tiny_vit_5m_224"    # timm name; a small model, exported and run per provider
    ort_kwargs: dict = field(default_factory=dict)
    ort_size: int = 224
    ort_batch: int = 2
    ort_rounds: int = 3
    cdfsl_arch: str | dict = "21m"
    cdfsl_size: int = 224
    cdfsl_epochs: int = 10                # of the recipe's 100: the rest is extrapolated
    cdfsl_shots: int = 5
    cdfsl_together: int = 8               # episodes trained together, against one at a time
    cdfsl_together_epochs: int = 2
    mocov3_arch: str | dict = "21m"
    mocov3_size: int = 224
    mocov3_images: int = 1024             # generated 320x240 JPEGs, decoded every epoch
    mocov3_batch: int = 256
    mocov3_rounds: int = 3
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
                   cls_batch=1, cls_rounds=1,
                   ort_kwargs=dict(tiny_arch), ort_size=32, ort_batch=2, ort_rounds=1,
                   cdfsl_arch=tiny_arch, cdfsl_size=64, cdfsl_epochs=1, cdfsl_together=2,
                   cdfsl_together_epochs=1,
                   mocov3_arch=tiny_arch, mocov3_size=32, mocov3_images=24, mocov3_batch=8,
                   mocov3_rounds=1, nms_boxes=50, roi_features=(1, 4, 16, 16), rois=8, workers=0)


@dataclass
class Context:
    gpu: Gpu | CpuOnly
    sizes: Sizes
    scratch: Path
    log: Callable[[str], None] = print
    deadline: float = math.inf            # time.monotonic() by which the section must be done
    mmcv_ops: dict | None = None          # the ops plan of a section that needs mmcv_ops

    def seconds_left(self) -> float | None:
        """For the subprocesses a section starts (None: no limit, the in-process runs)."""
        left = self.deadline - time.monotonic()
        return None if math.isinf(left) else max(1.0, left)


def subprocess_env(**extra: str) -> dict:
    """This process's environment for a Python subprocess of the project: the checkout first on
    ``PYTHONPATH``, and whatever was there kept after it (``pip install --target`` dirs)."""
    from bench.common import subprocess_env as env
    return env(ROOT, **extra)


# ------------------------------------------------------------------------------ project calls
# The only place that calls the project's APIs: they are still moving, keep these thin.

def build_backbone(arch):
    from tinyvit_backbone import TinyViT
    return TinyViT(arch=arch)


def fuse(model):
    from tinyvit_backbone.inference import fuse_for_inference
    return fuse_for_inference(model)


def prepare_mmcv_ops(device_type: str) -> dict:
    """Which mmcv ops this process uses (compiled, else the stand-in, installed here)."""
    from tinyvit_backbone.mmcv_standin import prepare
    return prepare(device_type)


def plan_mmcv_ops(device_type: str) -> dict:
    from tinyvit_backbone.mmcv_standin import plan
    return plan(device_type)


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
              amp: bool, arch=None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``tools/train.py`` in a subprocess, with the mmcv ops this machine can run (compiled,
    else the stand-in: ``python -m tinyvit_backbone.mmcv_standin``)."""
    cmd = [sys.executable, "-m", "tinyvit_backbone.mmcv_standin", str(ROOT / "tools" / "train.py"),
           config, "--embedded", "--data-root", data_root, "--iters", str(iters),
           "--image-size", str(size), "--batch-size", str(batch), "--work-dir", work_dir]
    cmd += ["--amp"] if amp else []
    cmd += ["--arch", arch] if arch else []
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env())


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


def export_classifier(model, image_size: int):
    """The project's checked ONNX export (parity with torch on ONNX Runtime's CPU provider
    before the bytes are returned)."""
    from tinyvit_backbone.export import export_module
    return export_module(model, ["logits"], [None], check_sizes=[(image_size, image_size)])


def cdfsl_episodes(arch, *, image_size: int, shots: int, device: torch.device, count: int = 1,
                   seed: int = 0):
    """``count`` 5-way ``shots``-shot episodes of the digits' test split (15 queries per class)
    for the fine-tuned cdfsl protocol in its default precision (float32, as finetune.py).
    Returns (alone(epochs, i) -> episode i's query accuracy trained by itself, %;
    together(epochs) -> the accuracies of all ``count`` trained together;
    bare_steps(epochs) -> the backbone's steps of episode 0 alone; settings)."""
    import numpy as np

    from linear_probe.backbones import FeatureExtractor, ModelSpec, build_network
    from linear_probe.cdfsl import finetune_episode, finetune_episodes, support_orders
    from linear_probe.fewshot import sample_episodes
    from linear_probe.loaders import load_split
    from linear_probe.preprocessing import Preprocessed, eval_preprocessing
    from linear_probe.recipes import CDFSL_QUERIES, CDFSL_WAYS, CdfslRecipe
    from linear_probe.registry import dataset_spec

    spec = ModelSpec(model="tinyvit", arch=arch)
    prep = eval_preprocessing("cdfsl", spec.data_config(image_size))
    raw = load_split(dataset_spec("digits"), "test", None, image_size)
    data = Preprocessed(raw, prep.transform)
    episodes = sample_episodes(np.asarray(raw.targets), CDFSL_WAYS, shots, CDFSL_QUERIES, count,
                               seed=seed)

    def images(rows):
        return prep.normalise(torch.stack([data[int(i)][0] for i in rows])).to(device)

    support = torch.stack([images(episodes.support[i]) for i in range(count)])
    query = torch.stack([images(episodes.query[i]) for i in range(count)])
    extractor = FeatureExtractor(build_network(spec)).to(device)
    initial = {k: v.detach().clone() for k, v in extractor.state_dict().items()}

    def alone(epochs: int, i: int = 0) -> float:
        return finetune_episode(extractor, initial, support[i], query[i], CDFSL_WAYS, seed=seed,
                                episode=i, recipe=CdfslRecipe().with_epochs(epochs))

    def together(epochs: int):
        return finetune_episodes(extractor, initial, support, query, CDFSL_WAYS, seed=seed,
                                 episodes=list(range(count)),
                                 recipe=CdfslRecipe().with_epochs(epochs))

    def bare_steps(epochs: int) -> int:
        """The backbone's forward + backward + SGD step on episode 0's mini-batches alone."""
        recipe = CdfslRecipe()
        extractor.load_state_dict(initial)
        extractor.train()
        for p in extractor.parameters():
            p.requires_grad_(True)
        opt = torch.optim.SGD(extractor.parameters(), lr=recipe.backbone_lr)
        steps = 0
        for order in support_orders(seed, 0, epochs, support.shape[1]):
            for j in range(0, support.shape[1], recipe.batch_size):
                pick = torch.from_numpy(order[j:j + recipe.batch_size]).to(device)
                loss = extractor(support[0][pick]).float().sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
        return steps

    settings = dict(ways=CDFSL_WAYS, shots=shots, queries=CDFSL_QUERIES,
                    batch=CdfslRecipe().batch_size, recipe_epochs=CdfslRecipe().epochs,
                    steps_per_recipe_episode=CdfslRecipe().steps(support.shape[1]),
                    precision="float32 (the protocol's default)", device=str(support.device))
    return alone, together, bare_steps, settings


def mocov3_loop(arch, dataset: str, *, image_size: int, batch_size: int, device: torch.device,
                workers: int):
    """The MoCo v3 probe's training loop as ``python -m linear_probe mocov3`` runs it (seeded
    augmentation in persistent DataLoader workers, frozen forward under the protocol's AMP,
    head step), and the raw frozen forward on the same augmented batches held in memory.
    Returns (epoch(e) -> images, forward() -> images, settings)."""
    from torch.utils.data import DataLoader

    from linear_probe.backbones import ModelSpec, build_extractor
    from linear_probe.device import autocast_dtype
    from linear_probe.extract import prefetched
    from linear_probe.loaders import load_split
    from linear_probe.mocov3 import (
        EpochSampler,
        epoch_batches,
        init_head,
        train_epoch,
        training_loader,
    )
    from linear_probe.preprocessing import SeededAugmentation, mocov3_train_preprocessing
    from linear_probe.recipes import MoCoV3Recipe
    from linear_probe.registry import dataset_spec
    from tinyvit_backbone.device import autocast

    spec = ModelSpec(model="tinyvit", arch=arch)
    recipe = MoCoV3Recipe(batch_size=batch_size)
    amp = autocast_dtype(device)
    prep = mocov3_train_preprocessing(spec.data_config(image_size))
    raw = load_split(dataset_spec(dataset), "train", None, image_size)
    data = SeededAugmentation(raw, prep.transform, seed=0)
    extractor = build_extractor(spec, "pooled", device)
    with torch.no_grad():
        dim = int(extractor(prep.normalise(data[0][0][None]).to(device)).shape[1])
    head = init_head(dim, len(raw.classes), 0).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    sampler = EpochSampler()
    loader = training_loader(data, sampler, workers, device)
    plan0 = epoch_batches(len(raw), recipe.batch_size, 0, 0)
    sampler.set(plan0, 0)
    held = [prep.normalise(x).to(device) for x, _ in DataLoader(data, batch_sampler=sampler)]

    def epoch(e: int) -> int:
        plan = epoch_batches(len(raw), recipe.batch_size, e, 0)
        sampler.set(plan, e)
        _, seen = train_epoch(extractor, head, opt, loader if workers else prefetched(loader),
                              [g for _, g in plan], prep.normalise, device, amp, 1)
        return seen

    def forward() -> int:
        with torch.no_grad(), autocast(device, amp):
            for x in held:
                extractor(x)
        return sum(len(x) for x in held)

    settings = dict(images=len(raw), batch=recipe.batch_size, workers=workers,
                    amp=str(amp).removeprefix("torch.") if amp else None,
                    augmentation=prep.description)
    return epoch, forward, settings


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


def _ops_label(ctx: Context) -> dict:
    """What a detection figure measured: mmcv's kernels, or the stand-in's (torchvision's)."""
    plan = ctx.mmcv_ops or {}
    return dict(kind=plan.get("kind"), proves_mmcv_kernels=bool(plan.get("proves_mmcv_kernels")))


# ------------------------------------------------------------------------------ the sections
def check_mmcv_ops(ctx: Context) -> dict:
    """The nms and RoIAlign the detection sections use (``ctx.mmcv_ops``), on the device
    against the CPU. With the stand-in this compares torchvision's CUDA kernels with its CPU
    ones: a proof of the stand-in, not of mmcv's kernels."""
    from mmcv.ops import RoIAlign, nms

    dev, s = ctx.gpu.device, ctx.sizes
    problems = []
    plan = ctx.mmcv_ops or {}
    compiled = plan.get("compiled_cuda")
    if plan.get("kind") == "compiled mmcv CUDA ops" and compiled != torch.version.cuda:
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
    if dev.type == "cuda":  # the dtypes AMP detectors feed it (the CPU kernels are fp32 only)
        for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            try:
                low[name] = max_abs_diff(align(feats.to(dev, dtype), rois.to(dev, dtype)).cpu(), ref)
            except RuntimeError as err:
                low[name] = f"unsupported: {str(err).splitlines()[0][:120]}"
        if not isinstance(low["fp16"], float) or low["fp16"] > 2e-2:
            problems.append(f"fp16 RoIAlign (AMP detectors): {low['fp16']} (tolerance 2e-2)")
    return dict(problems=problems, mmcv_ops=_ops_label(ctx), compiled_cuda=compiled,
                torch_cuda=torch.version.cuda, nms_boxes=s.nms_boxes, nms_kept=len(keep_cpu),
                nms_same_keep=same_keep, roi_align_max_abs_diff=diff,
                roi_align_low_precision_max_abs_diff=low,
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
                amp="float16" if ctx.gpu.mmengine_amp else None, mmcv_ops=_ops_label(ctx),
                tinyvit_21m=tiny, swin_t=swin,
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
                        amp=ctx.gpu.mmengine_amp, arch=arch, timeout=ctx.seconds_left())
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
                batch=batch, amp="float16" if ctx.gpu.mmengine_amp else None,
                mmcv_ops=_ops_label(ctx), wall_s=wall,
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

    def forward_all():  # float32, the extraction's default precision
        with torch.inference_mode():
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
                precision="float32 (the extraction's default)",
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


def check_onnxruntime(ctx: Context) -> dict:
    """A small timm TinyViT classifier through the project's checked export, then run by each
    execution provider ONNX Runtime offers here, against torch fp32 on the CPU. A provider
    that is offered but cannot start (missing libraries) is recorded, not a failure; one that
    runs and disagrees with torch is. GPU providers may use TF32, hence their looser bound."""
    import onnxruntime as ort
    import timm

    s = ctx.sizes
    torch.manual_seed(0)
    model = timm.create_model(s.ort_model, pretrained=False, **s.ort_kwargs).eval()
    exported = export_classifier(model, s.ort_size)
    x = torch.randn(s.ort_batch, 3, s.ort_size, s.ort_size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(x)
        torch_s = min(_wall(lambda: model(x)) for _ in range(s.ort_rounds))
    scale = float(ref.abs().max())
    providers, problems = {}, []
    for name in ort.get_available_providers():
        entry = {}
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            session = ort.InferenceSession(exported.onnx, options, providers=[name])
            entry["session_providers"] = session.get_providers()
            feed = {session.get_inputs()[0].name: x.numpy()}
            out = torch.from_numpy(session.run(None, feed)[0])
            entry["ms_per_batch"] = 1000 * min(
                _wall(lambda run=session.run, feed=feed: run(None, feed)) for _ in range(s.ort_rounds))
        except Exception as err:  # an offered provider whose libraries are absent
            entry["unusable"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            providers[name] = entry
            continue
        entry["max_abs_diff"] = max_abs_diff(out, ref)
        bound = 1e-4 if name == "CPUExecutionProvider" else 1e-2
        entry["tolerance"] = bound * max(1.0, scale)
        if not entry["max_abs_diff"] <= entry["tolerance"]:
            problems.append(f"{name}: max |diff| to torch {entry['max_abs_diff']:.3g} > "
                            f"{entry['tolerance']:.3g}")
        providers[name] = entry
    if not any("max_abs_diff" in e for e in providers.values()):
        problems.append(f"no execution provider ran the model (offered: {list(providers)})")
    return dict(problems=problems, onnxruntime=ort.__version__, model=s.ort_model,
                image_size=s.ort_size, batch=s.ort_batch, opset=exported.opset,
                export_check_max_abs_diff=exported.worst_diff, torch_cpu_ms_per_batch=1000 * torch_s,
                providers=providers, device=ort.get_device())


def _wall(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def check_cdfsl(ctx: Context) -> dict:
    """A fine-tuned cdfsl episode on the check's device: backbone and head trained together
    for ``cdfsl_epochs`` epochs in mini-batches of 4, after a one-epoch warm-up; against the
    bare backbone steps on the same mini-batches. The recipe's 100-epoch episode is
    extrapolated linearly from the per-epoch cost (labelled so). Then ``cdfsl_together``
    episodes trained together against the same episodes one at a time, for
    ``cdfsl_together_epochs`` epochs each (time per episode, and whether every episode's
    accuracy came out the same)."""
    gpu, s = ctx.gpu, ctx.sizes
    dev = gpu.device
    alone, together, bare_steps, settings = cdfsl_episodes(
        s.cdfsl_arch, image_size=s.cdfsl_size, shots=s.cdfsl_shots, device=dev,
        count=s.cdfsl_together)
    if settings["device"].split(":")[0] != dev.type:
        raise RuntimeError(f"the episode's images are on {settings['device']}, not on {dev}")
    alone(1)  # warm-up: cuDNN plans, the allocator
    accuracy = []
    episode_s = seconds_of(lambda: accuracy.append(alone(s.cdfsl_epochs)), gpu)
    steps = []
    bare_s = seconds_of(lambda: steps.append(bare_steps(s.cdfsl_epochs)), gpu)
    per_step, bare_per_step = episode_s / steps[0], bare_s / steps[0]
    problems = [] if math.isfinite(accuracy[0]) else ["the episode's accuracy is not finite"]

    E, epochs = s.cdfsl_together, s.cdfsl_together_epochs
    together(1)  # warm-up of the stacked path
    one_by_one, stacked = [], []
    one_s = seconds_of(lambda: one_by_one.extend(alone(epochs, i) for i in range(E)), gpu)
    together_s = seconds_of(lambda: stacked.extend(together(epochs).tolist()), gpu)
    same = [float(a) == float(b) for a, b in zip(one_by_one, stacked)]
    together_figures = dict(
        episodes=E, epochs=epochs, one_at_a_time_s_per_episode=one_s / E,
        together_s_per_episode=together_s / E, speedup=one_s / together_s,
        accuracies_one_at_a_time=one_by_one, accuracies_together=stacked,
        same_accuracies=f"{sum(same)} of {E}",
        note="float32 rounding differs between a grouped and a plain convolution, and a "
             "fine-tuned backbone amplifies it: equality to 1e-5 is tested in float64 on CPU")
    return dict(problems=problems, arch=str(s.cdfsl_arch), image_size=s.cdfsl_size,
                epochs=s.cdfsl_epochs, steps=steps[0], episode_s=episode_s,
                query_accuracy=accuracy[0], s_per_step=per_step, bare_s_per_step=bare_per_step,
                loop_vs_bare=bare_per_step / per_step, **settings,
                recipe_episode_s_extrapolated=per_step * settings["steps_per_recipe_episode"],
                extrapolation=f"{settings['steps_per_recipe_episode']} steps at the measured "
                              f"s/step of a {s.cdfsl_epochs}-epoch episode",
                together=together_figures)


def jpeg_folder(root: Path, images: int, classes: int = 4) -> Path:
    """``images`` smooth random 320x240 JPEGs in ``root/train/class<c>/`` (and an empty test
    split, as ``imagefolder:`` expects): real decoding work, like photos, not like noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / "test" / f"class{c}").mkdir(parents=True, exist_ok=True)
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(c, images, classes):
            small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(folder / f"{i}.jpg",
                                                                          quality=90)
    return root


def check_mocov3(ctx: Context) -> dict:
    """The MoCo v3 probe's training epochs against the raw frozen forward on the same augmented
    batches in memory, alternated, best of ``mocov3_rounds`` each (goal: >= 0.9x)."""
    gpu, s = ctx.gpu, ctx.sizes
    root = jpeg_folder(ctx.scratch / "jpegs", s.mocov3_images)
    epoch, forward, settings = mocov3_loop(s.mocov3_arch, f"imagefolder:{root}",
                                           image_size=s.mocov3_size, batch_size=s.mocov3_batch,
                                           device=gpu.device, workers=s.workers)
    with gpu.tuned_kernels():
        epoch(0)  # warm-up: workers start, cuDNN plans
        forward()
        loop_s, raw_s = [], []
        for r in range(s.mocov3_rounds):
            loop_s.append(seconds_of(lambda r=r: epoch(r + 1), gpu))
            raw_s.append(seconds_of(forward, gpu))
    n = settings["images"]
    ratio = min(raw_s) / min(loop_s)
    return dict(problems=[], arch=str(s.mocov3_arch), image_size=s.mocov3_size, **settings,
                loop_img_s=n / min(loop_s), raw_forward_img_s=n / min(raw_s),
                loop_vs_raw_forward=ratio, goal=0.9, meets_goal=ratio >= 0.9)


# ------------------------------------------------------------------------------ the list
@dataclass(frozen=True)
class Section:
    """One check: ``run(ctx)`` returns its figures and ``problems`` (what is out of tolerance,
    a list of sentences); ``needs`` (see the module docstring); ``limit_s``, its time limit in
    seconds on one GPU."""

    name: str
    title: str
    run: Callable[[Context], dict]
    needs: tuple[str, ...] = ()
    limit_s: float = 60.0


_MM = ("cuda", "mmengine")
SECTIONS: dict[str, Section] = {s.name: s for s in (
    Section("mmcv_ops", "mmcv nms / RoIAlign on CUDA vs CPU", check_mmcv_ops,
            _MM + ("mmcv_ops",), 30),
    Section("backbone_amp", "backbone forward + backward under bf16 / fp16 AMP", check_backbone_amp,
            _MM, 45),
    Section("fast_path", "fast path (SDPA) vs plain path", check_fast_path, _MM, 45),
    Section("classification", "classification throughput TinyViT-21M vs Swin-T",
            check_classification, ("cuda", "timm"), 60),
    Section("onnxruntime", "ONNX Runtime's execution providers vs torch", check_onnxruntime,
            ("timm", "onnx", "onnxruntime"), 90),  # CPU work: the export and its parity check
    Section("probe_extraction", "linear-probe feature extraction vs raw forward",
            check_probe_extraction, _MM, 45),
    Section("cdfsl", "a fine-tuned cdfsl episode on the GPU vs its bare steps; episodes "
            "together vs one at a time", check_cdfsl, _MM, 90),
    Section("mocov3", "mocov3 training loop vs raw frozen forward, 21M/224", check_mocov3, _MM, 75),
    Section("cascade", "Cascade Mask R-CNN TinyViT-21M vs Swin-T training iterations",
            check_cascade, _MM + ("mmdet", "mmcv_ops"), 150),
    Section("distill", "save-logits, student from the store vs supervised", check_distill, _MM, 90),
    Section("mask_rcnn", "Mask R-CNN TinyViT-21M, tools/train.py --amp", check_mask_rcnn,
            _MM + ("mmdet", "mmcv_ops"), 90),
    Section("upernet", "UperNet TinyViT-21M, tools/train.py --amp", check_upernet,
            _MM + ("mmseg", "mmcv_ops"), 90),
)}


def unmet_needs(needs: Iterable[str], gpu, mmcv_plan: Callable[[], dict]) -> str | None:
    """Why a section with ``needs`` cannot run here (None: it can). ``mmcv_plan()`` is asked
    only when everything else is there (it imports mmcv)."""
    reasons = []
    for need in needs:
        if need == "cuda":
            if not gpu.is_gpu:
                reasons.append(f"needs a CUDA GPU: {gpu.reason}")
        elif need != "mmcv_ops" and not _installed(need):
            reasons.append(f"needs {need}, which is not installed")
    if "mmcv_ops" in needs and not reasons:
        plan = mmcv_plan()
        if plan["kind"] == "unavailable":
            reasons.append(f"needs mmcv's nms / RoIAlign: {plan['reason']}")
    return "; ".join(reasons) or None


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install: the section then says what broke
        return True


# ------------------------------------------------------------------------------ one section
def section_outcome(section: Section, ctx: Context) -> dict:
    """Run ``section`` in this process: what the report records of it (status, problems,
    result, or error and traceback; ``mmcv_ops``, the ops a section that needs them used)."""
    try:
        if "mmcv_ops" in section.needs:
            ctx.mmcv_ops = prepare_mmcv_ops(ctx.gpu.device.type)
            ctx.log(f"[gpu-check] {section.name}: mmcv ops: {ctx.mmcv_ops['kind']} "
                    f"({ctx.mmcv_ops['reason']})")
        result = section.run(ctx)
        problems = list(result.pop("problems", []))
        out = dict(status="failed" if problems else "ok", problems=problems,
                   result=_jsonable(result))
    except Exception as err:  # one broken path must not hide the others' figures
        out = dict(status="error", error=f"{type(err).__name__}: {err}"[:2000],
                   traceback=traceback.format_exc(limit=12))
    if ctx.mmcv_ops is not None:
        out["mmcv_ops"] = _jsonable(ctx.mmcv_ops)
    return out


_CHILD = "import sys; from bench.gpu_check import section_process; sys.exit(section_process(sys.argv[1]))"


def run_isolated(section: Section, gpu, sizes: Sizes, scratch: Path, limit_s: float,
                 log: Callable[[str], None]) -> dict:
    """Run ``section`` in a process of its own, in a session of its own (so that every process
    it starts, DataLoader workers and tools/train.py included, is stopped with it), its output
    relayed to ``log``. Past ``limit_s`` seconds the whole session is stopped (SIGTERM, then
    SIGKILL 3 s later) and the outcome is ``timed_out``."""
    with tempfile.TemporaryDirectory(dir=scratch, prefix=f"{section.name}_") as tmp:
        job = Path(tmp) / "job.pkl"
        result = Path(tmp) / "result.json"
        with open(job, "wb") as f:
            pickle.dump(dict(section=section, gpu=gpu, sizes=sizes, scratch=str(scratch),
                             limit_s=limit_s, result=str(result), parent=os.getpid()), f)
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(job)], cwd=ROOT,
                                env=subprocess_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        tail: collections.deque[str] = collections.deque(maxlen=40)
        relay = threading.Thread(target=_relay, args=(proc.stdout, tail, log, section.name),
                                 daemon=True)
        relay.start()
        timed_out = False
        try:
            proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            stop_session(proc)
            relay.join(timeout=5)
        if timed_out:
            return dict(status="timed_out", output_tail=list(tail))
        if result.exists():
            with open(result) as f:
                return json.load(f)
        code = proc.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return dict(status="error", error=f"the section's process ended ({how}) without a "
                                          "result; its last output is in output_tail",
                    output_tail=list(tail))


def _relay(stream, tail: collections.deque, log: Callable[[str], None], name: str) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip()
        tail.append(line)
        log(f"[gpu-check]   {name} | {line}")
    stream.close()


def stop_session(proc: subprocess.Popen) -> None:
    """Stop every process of ``proc``'s session: SIGTERM, and SIGKILL to what is left 3 s later.
    Also run after a normal exit, for what the section left behind."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # nothing left
        proc.wait()
        return
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        if proc.poll() is not None and not _group_alive(proc.pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def section_process(job_path: str) -> int:
    """The body of a section's own process (:func:`run_isolated`): run it, write the outcome."""
    from tinyvit_backbone.files import atomic_write_json

    with open(job_path, "rb") as f:
        job = pickle.load(f)
    _exit_with_parent(job["parent"])
    ctx = Context(job["gpu"], job["sizes"], Path(job["scratch"]),
                  log=lambda line: print(line, file=sys.stderr, flush=True),
                  deadline=time.monotonic() + job["limit_s"])
    atomic_write_json(job["result"], section_outcome(job["section"], ctx))
    return 0


def _exit_with_parent(parent: int) -> None:
    """Linux: the kernel kills this process when the check's process dies (even by SIGKILL),
    so no section outlives the check."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """``timeout`` and batch schedulers stop a run with SIGTERM: handled as Ctrl-C is, so the
    running section's processes are stopped and the report says where the run ended."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------ the run
def run_check(gpu, sizes: Sizes, out: Path, *, only: Iterable[str] | None = None,
              budget_s: float = DEFAULT_BUDGET_S, sections: dict[str, Section] | None = None,
              log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
              machine: dict | None = None, isolate: bool = True) -> dict:
    """Run the sections (all, or ``only``) in order and write the report to ``out``.

    ``isolate``: each section in its own process, stopped at its limit (the command line);
    False runs them in this process with no limit enforced (tests, debugging). No section
    starts with less than :data:`MIN_START_S` of ``budget_s`` left. Returns the report, which
    is also rewritten atomically at ``out`` after every section.
    """
    from tinyvit_backbone.files import atomic_write_json

    sections = SECTIONS if sections is None else sections
    chosen = list(sections) if only is None else list(only)
    unknown = [name for name in chosen if name not in sections]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; choose from {list(sections)}")
    if machine is None:
        from bench.common import machine_info
        machine = machine_info()
    start = clock()
    report = dict(format=REPORT_FORMAT, format_version=REPORT_VERSION, complete=False, ok=False,
                  started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  budget_s=budget_s, seconds=0.0, within_budget=True, gpu=gpu.describe(),
                  machine=machine, sizes=_jsonable(asdict(sizes)), mmcv_ops=None,
                  mmcv_kernels_proven=False,
                  sections={name: dict(title=sections[name].title, needs=list(sections[name].needs),
                                       limit_s=sections[name].limit_s, status="pending")
                            for name in chosen})

    def mmcv_plan() -> dict:
        if report["mmcv_ops"] is None:
            report["mmcv_ops"] = _jsonable(plan_mmcv_ops(gpu.device.type))
        return report["mmcv_ops"]

    def save() -> None:
        report["seconds"] = round(clock() - start, 2)
        report["within_budget"] = report["seconds"] <= budget_s
        atomic_write_json(out, _jsonable(report))

    out.parent.mkdir(parents=True, exist_ok=True)
    save()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch, _sigterm_as_interrupt():
        for name in chosen:
            section, entry = sections[name], report["sections"][name]
            left = budget_s - (clock() - start)
            reason = unmet_needs(section.needs, gpu, mmcv_plan)
            if reason is None and left < MIN_START_S:
                reason = (f"the check's budget of {budget_s:.0f} s is spent "
                          f"({budget_s - left:.0f} s elapsed)")
            if reason is not None:
                entry.update(status="skipped", reason=reason)
                log(f"[gpu-check] {name}: skipped: {reason}")
                save()
                continue
            limit = min(section.limit_s, left)
            log(f"[gpu-check] {name}: {section.title} (limit {limit:.0f} s) ...")
            t0 = clock()
            try:
                if isolate:
                    outcome = run_isolated(section, gpu, sizes, Path(scratch), limit, log)
                else:
                    outcome = section_outcome(section, Context(gpu, sizes, Path(scratch), log))
            except KeyboardInterrupt:
                entry.update(status="interrupted", seconds=round(clock() - t0, 2))
                save()
                raise
            entry.update(outcome)
            entry["seconds"] = round(clock() - t0, 2)
            if entry["status"] == "timed_out":
                entry["reason"] = (f"stopped after {limit:.0f} s: " +
                                   ("its own limit" if limit >= section.limit_s else
                                    "what was left of the check's budget"))
            log(f"[gpu-check] {name}: {entry['status']} in {entry['seconds']:.1f} s"
                + "".join(f"\n[gpu-check]   {p}" for p in entry.get("problems", []))
                + "".join(f"\n[gpu-check]   {entry[k]}" for k in ("error", "reason") if k in entry))
            save()
    report["complete"] = True
    report["ok"] = not any(e["status"] in FAILED for e in report["sections"].values())
    report["mmcv_kernels_proven"] = any(
        e["status"] == "ok" and e.get("mmcv_ops", {}).get("proves_mmcv_kernels")
        for e in report["sections"].values())
    save()
    return _jsonable(report)


def exit_status(report: dict) -> int:
    """0 when every section is ok or skipped, 1 when one failed, raised or timed out."""
    return 0 if report["ok"] else 1


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
    ops = report.get("mmcv_ops") or {}
    return dict(report=str(out), ok=report["ok"], complete=report["complete"],
                seconds=report["seconds"], within_budget=report["within_budget"],
                gpu=report["gpu"].get("name"), mmcv_ops=ops.get("kind"),
                mmcv_kernels_proven=report["mmcv_kernels_proven"],
                sections={k: v["status"] for k, v in report["sections"].items()})
