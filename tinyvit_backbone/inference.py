"""Fast CPU inference for feature extraction and deployment (same outputs within 1e-5).

:func:`fuse_for_inference` rewrites a TinyViT (this project's backbone or timm's ``TinyVit``)
in place, for eval only; :class:`BatchParallel` spreads a batch over the cores;
:func:`resolve_backend` picks torch or ONNX Runtime (``--backend auto``). Measured on a
2-core AMD EPYC (Zen 3, AVX2; MKL sgemm peaks at ~88 GFLOP/s per core), TinyViT-21M, 224 px,
batch 8, against ONNX Runtime 1.32 running the same model; each step stayed because it paid:

* **Freed memory stays in the process** (:func:`retain_freed_memory`). glibc returns blocks
  over 32 MB to the kernel and trims its heap, so every PyTorch forward page-faulted its
  large activations back in: 53,000 faults (210 MB) per forward, a fifth of its CPU time
  (1.64 -> 1.30 CPU s). ONNX Runtime's arena never pays this; this was most of its lead.
* **GEMMs through MKL, GELU in place.** Every linear layer and every 1x1 conv (a GEMM on the
  channels_last (pixels, channels) view of the same memory) is ``torch.addmm``: 88 GFLOP/s on
  one core against oneDNN's 80, and oneDNN's fused GELU costs 4.5 ns an element against 1 ns
  for an in-place GELU afterwards (fc1 of stage 3: 34.2 -> 23.6 ms). Residuals ride in the
  GEMM's accumulator. The 3x3 convs stay on oneDNN with GELU as its post-op: there the maps
  are 38 MB and memory-bound, and the fused GELU saves a pass (22 vs 31 ms for stage 0).
* **Folded constants**: BatchNorm into convs, the LayerNorm affines into the following linear
  layer (``W (g * n + b) + c = (W g) n + (W b + c)``), the attention scale into the query rows.
* **No GEMM work on padding.** Windows are padded to whole windows, as in timm, but qkv is
  computed for the real tokens only and the padding takes the qkv of a zero token (the qkv
  bias: timm's LayerNorm maps a zero token to its bias), and the projection runs after the
  crop. At 512 px, stage 3's 32x32 map pads to 42x42 (72% more tokens), so this is where the
  fast path gains most on ONNX Runtime and torch.compile, which compute the padding.
* **Attention** as two batched matmuls reading slices of one (window x head)-major copy of
  qkv, softmax in place. ONNX Runtime's attention core is still 25% faster (its softmax has a
  cheaper exp), but it is a tenth of the forward.
* **Batches over threads** (:class:`BatchParallel`). torch splits each op over its OpenMP
  threads, which meet at a barrier after every op; on a machine shared with other processes a
  barrier waits for a descheduled thread. One-thread workers on slices of the batch do not
  wait for each other: 2.6 img/s against 1.3 for the same fast path on two OpenMP threads,
  and 2.4 for ONNX Runtime (load average 7-11 on the 2 cores; bench/bench_inference.py).

The result: per core the two runtimes are close (one thread, CPU time: 6.6 img/s for the fast
path, 7.0 for ONNX Runtime, whose kernels stay a little ahead at 224 px without padding);
with both cores the fast path leads through its threads, and at padded sizes through the
skipped padding. A single image cannot be split over workers, so there ``--backend auto``
runs the exported graph on ONNX Runtime (800x1333: 0.12-0.13 img/s against 0.10 on OpenMP);
that is not yet ahead of ONNX Runtime on timm's own fixed-shape export (0.92x, per-round
quartiles 0.89-1.03): the dynamic graph pads qkv (3x the channels of timm's padded input).
Why not torch.compile: it compiles per input shape (about a minute each for 21M on this
machine) and detection inputs change size every batch; these rewrites need no compilation
and fall back to plain ops wherever oneDNN is unavailable (CUDA, other dtypes, autograd).

While torch.onnx / torch.export / torch.jit.trace records the model (:func:`exporting`), the
blocks use plain ops and shape-independent windowing, so :mod:`tinyvit_backbone.export`
exports this computation with dynamic height and width.
"""
from __future__ import annotations

import ctypes
import math
import os
import platform
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.tiny_vit import ConvNorm, MBConv, PatchEmbed, PatchMerging, TinyVitBlock

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_retained = False


def exporting() -> bool:
    """True while torch.onnx / torch.export / torch.jit.trace records the model: the blocks
    then use plain ops and shape-independent windowing, so the graph holds for any input size."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def _fast_cpu(x: torch.Tensor) -> bool:
    return (_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32
            and not (x.requires_grad and torch.is_grad_enabled()) and not exporting())


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


# --------------------------------------------------------------------------- batch threads
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_pools.clear)
MAX_CHUNK = 8  # images per task: enough rows for full-speed GEMMs, small enough to balance


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


class BatchParallel(nn.Module):
    """Run ``module`` on slices of the batch in parallel threads of one intra-op thread each.

    On CPU, torch splits every op over its OpenMP threads, which meet at a barrier after each
    op; when other processes share the cores, a barrier waits for a descheduled thread and the
    two-thread forward ran 2x slower than two one-thread forwards of half the batch each
    (TinyViT-21M, 224 px, batch 8). Images are independent, so slices of at most
    ``MAX_CHUNK`` images go to ``workers`` threads (default: torch's thread count) that take
    the next slice when done. Batches of one image, other devices and dtypes, and a single
    thread run ``module`` directly. Outputs (a tensor or a tuple of them) are concatenated.
    """

    def __init__(self, module: nn.Module, workers: int | None = None):
        super().__init__()
        self.module = module
        self.workers = workers

    def forward(self, x: torch.Tensor):
        workers = min(self.workers or torch.get_num_threads(), x.shape[0])
        if workers < 2 or not _fast_cpu(x):
            return self.module(x)
        chunk = min(MAX_CHUNK, math.ceil(x.shape[0] / workers))
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(part: torch.Tensor):
            # grad mode is per thread: the workers take the caller's
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return self.module(part)

        return _concat(list(_pool(workers).map(run, x.split(chunk))))


# --------------------------------------------------------------------------- backends
BACKENDS = ("auto", "torch", "onnxruntime")


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(requested: str, device: torch.device | str, tinyvit: bool = True,
                    batch_size: int = 2) -> str:
    """The runtime of CPU feature extraction: 'torch' (this fast path, batches split over
    :class:`BatchParallel` threads) or 'onnxruntime' (the model exported by
    :mod:`tinyvit_backbone.export`, run by ONNX Runtime).

    ``auto`` follows the measurements in the module docstring: torch wherever a batch holds
    two images or more, onnxruntime (when installed, on the CPU, for TinyViT) for single
    images, which torch can only split over OpenMP threads. An explicit 'onnxruntime' is
    refused, with the fix, where it cannot run: another device than the CPU, a model other
    than TinyViT, or ONNX Runtime not installed."""
    if requested not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    device = torch.device(device)
    if requested == "torch":
        return "torch"
    if requested == "auto":
        fits = device.type == "cpu" and tinyvit and batch_size < 2
        return "onnxruntime" if fits and onnxruntime_available() else "torch"
    if device.type != "cpu":
        raise ValueError(f"--backend onnxruntime runs on the CPU, but the device is {device}: "
                         "add --device cpu, or use --backend torch")
    if not tinyvit:
        raise ValueError("--backend onnxruntime exports TinyViT models only; use --backend torch "
                         "for timm models")
    from .export import require_onnxruntime
    require_onnxruntime()
    return "onnxruntime"


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(x)


class FusedConv(nn.Module):
    """A biased conv (BatchNorm folded in) with an optional GELU.

    On CPU, a 1x1 conv on channels_last input is one GEMM on the (pixels, channels) view of the
    same memory (MKL, no copy); other convs run through oneDNN, the GELU as its post-op."""

    def __init__(self, conv: nn.Conv2d, gelu: bool, to_channels_last: bool = False):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.gelu = gelu
        self.to_channels_last = to_channels_last
        self.pointwise = (conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                          and conv.padding == (0, 0) and conv.groups == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fast_cpu(x):
            x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                         self.groups)
            return F.gelu(x) if self.gelu else x
        if self.to_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.pointwise and x.is_contiguous(memory_format=torch.channels_last):
            b, c, h, w = x.shape
            out = torch.addmm(self.bias, x.permute(0, 2, 3, 1).reshape(-1, c),
                              self.weight.view(-1, c).t())
            if self.gelu:
                _gelu_(out)
            return out.view(b, h, w, -1).permute(0, 3, 1, 2)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "gelu" if self.gelu else "none", [None] if self.gelu else [],
            "none" if self.gelu else "")


class FastMBConv(nn.Module):
    """timm's ``MBConv`` (1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU), with the
    residual added inside the last GEMM and the GELUs in place."""

    def __init__(self, block: MBConv):
        super().__init__()
        self.conv1 = FusedConv(_fused_convnorm(block.conv1), gelu=True)
        self.conv2 = FusedConv(_fused_convnorm(block.conv2), gelu=True)
        self.conv3 = FusedConv(_fused_convnorm(block.conv3), gelu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        if not (_fast_cpu(x) and y.is_contiguous(memory_format=torch.channels_last)
                and x.is_contiguous(memory_format=torch.channels_last)):
            return F.gelu(self.conv3(y) + x)
        b, c, h, w = x.shape
        out = torch.addmm(x.permute(0, 2, 3, 1).reshape(-1, c),
                          y.permute(0, 2, 3, 1).reshape(-1, y.shape[1]),
                          self.conv3.weight.view(c, -1).t())
        out += self.conv3.bias
        return _gelu_(out).view(b, h, w, c).permute(0, 3, 1, 2)


class FastTinyVitBlock(nn.Module):
    """timm's ``TinyVitBlock`` (input / output BHWC) with the rewrites of the module docstring."""

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
        self.local_conv = FusedConv(_fused_convnorm(block.local_conv), gelu=False)
        self.mlp_norm = _fold_layernorm(block.mlp.norm, block.mlp.fc1)
        self.fc1, self.fc2 = block.mlp.fc1, block.mlp.fc2

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
            qkv = F.linear(tokens, self.qkv.weight).view(b, h, w, dim)
            qkv = F.pad(qkv, (0, 0, 0, pad_r, 0, pad_b))
            qkv = qkv.add_(self.qkv.bias) if fast else qkv + self.qkv.bias
        elif fast:
            qkv = torch.addmm(self.qkv.bias, tokens, self.qkv.weight.t())
        else:
            qkv = F.linear(tokens, self.qkv.weight, self.qkv.bias)
        # (b, nh, ws, nw, ws, heads, d) -> (b, nh, nw, heads, ws, ws, d): windows and heads
        # become the batch of the attention matmuls
        qkv = qkv.view(b, nh, ws, nw, ws, heads, dim // heads).permute(0, 1, 3, 5, 2, 4, 6)
        return qkv.reshape(b * nh * nw * heads, ws * ws, dim // heads)

    def _attention(self, tokens: torch.Tensor, b: int, h: int, w: int, fast: bool) -> torch.Tensor:
        """Window attention of normed tokens (b*h*w, C) -> (b*h*w, heads * val_dim)."""
        general = exporting()
        ws, heads, kd = self.window_size, self.num_heads, self.key_dim
        nh, nw = (h + ws - 1) // ws, (w + ws - 1) // ws
        qkv = self._qkv_windows(tokens, b, h, w, fast, general)
        # slices of one tensor: the matmuls read them in place (row stride = per-head qkv)
        q, k, v = qkv[..., :kd], qkv[..., kd:2 * kd], qkv[..., 2 * kd:]
        n = ws * ws
        if tokens.is_cuda:
            out = F.scaled_dot_product_attention(
                q.view(-1, heads, n, kd), k.view(-1, heads, n, kd), v.view(-1, heads, n, self.val_dim),
                attn_mask=self.attn_bias, scale=1.0).view(-1, n, self.val_dim)
        elif fast:
            attn = torch.bmm(q, k.transpose(1, 2))
            attn.view(-1, heads, n, n).add_(self.attn_bias)
            out = torch.bmm(torch.ops.aten._softmax.out(attn, -1, False, out=attn), v)
        else:
            attn = torch.matmul(q, k.transpose(1, 2)).view(-1, heads, n, n) + self.attn_bias
            out = torch.matmul(attn.softmax(dim=-1).view(-1, n, n), v)
        dim = heads * self.val_dim
        # (b, nh, nw, heads, ws, ws, d) -> (b, nh, ws, nw, ws, heads, d): back to the image
        out = out.view(b, nh, nw, heads, ws, ws, self.val_dim).permute(0, 1, 4, 2, 5, 3, 6)
        out = out.reshape(b, nh * ws, nw * ws, dim)
        if general or nh * ws != h or nw * ws != w:
            out = out[:, :h, :w]
        return out.reshape(-1, dim)

    # ---------------------------------------------------------------- block
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        fast = _fast_cpu(x)
        tokens = x.reshape(-1, c)
        attended = self._attention(self.norm(tokens), b, h, w, fast)
        if fast:
            x = torch.addmm(tokens, attended, self.proj.weight.t())
            x += self.proj.bias
        else:
            x = tokens + self.proj(attended)
        # BHWC -> BCHW view of channels_last memory: the depthwise conv reads it without a copy
        x = self.local_conv(x.view(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        tokens = x.reshape(-1, c)
        normed = self.mlp_norm(tokens)
        if fast:
            hidden = _gelu_(torch.addmm(self.fc1.bias, normed, self.fc1.weight.t()))
            out = torch.addmm(tokens, hidden, self.fc2.weight.t())
            out += self.fc2.bias
        else:
            out = tokens + self.fc2(F.gelu(self.fc1(normed)))
        return out.view(b, h, w, c)


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


def _fuse_conv_chain(module: nn.Module, convs_with_act: list[tuple[str, str | None]],
                     first_to_channels_last: bool = False) -> None:
    """Replace ``module.<conv>`` by a fused conv and its ``module.<act>`` by Identity."""
    for i, (conv_name, act_name) in enumerate(convs_with_act):
        conv = _fused_convnorm(getattr(module, conv_name))
        setattr(module, conv_name, FusedConv(conv, gelu=act_name is not None,
                                             to_channels_last=first_to_channels_last and i == 0))
        if act_name is not None:
            setattr(module, act_name, nn.Identity())


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
        if isinstance(module, (PatchEmbed, PatchMerging)) and isinstance(module.conv1, FusedConv):
            continue  # a module fused before, inside a model that is not marked (a wrapper)
        if isinstance(module, PatchEmbed):
            _fuse_conv_chain(module, [("conv1", "act"), ("conv2", None)], first_to_channels_last=True)
        elif isinstance(module, PatchMerging):
            _fuse_conv_chain(module, [("conv1", "act1"), ("conv2", "act2"), ("conv3", None)])
        elif isinstance(module, nn.Sequential):
            for i, child in enumerate(module):
                if isinstance(child, TinyVitBlock):
                    module[i] = FastTinyVitBlock(child)
                elif isinstance(child, MBConv):
                    module[i] = FastMBConv(child)
    model.is_fused = True
    return model
