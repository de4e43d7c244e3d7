"""Fast CPU inference for feature extraction and deployment (same outputs within 1e-5).

:func:`fuse_for_inference` rewrites a TinyViT (this project's backbone or timm's ``TinyVit``)
in place, for eval only; :class:`BatchParallel` spreads a forward over the cores (a batch over
workers, a single image in row bands); :func:`resolve_backend` picks the runtime of feature
extraction (``--backend auto`` is this path). Each step stayed because it paid. Measured on a
2-core AMD EPYC (Zen 4 with AVX-512, a KVM guest shared with other work; torch 2.14 with
oneDNN 3.12 and MKL 2024.2) against ONNX Runtime 1.32 on timm's own fixed-shape export, with
TinyViT-21M; per-core figures are the CPU time of one thread (``time.thread_time``, which the
other processes on the machine move little):

* **Freed memory stays in the process** (:func:`retain_freed_memory`). glibc returns blocks
  over 32 MB to the kernel and trims its heap, so every PyTorch forward page-faulted its
  large activations back in: 53,000 faults (210 MB) per forward, a fifth of its CPU time
  (1.64 -> 1.30 CPU s). ONNX Runtime's arena never pays this.
* **oneDNN convolutions, the weights reordered per input shape** (:class:`FusedConv`). A
  linear layer is the 1x1 convolution of its tokens' memory, a 1x1 conv that of the
  channels_last map; oneDNN runs them with the weight reordered once into the blocked layout it
  picks for the input shape: 112-115 GFLOP/s on one core for the blocks' GEMMs, against 90-98
  for ``torch.addmm`` (MKL; 74 with 96 output channels) and 100-111 for oneDNN's matmul on
  the plain weight. The reordered weights are kept per shape (the last ``PACKED_SHAPES``): a
  layout picked for one shape ran another at a quarter of the speed (29 vs 109 GFLOP/s,
  784 x 384 -> 1536), the whole model at half (238 vs 105 ms an image when the batch went
  from 8 to 4). Residuals are summed into the accumulator in place (1-6% on the GEMM, against
  4-14% for an add after it); the GELU is oneDNN's post-op, as fast here as an in-place GELU after
  the GEMM (0.45 ns an element). On the Zen 3 machine of earlier measurements MKL had led (88
  against 80 GFLOP/s) and the fused GELU had cost 4.5 ns: re-measure this step on a new CPU.
* **Folded constants**: BatchNorm into convs, the LayerNorm affines into the following linear
  layer (``W (g * n + b) + c = (W g) n + (W b + c)``), the attention scale into the query rows.
* **No GEMM work on padding.** Windows are padded to whole windows, as in timm, but qkv is
  computed for the real tokens only and the padding takes the qkv of a zero token (the qkv
  bias: timm's LayerNorm maps a zero token to its bias), and the projection runs after the
  crop. At 512 px, stage 3's 32x32 map pads to 42x42 (72% more tokens), so this is where the
  fast path gains most on ONNX Runtime and torch.compile, which compute the padding.
* **Attention.** q, k and v are copied apart by the windowing copy (QK^T of 24 windows x heads
  of 196 tokens: 0.69 against 0.87 ms on strided slices of one tensor); the batched matmuls
  take at most 4 MB of attention maps at a time (800x1333, stage 2's 24 windows x 12 heads:
  31 against 55 ms at once); the softmax is in base 2 (:func:`_softmax2_matmul`): log2(e) is
  folded into the fast path's copy of the query rows and of the biases, exp2 costs 0.28 ns an
  element against 0.81 for exp, the max is not subtracted where the row sums show that nothing
  overflowed or vanished (other rows are redone with it), and the sums divide the (tokens, 32)
  output rather than the maps: 2.28 -> 1.83 ms for 2 windows x 12 heads. ONNX Runtime's
  batched matmuls (MLAS) stay 1.2-1.5x faster than ``torch.bmm`` (MKL) on these 196 x 196 x 32
  shapes: about 6% of the forward at 21M, 15% at 5M, where ONNX Runtime keeps a lead per core.
* **MBConv one image at a time**: an image's 4x wider hidden maps stay in the cache (stage 0,
  4 images at 224 px: 26.4 against 29.1 ms).
* **The classifier's head** (21,841 x 576) through oneDNN's matmul: it streams the 50 MB
  weight faster (4.1 against 6.2 ms for 4 images).
* **Threads** (:class:`BatchParallel`). torch splits each op over its OpenMP threads, which
  meet at a barrier after every op; on a machine shared with other processes a barrier waits
  for a descheduled thread. One-thread workers do not wait for each other: a batch of at least
  one image per thread goes to them in slices; a smaller batch (a detection image) stays whole
  and every layer splits its rows into bands over the same workers, 2 bands per thread, each
  taken by the next free worker. Attention bands are whole window rows (a band of window
  rows is attended alone); convolution and MLP bands compute the input rows their
  convolutions read above and below (the conv pads the band as it pads the whole map, and the
  output rows that the padding reaches are cropped). The bands cost 2.7% more CPU time than
  one stream (4 per thread: 8%; 8: 13%). With the 2 cores shared (load average 3-11), 21M,
  median of paired rounds: 800x1333 batch 1, 0.44 img/s against 0.33 for ONNX Runtime and
  0.19 for this path on OpenMP (0.17-0.23 against 0.11-0.17 and 0.06 at load 6-11); 224 px
  batch 8, 9.8 against 7.1 img/s; 512 px batch 2, 1.16 against 0.81. With the 2 cores to
  itself the barrier costs little and one OpenMP stream led instead, by 0-12%: 21M 19.3
  against 19.0 img/s at 224 px batch 8 and 0.89 against 0.79 at 800x1333; 5M 50.4 against
  47.1 and 2.46 against 2.20. Neither wins everywhere, so ``BatchParallel``'s ``auto`` mode
  (the default) times both on its first calls, keeps the faster for batches of at least one
  image per thread and, separately, for smaller ones, and times both again every ``RECHECK``
  calls.

The result per core (one thread, CPU time, 21M): 224 px batch 4 (a worker's slice of 8) 0.98x
ONNX Runtime (0.83-0.88x before the oneDNN, attention and MBConv steps), 800x1333 1.09x
(0.94-1.01x); 5M at 224 px 0.89x. With both cores (quiet machine, ``bench/bench_inference.py``,
ONNX Runtime's threads not spinning between runs, see
:class:`~tinyvit_backbone.onnx_runtime.OnnxRuntimeModel`): 1.03-1.20x the best of ONNX
Runtime, torch.compile and timm for 5M, 11M and 21M at 224 px batch 8, 512 px batch 2 and
800x1333 batch 1; at padded sizes the skipped padding adds to the lead. 21M at 224 px batch 8
runs at 81% of the machine's fp32 ``torch.mm`` peak on both cores (one thread, batch 4: 91% of
one core's), 5M at 61%. That is why ``--backend auto`` is this path at every batch size: the
exported graph on ONNX Runtime (``--backend onnxruntime``) was the choice for single images
until the rows were split over threads. Why not torch.compile: it compiles per input shape
(about a minute each for 21M on this machine) and detection inputs change size every batch;
these rewrites need no compilation and fall back to plain ops wherever oneDNN is unavailable
(CUDA, other dtypes, autograd).

While torch.onnx / torch.export / torch.jit.trace records the model (:func:`exporting`), the
blocks use plain ops and shape-independent windowing, so :mod:`tinyvit_backbone.export`
exports this computation with dynamic height and width.
"""
from __future__ import annotations

import ctypes
import math
import os
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.tiny_vit import ConvNorm, MBConv, PatchEmbed, PatchMerging, TinyVitBlock

_ONEDNN = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise_")
           and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_retained = False


def exporting() -> bool:
    """True while torch.onnx / torch.export / torch.jit.trace records the model: the blocks
    then use plain ops and shape-independent windowing, so the graph holds for any input size."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def _fast_cpu(x: torch.Tensor) -> bool:
    """Whether the oneDNN float32 path applies: CPU, float32, no autograd, no graph being
    recorded, and no autocast (which asks for its own dtype: the plain ops follow it)."""
    return (_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32
            and not (x.requires_grad and torch.is_grad_enabled()) and not exporting()
            and not torch.is_autocast_enabled("cpu"))


def retain_freed_memory() -> bool:
    """Keep memory that PyTorch frees inside the process (glibc only; returns whether applied).

    By default glibc hands blocks over 32 MB straight back to the kernel and trims the heap
    above 64 MB free, so every forward page-faults its large activations back in: 53,000
    faults (210 MB) per TinyViT-21M forward at 224 px batch 8, a fifth of its CPU time. Raising
    the mmap and trim thresholds makes freed blocks reusable, as ONNX Runtime's arena is. The
    cost: the process keeps its peak heap instead of returning it. Process-wide and idempotent.
    """
    global _retained
    if _retained:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _retained = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)
                     and mallopt(_M_ARENA_MAX, 1))
    return _retained


# --------------------------------------------------------------------------- threads
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_pools.clear)
MAX_CHUNK = 8  # images per batch task: enough rows for full-speed GEMMs, small enough to balance
TASKS_PER_WORKER = 2  # bands per thread and layer: a descheduled thread holds up one band, not half
_local = threading.local()  # .workers: the layers of this thread's forward split into bands
PACKED_SHAPES = 4  # reordered weights kept per layer: batch slices and bands have a few shapes
_packed_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(
                workers, thread_name_prefix="tinyvit-batch",
                initializer=torch.set_num_threads, initargs=(1,))
        return _pools[workers]


def _concat(outputs: list):
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    return type(first)(torch.cat(parts) for parts in zip(*outputs))


def _in_workers(fn, items, workers: int) -> list:
    """``fn(item)`` for every item on the pool's one-thread workers, which take the next item
    when done (a thread that the OS deschedules holds up one item, not a fixed share); the
    caller's grad and inference modes hold in the workers."""
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(item):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(item)

    return list(_pool(workers).map(run, items))


def _band_workers(x: torch.Tensor) -> int:
    """The threads to split this layer's rows over (0: run it whole, in this thread)."""
    return getattr(_local, "workers", 0) if _fast_cpu(x) else 0


def _bands(units: int, images: int, workers: int) -> list[tuple[int, int, int]]:
    """(image, first, end) row ranges: about ``TASKS_PER_WORKER`` per thread in all."""
    per_image = max(1, min(units, math.ceil(TASKS_PER_WORKER * workers / images)))
    edges = [round(k * units / per_image) for k in range(per_image + 1)]
    return [(i, a, e) for i in range(images) for a, e in zip(edges, edges[1:]) if e > a]


def _over_bands(fn, units: int, images: int, workers: int) -> None:
    bands = _bands(units, images, workers)
    if len(bands) == 1:
        fn(bands[0])
    else:
        _in_workers(fn, bands, workers)


MODES = ("auto", "threads", "openmp")
TRIALS = 2  # timed calls per mode (after one warm-up call each) before "auto" settles
TRIAL_CALLS = 2 * (TRIALS + 1)  # the calls of a regime before "auto" runs its choice alone
RECHECK = 200  # calls of a settled regime after which "auto" measures both modes again
_clock = time.perf_counter


class BatchParallel(nn.Module):
    """Run ``module`` (a fused TinyViT) on the CPU in float32 without autograd over the cores,
    in the faster of two ways, which ``mode`` picks:

    * ``threads``: ``workers`` threads of one intra-op thread each (default: torch's thread
      count). Batches of at least ``workers`` images are split into slices of at most
      ``MAX_CHUNK`` images, each a whole forward on one thread. Smaller batches (a single
      detection image) run in this thread, and each layer of ``module`` splits its rows into
      bands over the same threads: window rows for attention, rows (with the rows a
      convolution reads above and below) for the convolutions and the MLP.
    * ``openmp``: ``module`` called directly, every op split over torch's OpenMP threads.
    * ``auto`` (default): both, measured on this machine. For each regime (batches of at least
      ``workers`` images, smaller batches) the first calls alternate between the two modes:
      one warm-up call each (weights are reordered for new shapes), then ``TRIALS`` timed
      calls each; the mode with the lower median wall time per input element serves the
      regime from then on, and every ``RECHECK`` calls the two are measured again (the load
      of a shared machine changes). Which mode serves a regime: :attr:`chosen`.

    Why both: see the module docstring. Other devices, dtypes and a single thread run
    ``module`` directly. Outputs (a tensor or a tuple of them) are those of ``module``, equal
    in every mode within float32 rounding.
    """

    def __init__(self, module: nn.Module, workers: int | None = None, mode: str = "auto"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.module = module
        self.workers = workers
        self.mode = mode
        self.chosen: dict[str, str] = {}  # regime ("slices" / "bands") -> mode, once settled
        self._timings: dict[str, dict[str, list[float]]] = {}
        self._calls: dict[str, int] = {}

    def forward(self, x: torch.Tensor):
        workers = self.workers or torch.get_num_threads()
        if workers < 2 or not _fast_cpu(x) or getattr(_local, "workers", 0):
            return self.module(x)
        regime = "slices" if x.shape[0] >= workers else "bands"
        if self.mode != "auto":
            return self._run(x, self.mode, regime, workers)
        if regime in self.chosen:
            self._calls[regime] += 1
            if self._calls[regime] < RECHECK:
                return self._run(x, self.chosen[regime], regime, workers)
            del self.chosen[regime]  # measure both again
        timings = self._timings.setdefault(regime, {"threads": [], "openmp": []})
        mode = min(timings, key=lambda m: len(timings[m]))  # alternate, threads first
        start = _clock()
        out = self._run(x, mode, regime, workers)
        timings[mode].append((_clock() - start) / x.numel())
        if all(len(t) > TRIALS for t in timings.values()):
            # the first call of each mode is its warm-up
            self.chosen[regime] = min(timings, key=lambda m: statistics.median(timings[m][1:]))
            self._calls[regime] = 0
            del self._timings[regime]
        return out

    def _run(self, x: torch.Tensor, mode: str, regime: str, workers: int):
        if mode == "openmp":
            return self.module(x)
        if regime == "slices":
            chunk = min(MAX_CHUNK, math.ceil(x.shape[0] / workers))
            return _concat(_in_workers(self.module, x.split(chunk), workers))
        _local.workers = workers
        try:
            return self.module(x)
        finally:
            _local.workers = 0


# --------------------------------------------------------------------------- backends
BACKENDS = ("auto", "torch", "onnxruntime")


def resolve_backend(requested: str, device: torch.device | str, tinyvit: bool = True) -> str:
    """The runtime of feature extraction: 'torch' (this fast path, over :class:`BatchParallel`
    threads on the CPU) or 'onnxruntime' (the model exported by :mod:`tinyvit_backbone.export`,
    run by ONNX Runtime on the CPU).

    ``auto`` is torch: on the CPU it led ONNX Runtime at every batch size measured (module
    docstring), elsewhere it is the only one. An explicit 'onnxruntime' is refused, with the
    fix, where it cannot run: another device than the CPU, a model other than TinyViT, or ONNX
    Runtime not installed."""
    if requested not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested in ("auto", "torch"):
        return "torch"
    device = torch.device(device)
    if device.type != "cpu":
        raise ValueError(f"--backend onnxruntime runs on the CPU, but the device is {device}: "
                         "add --device cpu, or use --backend torch")
    if not tinyvit:
        raise ValueError("--backend onnxruntime exports TinyViT models only; use --backend torch "
                         "for timm models")
    from .onnx_runtime import require_onnxruntime
    require_onnxruntime()
    return "onnxruntime"


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(x)


def _image(tokens: torch.Tensor) -> torch.Tensor:
    """(M, C) row-major tokens as the (1, C, M, 1) channels_last image of the same memory: its
    1x1 convolution is the linear layer on the tokens."""
    return tokens.t()[None, :, :, None]


def _tokens(image: torch.Tensor) -> torch.Tensor:
    """A channels_last (b, C, h, w) image as (b*h*w, C) tokens (a view)."""
    return image.permute(0, 2, 3, 1).reshape(-1, image.shape[1])


class FusedConv(nn.Module):
    """A biased conv (BatchNorm folded in) or linear layer, with an optional GELU.

    On CPU it is a oneDNN convolution of channels_last memory, its weight reordered into the
    blocked layout oneDNN picks for the input shape (per shape: a layout picked for one shape
    ran another at a quarter of the speed), the GELU a post-op, a residual summed into the
    accumulator in place; a linear layer is the 1x1 convolution of the tokens' memory
    (:func:`_image`). :meth:`rows` computes output rows from the input rows they read.
    Elsewhere (CUDA, other dtypes, autograd, export): plain ops."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool, stride=(1, 1),
                 padding=(0, 0), dilation=(1, 1), groups: int = 1, to_channels_last: bool = False):
        super().__init__()
        self.weight, self.bias = weight, bias  # parameters of the module it came from
        self.stride, self.padding = list(stride), list(padding)
        self.dilation, self.groups = list(dilation), groups
        self.kernel = weight.shape[-2]
        self.gelu = gelu
        self.to_channels_last = to_channels_last
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    @classmethod
    def of_conv(cls, conv: nn.Conv2d, gelu: bool, to_channels_last: bool = False) -> FusedConv:
        return cls(conv.weight, conv.bias, gelu, conv.stride, conv.padding, conv.dilation,
                   conv.groups, to_channels_last)

    @classmethod
    def of_linear(cls, linear: nn.Linear, gelu: bool = False) -> FusedConv:
        return cls(linear.weight.view(*linear.weight.shape, 1, 1), linear.bias, gelu)

    def __getstate__(self):  # reordered weights are opaque oneDNN tensors: a copy redoes them
        return {**self.__dict__, "_packed": {}}

    def packed_weight(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The weight in the blocked layout oneDNN picks for inputs of ``shape`` (reordered once
        per shape; the last ``PACKED_SHAPES`` shapes are kept)."""
        weight = self._packed.get(shape)
        if weight is None:
            weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                self.weight.detach().to_mkldnn(), self.padding, self.stride, self.dilation,
                self.groups, list(shape))
            with _packed_lock:
                while len(self._packed) >= PACKED_SHAPES:
                    del self._packed[next(iter(self._packed))]
                self._packed[shape] = weight
        return weight

    def conv(self, x: torch.Tensor, residual: torch.Tensor | None = None,
             gelu: bool | None = None) -> torch.Tensor:
        """GELU(conv(x) [+ residual, in place]) of channels_last x (oneDNN)."""
        gelu = self.gelu if gelu is None else gelu
        args = (self.packed_weight(tuple(x.shape)), self.bias, self.padding, self.stride,
                self.dilation, self.groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, *args, "gelu" if gelu else "none", [None] if gelu else [], "none" if gelu else "")
        out = torch.ops.mkldnn._convolution_pointwise_.binary(residual, x, *args, "add", 1.0,
                                                              None, [], None)
        return _gelu_(out) if gelu else out  # oneDNN fuses no GELU after a sum

    def linear(self, tokens: torch.Tensor, residual: torch.Tensor | None = None,
               gelu: bool | None = None) -> torch.Tensor:
        """The 1x1 conv as a linear layer on (M, C_in) tokens: GELU(tokens W^T + b), or with
        ``residual`` (M, C_out) added in place (GELU after the sum) and returned."""
        out = self.conv(_image(tokens), None if residual is None else _image(residual), gelu)
        return residual if residual is not None else out[0, :, :, 0].t()

    def out_size(self, size: int, axis: int = 0) -> int:
        k, s, p = self.weight.shape[2 + axis], self.stride[axis], self.padding[axis]
        return (size + 2 * p - self.dilation[axis] * (k - 1) - 1) // s + 1

    def input_rows(self, first: int, end: int, height: int) -> tuple[int, int]:
        """The input rows that output rows [first, end) read, from a multiple of the stride."""
        k, s, p = self.kernel, self.stride[0], self.padding[0]
        return max(0, first * s - p) // s * s, min(height, (end - 1) * s - p + k)

    def rows(self, band: torch.Tensor, offset: int, height: int, first: int, end: int,
             residual: torch.Tensor | None = None, gelu: bool | None = None) -> torch.Tensor:
        """Output rows [first, end) from ``band``, input rows [offset, ...) of an input of
        ``height`` rows, as a new tensor. The conv pads the band as it pads the whole input:
        padding rows that stand for rows outside the band only reach output rows outside
        [first, end), which are cropped. ``residual``: rows [first, end) to add (not changed)."""
        lo, hi = self.input_rows(first, end, height)
        skip = first - lo // self.stride[0]
        gelu = self.gelu if gelu is None else gelu
        out = self.conv(band[:, :, lo - offset:hi - offset], gelu=gelu and residual is None)
        if skip or out.shape[2] != end - first:
            out = out[:, :, skip:skip + end - first]
        if residual is None:
            return out
        out = out + residual
        return _gelu_(out) if gelu else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fast_cpu(x):
            x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                         self.groups)
            return F.gelu(x) if self.gelu else x
        if self.to_channels_last or not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        workers = _band_workers(x)
        if not workers:
            return self.conv(x)
        return ConvChain.banded([self], x, workers)


class ConvChain(nn.Module):
    """Convolutions run one after the other (timm's ``PatchEmbed`` and ``PatchMerging``, the
    activations folded into them), in bands of output rows when the rows are split over
    threads: each band computes the rows of every intermediate map it reads."""

    def __init__(self, module: nn.Module, convs: list[tuple[str, str | None]],
                 first_to_channels_last: bool = False):
        super().__init__()
        for i, (name, act) in enumerate(convs):
            setattr(self, name, FusedConv.of_conv(_fused_convnorm(getattr(module, name)),
                                                  gelu=act is not None,
                                                  to_channels_last=first_to_channels_last and i == 0))
        self.names = [name for name, _ in convs]
        for attr in ("stride", "in_dim", "out_dim"):  # facts timm's users may read
            if hasattr(module, attr):
                setattr(self, attr, getattr(module, attr))

    @staticmethod
    def band_rows(convs: list[FusedConv], band: torch.Tensor, offset: int, height: int,
                  first: int, end: int, residual=None, gelu=None) -> torch.Tensor:
        """Output rows [first, end) of the chain from ``band`` (rows [offset, ...) of its
        input of ``height`` rows); ``residual``/``gelu`` apply to the last conv."""
        heights = [height]
        for c in convs[:-1]:
            heights.append(c.out_size(heights[-1]))
        needed = [(first, end)]
        for c, h in zip(reversed(convs[1:]), reversed(heights[1:])):
            needed.insert(0, c.input_rows(*needed[0], h))
        for i, c in enumerate(convs):
            last = i == len(convs) - 1
            band = c.rows(band, offset, heights[i], *needed[i], residual=residual if last else None,
                          gelu=gelu if last else None)
            offset = needed[i][0]
        return band

    @staticmethod
    def banded(convs: list[FusedConv], x: torch.Tensor, workers: int, residual=None,
               gelu=None) -> torch.Tensor:
        """The chain on channels_last ``x``, its output rows in bands over ``workers`` threads."""
        b, _, h, w = x.shape
        out_h, out_w = h, w
        for c in convs:
            out_h, out_w = c.out_size(out_h), c.out_size(out_w, 1)
        out = torch.empty(b, convs[-1].weight.shape[0], out_h, out_w, dtype=x.dtype,
                          memory_format=torch.channels_last)

        def band(task):
            i, first, end = task
            res = None if residual is None else residual[i:i + 1, :, first:end]
            out[i:i + 1, :, first:end] = ConvChain.band_rows(convs, x[i:i + 1], 0, h, first, end,
                                                             res, gelu)

        _over_bands(band, out_h, b, workers)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convs = [getattr(self, name) for name in self.names]
        if _fast_cpu(x):
            x = x.contiguous(memory_format=torch.channels_last)
            workers = _band_workers(x)
            if workers:
                return self.banded(convs, x, workers)
        for conv in convs:
            x = conv(x)
        return x


class FastMBConv(nn.Module):
    """timm's ``MBConv`` (1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU); the residual
    and the last GELU ride on the last conv (in place on the block input when whole)."""

    def __init__(self, block: MBConv):
        super().__init__()
        self.conv1 = FusedConv.of_conv(_fused_convnorm(block.conv1), gelu=True)
        self.conv2 = FusedConv.of_conv(_fused_convnorm(block.conv2), gelu=True)
        self.conv3 = FusedConv.of_conv(_fused_convnorm(block.conv3), gelu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fast_cpu(x):
            return F.gelu(self.conv3(self.conv2(self.conv1(x))) + x)
        x = x.contiguous(memory_format=torch.channels_last)
        convs = [self.conv1, self.conv2, self.conv3]
        workers = _band_workers(x)
        if workers:  # bands read their neighbours' input rows: write elsewhere
            return ConvChain.banded(convs, x, workers, residual=x, gelu=True)
        for image in x.split(1):  # one image's 4x wider hidden maps stay in the cache
            self.conv3.conv(self.conv2.conv(self.conv1.conv(image)), residual=image, gelu=True)
        return x


LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E)
_SUM_RANGE = (2.0 ** -60, 2.0 ** 100)


def _softmax2_matmul(logits: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> None:
    """out = softmax2(logits) @ v, softmax2 in base 2 (logits already times log2(e)), with the
    division by each row's sum after the matmul (on val_dim columns, not window² ones). The max
    is not subtracted: where every row's sum lies in [2^-60, 2^100], its largest term is a
    normal float and none overflows, so the result is that of the subtracted form; otherwise
    the rows are computed with the max subtracted."""
    weights = torch.exp2(logits)
    sums = weights.sum(-1, keepdim=True)
    low, high = _SUM_RANGE
    if not bool(((sums > low) & (sums < high)).all()):  # also catches NaN
        torch.exp2(logits.sub_(logits.amax(-1, keepdim=True)), out=weights)
        sums = weights.sum(-1, keepdim=True)
    torch.bmm(weights, v, out=out).div_(sums)


class FastTinyVitBlock(nn.Module):
    """timm's ``TinyVitBlock`` (input / output BHWC) with the rewrites of the module docstring."""

    ATTENTION_BYTES = 4 << 20  # attention maps per batched matmul: they stay in the cache

    def __init__(self, block: TinyVitBlock):
        super().__init__()
        attn = block.attn
        self.window_size, self.num_heads = block.window_size, attn.num_heads
        self.key_dim, self.val_dim = attn.key_dim, attn.val_dim
        self.norm = _fold_layernorm(attn.norm, attn.qkv)
        with torch.no_grad():  # fold the attention scale into the query rows of qkv
            rows = attn.qkv.weight.view(self.num_heads, -1, attn.qkv.in_features)
            rows[:, : self.key_dim] *= attn.scale
            attn.qkv.bias.view(self.num_heads, -1)[:, : self.key_dim] *= attn.scale
            self.register_buffer("attn_bias", attn.attention_biases[:, attn.attention_bias_idxs]
                                 .contiguous(), persistent=False)
        self.qkv, self.proj = attn.qkv, attn.proj
        self.local_conv = FusedConv.of_conv(_fused_convnorm(block.local_conv), gelu=False)
        self.mlp_norm = _fold_layernorm(block.mlp.norm, block.mlp.fc1)
        self.fc1, self.fc2 = block.mlp.fc1, block.mlp.fc2
        # the fast path's softmax is in base 2 (exp2 costs a third of exp on CPU): log2(e)
        # goes into its copy of the query rows and of the attention biases
        with torch.no_grad():
            qkv_weight, qkv_bias = self.qkv.weight.clone(), self.qkv.bias.clone()
            qkv_weight.view(self.num_heads, -1, self.qkv.in_features)[:, :self.key_dim] *= LOG2E
            qkv_bias.view(self.num_heads, -1)[:, :self.key_dim] *= LOG2E
        self.register_buffer("attn_bias2", self.attn_bias * LOG2E, persistent=False)
        self.register_buffer("qkv_bias2", qkv_bias, persistent=False)
        self.qkv_fast = FusedConv(qkv_weight.view(*qkv_weight.shape, 1, 1), qkv_bias, gelu=False)
        self.qkv_nobias = FusedConv(self.qkv_fast.weight, None, gelu=False)
        self.proj_fast = FusedConv.of_linear(self.proj)
        self.fc1_fast = FusedConv.of_linear(self.fc1, gelu=True)
        self.fc2_fast = FusedConv.of_linear(self.fc2)

    # ---------------------------------------------------------------- attention
    def _qkv_windows(self, tokens: torch.Tensor, b: int, h: int, w: int, fast: bool, general: bool
                     ) -> torch.Tensor:
        """qkv of the real tokens, padded to whole windows with the qkv of a zero token (timm
        pads the block input with zeros: LayerNorm maps them to its bias, which is folded into
        the qkv bias), as (windows * heads, window², per-head qkv) in one copy."""
        ws, heads = self.window_size, self.num_heads
        nh, nw = (h + ws - 1) // ws, (w + ws - 1) // ws
        pad_b, pad_r = nh * ws - h, nw * ws - w
        dim = self.qkv.out_features
        if general or pad_b or pad_r:
            qkv = self.qkv_nobias.linear(tokens) if fast else F.linear(tokens, self.qkv.weight)
            qkv = F.pad(qkv.view(b, h, w, dim), (0, 0, 0, pad_r, 0, pad_b))
            qkv = qkv.add_(self.qkv_bias2) if fast else qkv + self.qkv.bias
        elif fast:
            qkv = self.qkv_fast.linear(tokens)
        else:
            qkv = F.linear(tokens, self.qkv.weight, self.qkv.bias)
        # (b, nh, ws, nw, ws, heads, d) -> (b, nh, nw, heads, ws, ws, d): windows and heads
        # become the batch of the attention matmuls
        if fast and self.key_dim == self.val_dim:  # q, k, v apart: the matmuls read them faster
            qkv = qkv.view(b, nh, ws, nw, ws, heads, 3, self.key_dim)
            return qkv.permute(6, 0, 1, 3, 5, 2, 4, 7).reshape(3, -1, ws * ws, self.key_dim)
        qkv = qkv.view(b, nh, ws, nw, ws, heads, dim // heads).permute(0, 1, 3, 5, 2, 4, 6)
        return qkv.reshape(b * nh * nw * heads, ws * ws, dim // heads)

    def _attention(self, tokens: torch.Tensor, b: int, h: int, w: int, fast: bool) -> torch.Tensor:
        """Window attention of normed tokens (b*h*w, C) -> (b*h*w, heads * val_dim)."""
        general = exporting()
        ws, heads, kd = self.window_size, self.num_heads, self.key_dim
        nh, nw = (h + ws - 1) // ws, (w + ws - 1) // ws
        qkv = self._qkv_windows(tokens, b, h, w, fast, general)
        n = ws * ws
        if tokens.is_cuda:
            q, k, v = qkv[..., :kd], qkv[..., kd:2 * kd], qkv[..., 2 * kd:]
            out = F.scaled_dot_product_attention(
                q.view(-1, heads, n, kd), k.view(-1, heads, n, kd), v.view(-1, heads, n, self.val_dim),
                attn_mask=self.attn_bias, scale=1.0).view(-1, n, self.val_dim)
        elif fast:
            if qkv.dim() == 4:
                q, k, v = qkv
            else:  # slices of one tensor: the matmuls read them in place
                q, k, v = qkv[..., :kd], qkv[..., kd:2 * kd], qkv[..., 2 * kd:]
            out = q.new_empty(q.shape[0], n, self.val_dim)
            step = heads * max(1, self.ATTENTION_BYTES // (heads * n * n * q.element_size()))
            for s in range(0, q.shape[0], step):
                attn = torch.bmm(q[s:s + step], k[s:s + step].transpose(1, 2))
                attn.view(-1, heads, n, n).add_(self.attn_bias2)
                _softmax2_matmul(attn, v[s:s + step], out[s:s + step])
        else:
            q, k, v = qkv[..., :kd], qkv[..., kd:2 * kd], qkv[..., 2 * kd:]
            attn = torch.matmul(q, k.transpose(1, 2)).view(-1, heads, n, n) + self.attn_bias
            out = torch.matmul(attn.softmax(dim=-1).view(-1, n, n), v)
        dim = heads * self.val_dim
        # (b, nh, nw, heads, ws, ws, d) -> (b, nh, ws, nw, ws, heads, d): back to the image
        out = out.view(b, nh, nw, heads, ws, ws, self.val_dim).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(b, nh * ws, nw * ws, dim)
        if general or nh * ws != h or nw * ws != w:
            out = out[:, :h, :w]
        return out.reshape(-1, dim)

    # ---------------------------------------------------------------- fast CPU halves
    def _attend(self, x: torch.Tensor) -> None:
        """x += proj(attention(norm(x))), in place; x: (b, h, w, C) contiguous, whole windows
        from its top row (a band of window rows, or the whole map)."""
        b, h, w, c = x.shape
        tokens = x.view(-1, c)
        self.proj_fast.linear(self._attention(self.norm(tokens), b, h, w, True), residual=tokens)

    def _mlp(self, x: torch.Tensor, first: int, end: int) -> torch.Tensor:
        """Rows [first, end) of local_conv then the MLP with its residual, from the channels_last
        (b, C, h, w) block state: a new channels_last tensor."""
        y = self.local_conv.rows(x, 0, x.shape[2], first, end)
        y = y.contiguous(memory_format=torch.channels_last)  # the tokens below are its memory
        tokens = _tokens(y)
        self.fc2_fast.linear(self.fc1_fast.linear(self.mlp_norm(tokens)), residual=tokens)
        return y

    # ---------------------------------------------------------------- block
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if _fast_cpu(x):
            x = x.contiguous()
            workers = _band_workers(x)
            if not workers:
                self._attend(x)
                return self._mlp(x.permute(0, 3, 1, 2), 0, h).permute(0, 2, 3, 1)
            ws = self.window_size
            _over_bands(lambda t: self._attend(x[t[0]:t[0] + 1, t[1] * ws:min(t[2] * ws, h)]),
                        (h + ws - 1) // ws, b, workers)
            out = torch.empty_like(x)
            image = x.permute(0, 3, 1, 2)

            def mlp(task):
                i, first, end = task
                out[i:i + 1, first:end] = self._mlp(image[i:i + 1], first, end).permute(0, 2, 3, 1)

            _over_bands(mlp, h, b, workers)
            return out
        tokens = x.reshape(-1, c)
        x = tokens + self.proj(self._attention(self.norm(tokens), b, h, w, False))
        x = self.local_conv(x.view(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        tokens = x.reshape(-1, c)
        return (tokens + self.fc2(F.gelu(self.fc1(self.mlp_norm(tokens))))).view(b, h, w, c)


class FastLinear(nn.Module):
    """A linear layer (the classifier's) as a oneDNN matmul on CPU: for a few rows against a
    wide weight (21,841 x 576) it streams the weight faster than torch's (4.1 vs 6.2 ms)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast_cpu(x) and x.dim() == 2:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias,
                                                      "none", [], "")
        return F.linear(x, self.weight, self.bias)


def _fused_convnorm(m: nn.Module) -> nn.Conv2d:
    return m.fuse() if isinstance(m, ConvNorm) else m


@torch.no_grad()
def _fold_layernorm(norm: nn.LayerNorm, linear: nn.Linear) -> nn.LayerNorm:
    """Fold ``norm``'s affine into ``linear`` (in place); return an affine-free LayerNorm."""
    weight = linear.weight.double()
    bias = linear.bias.double() if linear.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    new_bias = weight @ norm.bias.double() + bias
    linear.weight.copy_((weight * norm.weight.double()[None, :]).to(linear.weight.dtype))
    if linear.bias is None:
        linear.bias = nn.Parameter(new_bias.to(linear.weight.dtype))
    else:
        linear.bias.copy_(new_bias.to(linear.bias.dtype))
    return nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False,
                        device=norm.weight.device, dtype=norm.weight.dtype)


@torch.no_grad()
def fuse_for_inference(model: nn.Module, retain_memory: bool = True) -> nn.Module:
    """Rewrite ``model`` (a TinyViT backbone or timm ``TinyVit``) for fast eval-mode inference,
    in place; returns it in eval mode. Training afterwards is not supported: BatchNorm
    statistics are frozen into the convolutions. ``retain_memory`` applies
    :func:`retain_freed_memory` (process-wide)."""
    model.eval()
    if retain_memory:
        retain_freed_memory()
    if getattr(model, "is_fused", False):
        return model
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, PatchEmbed):
                setattr(module, name, ConvChain(child, [("conv1", "act"), ("conv2", None)],
                                                first_to_channels_last=True))
            elif isinstance(child, PatchMerging):
                setattr(module, name, ConvChain(child, [("conv1", "act1"), ("conv2", "act2"),
                                                        ("conv3", None)]))
            elif isinstance(child, TinyVitBlock):
                setattr(module, name, FastTinyVitBlock(child))
            elif isinstance(child, MBConv):
                setattr(module, name, FastMBConv(child))
    head = getattr(model, "head", None)
    if isinstance(getattr(head, "fc", None), nn.Linear):
        head.fc = FastLinear(head.fc)
    model.is_fused = True
    return model
