"""Proxy scores that rank shrinking candidates (higher is better).

The paper ranks candidates by a short training on 99% of ImageNet-1k, evaluated on the held-out
1%. ``TrainingProxy`` does the same on the project's embedded digits: a short training on part
of the digits train split, scored by top-1 accuracy (%) on the held-out rest. On 1,257 images a
1% hold-out would be 13 images (accuracy steps of 7.7 points), so the default holds out 20%.
``SnipProxy`` is the zero-cost option: one forward/backward at initialisation, no training.

At small proxy resolutions the late stage maps are smaller than the attention windows, and
timm would pad every window with zeros up to 7x7 / 14x14 (all the cost, none of the signal);
the proxy clamps each window to its stage's map, which is what a window covering the whole map
computes anyway. A proxy at low resolution therefore cannot rank window-size choices: rank
them with ``resolution=224``, or keep windows out of the search factors.

Both proxies are deterministic for a fixed ``seed``: the weights are initialised from
``seed`` before each model is built, and batches are drawn from a generator seeded by ``seed``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ..backbone import build_timm_tinyvit
from ..device import amp_dtype, select_device
from ..embedded.digits import NUM_CLASSES, DigitsDataset


@dataclass
class ProxyScore:
    score: float
    details: dict


def stage_map_sizes(resolution: int, num_stages: int = 4) -> list[int]:
    """Side of each stage's feature map for a ``resolution`` input (stem stride 4, then 2 per
    stage; every stride-2 conv uses padding 1, so sizes round up)."""
    return [math.ceil(resolution / 2 ** (2 + i)) for i in range(num_stages)]


def proxy_arch(arch: dict, resolution: int) -> dict:
    """``arch`` with each window clamped to its stage's map side at ``resolution``."""
    sizes = stage_map_sizes(resolution, len(arch["depths"]))
    out = {k: list(v) for k, v in arch.items()}
    out["window_sizes"] = [max(1, min(w, s)) for w, s in zip(arch["window_sizes"], sizes)]
    return out


@lru_cache(maxsize=4)
def _digits_tensors(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits train split as normalised float tensors (N, 3, R, R) and labels (N,)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return DigitsDataset("train", image_size=resolution).tensors(IMAGENET_DEFAULT_MEAN,
                                                                 IMAGENET_DEFAULT_STD)


def digits_split(resolution: int, holdout_fraction: float, seed: int):
    """(train_x, train_y, holdout_x, holdout_y): the digits train split cut into a training
    part and a stratified held-out part (the test split stays untouched)."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    x, y = _digits_tensors(resolution)
    train, hold = train_test_split(np.arange(len(y)), test_size=holdout_fraction,
                                   stratify=y.numpy(), random_state=seed)
    train, hold = torch.from_numpy(np.sort(train)), torch.from_numpy(np.sort(hold))
    return x[train], y[train], x[hold], y[hold]


def _build(arch: dict, resolution: int, seed: int, device: torch.device):
    torch.manual_seed(seed)
    return build_timm_tinyvit(proxy_arch(arch, resolution), num_classes=NUM_CLASSES).to(device)


@dataclass
class TrainingProxy:
    """Short training on the digits; score = held-out top-1 accuracy in %.

    Args:
        steps: optimizer steps (batches of ``batch_size``).
        batch_size: images per step.
        lr: AdamW peak learning rate (linear warmup over the first 10% of steps, then cosine).
        weight_decay: AdamW weight decay (not on norms, biases and attention biases).
        resolution: image side in pixels.
        holdout_fraction: part of the digits train split held out for the score.
        seed: initialisation, batch order and hold-out split.
        bn_images: training images whose exact BatchNorm statistics replace the running ones
            before the held-out evaluation.
        device: None / 'auto' (CUDA when available, with AMP), 'cpu', 'cuda:N'.
    """

    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    resolution: int = 32
    holdout_fraction: float = 0.2
    seed: int = 0
    device: str | None = None
    bn_images: int = 512
    name = "train"

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.resolution < 32:
            raise ValueError(f"training proxy: steps >= 1, batch_size >= 1, lr > 0 and "
                             f"resolution >= 32 needed, got {asdict(self)}")

    def settings(self) -> dict:
        return dict(proxy=self.name, **asdict(self), device_used=str(select_device(self.device)),
                    dataset="embedded digits (train split)", metric="held-out top-1 (%)")

    def __call__(self, arch: dict) -> ProxyScore:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        start = time.perf_counter()
        device = select_device(self.device)
        amp = amp_dtype(device)
        x, y, hx, hy = digits_split(self.resolution, self.holdout_fraction, self.seed)
        model = _build(arch, self.resolution, self.seed, device)
        optimizer = create_optimizer_v2(model, "adamw", lr=self.lr,
                                        weight_decay=self.weight_decay)
        scheduler = CosineLRScheduler(optimizer, t_initial=self.steps, lr_min=self.lr * 0.01,
                                      warmup_t=max(1, self.steps // 10), warmup_lr_init=self.lr * 0.01,
                                      t_in_epochs=False)
        scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(y), generator=gen)
        pos, losses = 0, []
        model.train()
        for step in range(self.steps):
            if pos + self.batch_size > len(order):
                order, pos = torch.randperm(len(y), generator=gen), 0
            idx = order[pos:pos + self.batch_size]
            pos += self.batch_size
            xb, yb = x[idx].to(device), y[idx].to(device)
            with torch.autocast(device.type, amp or torch.float32,
                                enabled=amp is not None):
                loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step_update(step + 1)
            losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"training proxy diverged for {arch} (loss {losses[-1]}); "
                                     "lower --proxy-lr")
        _recalibrate_batchnorm(model, x[: self.bn_images], device, amp)
        accuracy, holdout_loss = _evaluate(model, hx, hy, device, amp)
        return ProxyScore(score=accuracy, details=dict(
            holdout_loss=holdout_loss, final_train_loss=float(np.mean(losses[-5:])),
            seconds=time.perf_counter() - start))


@torch.no_grad()
def _recalibrate_batchnorm(model, x, device, amp_dtype, batch_size: int = 64) -> None:
    """Replace the BatchNorm running statistics by exact averages over ``x``. After a few dozen
    steps the running averages still mix in the first steps' weights, and held-out accuracy in
    eval mode falls far below what the weights can do (on the digits: 57% vs 92% after 30
    steps), which would rank candidates by how fast their statistics settle."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None):
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))


def _evaluate(model, x, y, device, amp_dtype, batch_size: int = 256) -> tuple[float, float]:
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.inference_mode(), torch.autocast(device.type, amp_dtype or torch.float32,
                                                enabled=amp_dtype is not None):
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            logits = model(xb).float()
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return 100.0 * correct / len(y), loss_sum / len(y)


@dataclass
class SnipProxy:
    """Zero-cost score: SNIP saliency (Lee et al. 2019, as a NAS proxy in Abdelfattah et al.
    2021), ``sum |w * dL/dw|`` over all weights of the freshly initialised model for one batch
    of ``batch_size`` digits. No training; a few forward/backward passes' worth of time."""

    batch_size: int = 64
    resolution: int = 32
    holdout_fraction: float = 0.2
    seed: int = 0
    device: str | None = None
    name = "snip"

    def settings(self) -> dict:
        return dict(proxy=self.name, **asdict(self), device_used=str(select_device(self.device)),
                    dataset="embedded digits (train split)", metric="sum |w * dL/dw| at init")

    def __call__(self, arch: dict) -> ProxyScore:
        start = time.perf_counter()
        device = select_device(self.device)
        x, y, _, _ = digits_split(self.resolution, self.holdout_fraction, self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(len(y), generator=gen)[: self.batch_size]
        model = _build(arch, self.resolution, self.seed, device).train()
        loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
        loss.backward()
        score = sum(float((p.detach() * p.grad).abs().sum())
                    for p in model.parameters() if p.grad is not None)
        return ProxyScore(score=score, details=dict(loss_at_init=float(loss.detach()),
                                                    seconds=time.perf_counter() - start))


PROXIES = {"train": TrainingProxy, "snip": SnipProxy}
