"""L2-regularised logistic regression on frozen features by full-batch L-BFGS.

Objective (``weight_decay`` = lambda, ``n`` rows, bias not penalised)::

    mean_i loss(x_i W + b, y_i) + lambda / 2 * ||W||_F^2

with ``loss`` the softmax cross-entropy (single-label) or the sum over classes of the sigmoid
binary cross-entropy (multi-label, one-vs-rest; entries marked -1 are ignored). This is
scikit-learn's ``LogisticRegression(penalty='l2', solver='lbfgs')`` objective divided by
``C * n``, so ``lambda = 1 / (C * n)``: :func:`weight_decay_to_C` converts.

**Features.** ``X`` is a float tensor (n, d), a batch of independent problems (E, n, d) (few-shot
episodes: one L-BFGS run solves all E at once; their objectives are separable, so the joint
optimum is every problem's optimum and the stopping test bounds every gradient), or a NumPy
array / memory map (n, d) that is never copied as a whole. Optional ``shift`` / ``scale``
(d,) standardise on the fly — ``(x - shift) / scale`` is folded into the weights instead of
materialising a standardised copy, so a 3 GB ImageNet cache is read, not duplicated. Returned
weights live in the standardised space; :meth:`LinearHead.logits` applies the same fold.

**Solver.** :func:`fit_lbfgs`: full-batch L-BFGS (torch's, strong-Wolfe line search) with the
exact gradient. The gradient is accumulated over row chunks (``chunk_rows``), so memory is
O(chunk x classes) whatever ``n`` is; an in-memory tensor on the device is one chunk when it
fits. On a GPU the features are moved to device memory once when they fit in
``device_budget_bytes`` (default: half the free memory), otherwise every function evaluation
streams the memory map chunk by chunk. Every sweep and the fast few-shot episodes use it; the
paper's protocols (MoCo v3's SGD probe, cdfsl's fine-tuning) live in :mod:`linear_probe.mocov3`
and :mod:`linear_probe.cdfsl`.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .device import cpu_threads, same_device, threads_for

DEFAULT_TOL = 1e-4  # max |gradient| at convergence: scikit-learn's default `tol` for lbfgs
DEFAULT_MAX_ITER = 1000  # the CLIP protocol's max_iter
NON_FINITE = ("the features hold NaN or Inf values, which no classifier can be fitted on; they "
              "come from broken weights: evaluate another checkpoint")


def weight_decay_to_C(weight_decay: float, n: int) -> float:
    """scikit-learn's inverse regularisation ``C`` equivalent to ``weight_decay`` on ``n`` rows."""
    return 1.0 / (weight_decay * n)


def C_to_weight_decay(C: float, n: int) -> float:
    return 1.0 / (C * n)


@dataclass
class LinearHead:
    """A fitted linear classifier. ``weight`` (d, C) or (E, d, C), ``bias`` (C,) or (E, C),
    in the standardised feature space described by ``shift`` / ``scale`` (None = raw)."""

    weight: torch.Tensor
    bias: torch.Tensor
    shift: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    n_iter: int = 0
    loss: float = float("nan")
    converged: bool = True

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias acting on raw features: ``x W' + b'`` = ``((x - shift) / scale) W + b``."""
        if self.scale is None:
            return self.weight, self.bias
        w = self.weight / self.scale[:, None]
        return w, self.bias - self.shift @ w

    @torch.no_grad()
    def logits(self, X, chunk_rows: int = 65536) -> torch.Tensor:
        """Scores (n, C) [or (E, n, C)] for raw features ``X`` (tensor or NumPy / memmap)."""
        w, b = self.effective()
        if isinstance(X, torch.Tensor) and X.dim() == 3:
            return X.to(w.device, w.dtype) @ w + b[:, None, :]
        outs = [Xc @ w + b for Xc, _ in _row_chunks(X, None, chunk_rows, w.device, w.dtype)]
        return torch.cat(outs) if outs else torch.empty(0, w.shape[-1], device=w.device)


# --------------------------------------------------------------------------- data access
def _from_numpy(a) -> torch.Tensor:
    """A tensor sharing ``a``'s memory (read-only memmaps included: nothing here writes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(a))


def _as_device_tensor(a, device, dtype) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=dtype if a.is_floating_point() else a.dtype)
    t = _from_numpy(a)
    return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)


def _row_chunks(X, y, chunk_rows: int, device, dtype) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    n = X.shape[0]
    if isinstance(X, torch.Tensor) and same_device(X.device, device) and n <= chunk_rows:
        yield X.to(dtype), (None if y is None else y.to(device))
        return
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        yc = None if y is None else _as_device_tensor(y[start:stop], device, dtype)
        yield _as_device_tensor(X[start:stop], device, dtype), yc


def default_chunk_rows(num_classes: int, dim: int, budget_bytes: int = 256 << 20) -> int:
    """Rows per chunk so that a chunk's features, logits and gradient stay near ``budget``."""
    return max(1024, budget_bytes // (4 * (dim + 3 * num_classes)))


def place_features(X, device, budget_bytes: int | None = None):
    """Move ``X`` to ``device`` once if it fits ``budget_bytes`` (default: CPU always shares the
    NumPy memory; CUDA uses half the free memory); otherwise return it to be streamed."""
    device = torch.device(device)
    if isinstance(X, torch.Tensor) and same_device(X.device, device):
        return X
    nbytes = X.shape[0] * X.shape[1] * 4
    if device.type == "cuda":
        if budget_bytes is None:
            free, _ = torch.cuda.mem_get_info(device)
            budget_bytes = free // 2
        return _as_device_tensor(X, device, torch.float32) if nbytes <= budget_bytes else X
    if isinstance(X, np.ndarray) and X.dtype == np.float32 and X.flags.c_contiguous:
        return _from_numpy(X)  # shares memory (a memmap stays on disk / page cache)
    return _as_device_tensor(X, device, torch.float32)


# --------------------------------------------------------------------------- objective
_MINUS_ONES: dict = {}


def _minus_ones(shape, device, dtype) -> torch.Tensor:
    """A cached tensor of -1 (the one-hot subtraction of the softmax gradient), built once per
    shape instead of once per function evaluation."""
    key = (tuple(shape), str(device), dtype)
    if key not in _MINUS_ONES:
        if len(_MINUS_ONES) > 64:
            _MINUS_ONES.clear()
        _MINUS_ONES[key] = torch.full(shape, -1.0, device=device, dtype=dtype)
    return _MINUS_ONES[key]


def _loss_and_grad(W, b, X, y, weight_decay, multilabel, shift, scale, chunk_rows):
    """Objective value (summed over batched problems) and its gradients wrt W and b.

    Scores are computed class-major, (C, n) per problem: the reductions over the few classes
    then run along the long axis, several times faster on CPU than row-wise softmax.
    """
    device, dtype = W.device, W.dtype
    batched = W.dim() == 3
    if scale is not None:
        w_eff = W / scale[:, None]
        b_eff = b - shift @ w_eff
    else:
        w_eff, b_eff = W, b
    n = X.shape[-2]
    loss = torch.zeros((), device=device, dtype=torch.float64)
    g_w = torch.zeros_like(W)
    g_b = torch.zeros_like(b)
    chunks = [(X, y)] if batched else _row_chunks(X, y, chunk_rows, device, dtype)
    for Xc, yc in chunks:
        Zt = w_eff.mT @ Xc.mT + b_eff.unsqueeze(-1)  # (..., C, rows)
        if multilabel:
            target = yc.mT.to(dtype)
            mask = (target >= 0).to(dtype)
            target = target.clamp(min=0)
            loss += (F.binary_cross_entropy_with_logits(Zt, target, reduction="none") * mask).sum(dtype=torch.float64)
            Gt = (torch.sigmoid(Zt) - target) * mask
        else:
            idx = yc.unsqueeze(-2)  # (..., 1, rows)
            top = Zt.amax(dim=-2, keepdim=True)
            Gt = Zt.sub(top).exp_()
            total = Gt.sum(dim=-2, keepdim=True)
            loss += (top + total.log() - Zt.gather(-2, idx)).sum(dtype=torch.float64)
            Gt.div_(total)  # softmax
            Gt.scatter_add_(-2, idx, _minus_ones(idx.shape, device, dtype))
        g_w += (Gt @ Xc).mT
        g_b += Gt.sum(dim=-1)
    loss /= n
    g_w /= n
    g_b /= n
    if scale is not None:
        # chain rule through the fold: w_eff = W / scale, b_eff = b - shift @ w_eff
        g_w = (g_w - shift[:, None] * g_b.unsqueeze(-2)) / scale[:, None]
    loss += (0.5 * weight_decay * W.double() ** 2).sum()
    g_w += weight_decay * W
    return loss, g_w, g_b


def _check_targets(y, num_classes: int | None, multilabel: bool) -> int:
    if multilabel:
        return int(y.shape[-1])
    if num_classes is None:
        num_classes = int(y.max()) + 1
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}; found {int(y.min())}..{int(y.max())}")
    return num_classes


def fit_lbfgs(
    X,
    y,
    weight_decay: float,
    *,
    num_classes: int | None = None,
    multilabel: bool = False,
    init: LinearHead | None = None,
    shift=None,
    scale=None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    history_size: int = 10,
    chunk_rows: int | None = None,
    device=None,
) -> LinearHead:
    """Minimise the module's objective with full-batch L-BFGS; returns the fitted head.

    Args:
        X: features (n, d) or (E, n, d) (tensor; or NumPy / memmap for (n, d)).
        y: int labels (n,) / (E, n); or a (n, C) matrix of 1 / 0 / -1 with ``multilabel``.
        weight_decay: lambda >= 0 (see the module docstring; ``1 / (C n)`` in sklearn terms).
        init: warm start (e.g. the solution at the neighbouring lambda of a sweep).
        shift, scale: standardisation (d,) applied on the fly. None = raw features, centred
            internally (an exact reparametrisation that only speeds up convergence).
        max_iter, tol: L-BFGS iterations and the max-|gradient| stopping threshold.
        chunk_rows: rows per gradient chunk (default: :func:`default_chunk_rows`).
        device: where to compute (default: X's device if a tensor, else CPU).
    """
    if device is None:
        device = X.device if isinstance(X, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    dtype = torch.float32
    batched = isinstance(X, torch.Tensor) and X.dim() == 3
    if batched:
        X = X.to(device, dtype)
        y = y.to(device)
        if not torch.isfinite(X).all():
            raise ValueError(NON_FINITE)
    else:
        X = place_features(X, device)
        y = _as_device_tensor(y, device, dtype)
        if not multilabel:
            y = y.long()
    C = _check_targets(y, num_classes, multilabel)
    d = X.shape[-1]
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(C, d)
    # Centring is an exact reparametrisation (the bias is not penalised, so the optimum in
    # function space is unchanged) that removes the features' common component from the
    # Hessian: ~8x fewer iterations on L2-normalised few-shot features.
    centre = None
    if batched:
        centre = X.mean(dim=1, keepdim=True)  # (E, 1, d)
        X = X - centre
    elif shift is None:
        shift, _ = standardisation(X)
        scale = torch.ones_like(shift)
    shift = None if shift is None else torch.as_tensor(shift, device=device, dtype=dtype)
    scale = None if scale is None else torch.as_tensor(scale, device=device, dtype=dtype)
    lead = (X.shape[0],) if batched else ()
    if init is not None:
        w_raw, b_raw = (t.detach().to(device, dtype) for t in init.effective())
        if w_raw.shape != (*lead, d, C):
            raise ValueError(f"warm start has weight shape {tuple(w_raw.shape)}, expected {(*lead, d, C)}")
        # the same function in this fit's coordinates
        if batched:
            W, b = w_raw.clone(), b_raw + (centre @ w_raw).squeeze(1)
        else:
            W, b = w_raw * scale[:, None], b_raw + shift @ w_raw
    else:
        W = torch.zeros(*lead, d, C, device=device, dtype=dtype)
        b = torch.zeros(*lead, C, device=device, dtype=dtype)
    W.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, max_eval=max_iter * 5 // 4,
                            tolerance_grad=tol, tolerance_change=1e-9, history_size=history_size,
                            line_search_fn="strong_wolfe")
    last = {}

    def closure():
        loss, g_w, g_b = _loss_and_grad(W.detach(), b.detach(), X, y, weight_decay, multilabel,
                                        shift, scale, chunk_rows)
        W.grad, b.grad = g_w, g_b
        last["loss"], last["gmax"] = loss, max(g_w.abs().max(), g_b.abs().max())
        return loss.to(dtype)

    with cpu_threads(threads_for(device, X.shape[-2] * d * C * (X.shape[0] if batched else 1))):
        opt.step(closure)
    n_iter = int(opt.state[W].get("n_iter", 0)) if W in opt.state else 0
    # torch's L-BFGS also stops when the loss or step stalls (float32 resolution): converged
    # then too; only running out of iterations is not.
    W, b = W.detach(), b.detach()
    if batched:  # back to raw coordinates: x W + (b - centre W)
        b = b - (centre @ W).squeeze(1)
    return LinearHead(W, b, None if batched else shift, None if batched else scale, n_iter=n_iter,
                      loss=float(last["loss"]), converged=bool(last["gmax"] <= tol or n_iter < max_iter))


def standardisation(X, chunk_rows: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (float64 accumulation, one pass; works on a memmap).
    Constant dimensions get scale 1 so they stay finite."""
    n, d = X.shape
    s = np.zeros(d, np.float64)
    ss = np.zeros(d, np.float64)
    for start in range(0, n, chunk_rows):
        c = np.asarray(X[start:start + chunk_rows], dtype=np.float64) if not isinstance(X, torch.Tensor) \
            else X[start:start + chunk_rows].double().cpu().numpy()
        s += c.sum(0)
        ss += (c * c).sum(0)
    if not (np.isfinite(s).all() and np.isfinite(ss).all()):
        raise ValueError(NON_FINITE)
    mean = s / n
    var = np.maximum(ss / n - mean * mean, 0.0)
    std = np.sqrt(var)
    std[std < 1e-6 * max(1.0, float(np.abs(mean).max(initial=0.0)))] = 1.0
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))


def l2_normalise(X: torch.Tensor) -> torch.Tensor:
    """Unit-RMS rows: ``x / ||x|| * sqrt(d)`` (L2 normalisation scaled so that entries are O(1)
    and the weight-decay grid means the same as on standardised features). No statistics are
    taken over samples, which suits few-shot (k shots are too few to estimate a std)."""
    d = X.shape[-1]
    return F.normalize(X.float(), dim=-1) * math.sqrt(d)
