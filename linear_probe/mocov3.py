"""MoCo v3's linear-probe protocol (facebookresearch/moco-v3 ``main_lincls.py``), the one
behind the paper's Table 5 linear-probe numbers.

* The backbone is frozen and stays in eval mode (batch-norm statistics are part of the
  pretrained model and must not move); a new linear layer reads its pooled features, with
  weights drawn from N(0, 0.01^2) and a zero bias.
* SGD on that layer only: momentum 0.9, weight decay 0, lr = 0.1 x batch / 256 with a batch
  of 1024 images (over all processes), cosine-annealed per epoch
  (lr_e = lr x (1 + cos(pi e / 90)) / 2), 90 epochs, cross-entropy.
* Every training image is augmented afresh in every epoch — ``RandomResizedCrop(224)`` and a
  horizontal flip — and goes through the frozen backbone at every step: no feature cache.
* Evaluation after every epoch, as ``main_lincls.py`` does: resize 256, centre crop 224,
  top-1 (and top-5, mean per-class). The record keeps the last epoch's metrics and the best
  epoch's top-1 (``main_lincls.py``'s ``best_acc1``) with the whole history.

The backbone being frozen and deterministic in eval mode, the evaluation images give the same
features every epoch; they are extracted once into the feature cache (same preprocessing, same
precision) and every epoch's evaluation is a matrix product — the numbers ``validate()`` would
compute, without a pass over the test set per epoch.

Runtime. The backbone's forward runs under AMP where the device policy says so (bf16 on CUDA),
the head in float32. Under ``torchrun`` (NCCL on GPUs, gloo on CPUs; the head is wrapped in
DDP) each global batch of the epoch's seeded permutation is split across the processes and
each process's loss is scaled so that DDP's gradient average is the global batch's mean: the
result does not depend on the number of processes, up to float summation order. (An epoch's
last global batch is dropped when it has fewer images than there are processes.) Augmentation
draws are seeded per image and epoch (:class:`linear_probe.preprocessing.SeededAugmentation`).
After every epoch, rank 0 writes the head, the optimiser state and the history atomically to
``<work-dir>/mocov3/<dataset>/<key>/checkpoint.pth``; rerunning the same command resumes after
the last finished epoch (the key covers every setting, so other settings start afresh). One
progress bar over all steps shows the ETA; a log line per epoch gives loss, lr and top-1.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .recipes import MOCOV3_RECIPE, MoCoV3Recipe

CHECKPOINT_FORMAT = 1


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0,
                  world: int = 1) -> list[tuple[list[int], int]]:
    """This process's share of every global batch of ``epoch``: [(row indices, global batch
    size), ...]. The epoch's order is a permutation seeded by (seed, epoch); process ``rank``
    takes every ``world``-th image of each global batch."""
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    batches = []
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]
        if len(batch) < world:  # every process needs an image in every step
            break
        batches.append((batch[rank::world].tolist(), len(batch)))
    return batches


class EpochSampler:
    """Batch sampler of the training DataLoader: the current epoch's batches as ``(epoch, row)``
    keys of :class:`~linear_probe.preprocessing.SeededAugmentation`, replaced before each epoch
    by :meth:`set` (it runs in the main process), so the workers persist across epochs."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def set(self, plan: list[tuple[list[int], int]], epoch: int) -> None:
        self.batches = [[(epoch, i) for i in rows] for rows, _ in plan]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def training_loader(data, sampler: EpochSampler, workers: int, device: torch.device) -> DataLoader:
    """The training images, decoded and augmented by ``workers`` persistent processes (0: in
    this process, each epoch then wrapped in a prefetch thread)."""
    return DataLoader(data, batch_sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers else None)


def init_head(dim: int, num_classes: int, seed: int, std: float = 0.01) -> nn.Linear:
    """The new linear layer: weights N(0, std^2), bias 0, drawn from ``seed``."""
    head = nn.Linear(dim, num_classes)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        head.weight.normal_(0.0, std, generator=generator)
        head.bias.zero_()
    return head


def train_epoch(extractor: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer,
                batches, global_sizes: list[int], normalise: Callable, device: torch.device,
                amp_dtype: torch.dtype | None, world: int,
                on_step: Callable[[int, float], None] | None = None) -> tuple[float, int]:
    """One epoch over ``batches`` of (uint8 images, labels): frozen forward under AMP, head
    step in float32. Returns (sum of this process's losses x world / global size, images)."""
    from tinyvit_backbone.device import autocast

    total, seen = 0.0, 0
    for (images, labels), global_size in zip(batches, global_sizes):
        images = normalise(images.to(device, non_blocking=True))
        labels = labels.to(device, non_blocking=True)
        with torch.no_grad(), autocast(device, amp_dtype):
            features = extractor(images)
        logits = head(features.float())
        # DDP averages the processes' gradients; scaling each process's sum by
        # world / global size makes that average the gradient of the global batch's mean loss
        loss = F.cross_entropy(logits, labels, reduction="sum") * (world / global_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        seen += len(labels)
        if on_step is not None:
            on_step(len(labels), float(loss.detach()))
    return total, seen


def evaluate_head(head: nn.Module, features: torch.Tensor, labels) -> dict[str, float]:
    """Metrics (percent) of ``head`` on the evaluation features (n, d), float32 on the CPU."""
    from .metrics import compute_metrics
    with torch.no_grad():
        scores = features @ head.weight.detach().float().cpu().T + head.bias.detach().float().cpu()
    return compute_metrics(scores, labels)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _load_checkpoint(path, key: str) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file: say so, never guess
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); delete it to "
                         "start this run afresh") from None
    if state.get("format") != CHECKPOINT_FORMAT or state.get("key") != key:
        raise ValueError(f"{path} belongs to other settings (key {state.get('key')!r}, expected "
                         f"{key!r}); delete it or use another --work-dir")
    return state


def run_mocov3(model, dataset: str, *, recipe: MoCoV3Recipe = MOCOV3_RECIPE, seed: int = 0, settings=None,
               work_dir=None, output=None, log: Callable[[str], None] | None = None) -> dict | None:
    """Train and score a MoCo v3 linear probe of ``model`` on ``dataset`` (module docstring).

    Returns the record on rank 0 (also appended to ``output``), None on the other processes."""
    from tinyvit_backbone.distributed import barrier, init_distributed
    from tinyvit_backbone.files import atomic_torch_save
    from tinyvit_backbone.fingerprint import dataset_fingerprint
    from tinyvit_backbone.progress import progress_bar

    from .backbones import build_extractor
    from .device import autocast_dtype, select_device
    from .extract import default_workers, input_config, prefetched
    from .loaders import dataset_labels, load_split
    from .preprocessing import SeededAugmentation, mocov3_train_preprocessing
    from .registry import dataset_spec
    from .results import MOCOV3, append_jsonl, make_record
    from .settings import FeatureSettings, as_model_spec, base_fields, run_dir

    t_start = time.perf_counter()
    settings = settings or FeatureSettings()
    log = log or _stderr
    spec = as_model_spec(model)
    info = dataset_spec(dataset)
    if info.train_split is None or info.test_split is None or info.multilabel:
        raise ValueError(f"{info.name} has no single-label train / test split (splits: "
                         f"{list(info.splits)}); the MoCo v3 probe needs one")
    device = select_device(settings.device)
    env = init_distributed(device)
    amp = autocast_dtype(device, settings.amp)
    data_config = input_config(spec, info, settings.image_size)
    size = int(data_config["input_size"][-1])
    train_prep = mocov3_train_preprocessing(data_config)
    raw = load_split(info, info.train_split, settings.data_root, size)
    labels = torch.from_numpy(dataset_labels(raw))
    num_classes = int(labels.max()) + 1

    # the evaluation features, extracted once (rank 0 first; the others then read the cache)
    extract_s, test = 0.0, None
    for turn in ("main", "others"):
        if (turn == "main") == env.is_main:
            ex = settings.extract(spec, info.name, [info.test_split], preprocessing="mocov3-eval")
            test, extract_s = ex.splits[info.test_split], ex.extract_s
        barrier(env)
    num_classes = max(num_classes, len(test.classes or ()))
    test_features = torch.from_numpy(np.array(test.features, np.float32))  # read once

    parts = {"model": spec.key_parts(), "dataset": info.name, "train_split": info.train_split,
             "dataset_fingerprint": dataset_fingerprint(raw), "train": train_prep.description,
             "eval": ex.transform, "feature_layer": settings.feature_layer,
             "recipe": asdict(recipe), "seed": seed,
             "amp": str(amp).replace("torch.", "") if amp else "fp32"}
    folder, key = run_dir(work_dir, MOCOV3, info.name, parts)
    checkpoint_path = folder / "checkpoint.pth"

    extractor = build_extractor(spec, settings.feature_layer, device)
    dim = int(test.features.shape[1])
    head = init_head(dim, num_classes, seed, recipe.init_std).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    history: list[dict] = []
    state = _load_checkpoint(checkpoint_path, key)
    if state is not None:
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        history = list(state["history"])
        log(f"mocov3 {info.name}: resuming after epoch {len(history)} of {recipe.epochs} "
            f"from {checkpoint_path}")
    start_epoch = len(history)
    trained = head
    if env.distributed:
        trained = nn.parallel.DistributedDataParallel(
            head, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    data = SeededAugmentation(raw, train_prep.transform, seed)
    # every spare core: the loader feeds a frozen forward, the fastest step there is
    workers = default_workers(len(raw), cap=None) if settings.workers is None else settings.workers
    sampler = EpochSampler()
    loader = training_loader(data, sampler, workers, device)
    steps = len(epoch_batches(len(raw), recipe.batch_size, 0, seed, env.rank, env.world_size))
    bar = progress_bar(total=recipe.epochs * steps, initial=start_epoch * steps, unit="step",
                       desc=f"mocov3 {info.name}", enabled=settings.progress is not False and env.is_main)
    train_s, images_seen = 0.0, 0
    try:
        for epoch in range(start_epoch, recipe.epochs):
            lr = recipe.lr_at(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            plan = epoch_batches(len(raw), recipe.batch_size, epoch, seed, env.rank, env.world_size)
            sampler.set(plan, epoch)
            batches = loader if workers else prefetched(loader)
            t0 = time.perf_counter()
            loss_sum, seen = train_epoch(extractor, trained, optimizer, batches,
                                         [g for _, g in plan], train_prep.normalise, device, amp,
                                         env.world_size, on_step=lambda n, loss: bar.update(1))
            train_s += time.perf_counter() - t0
            images_seen += sum(g for _, g in plan)
            if env.is_main:
                metrics = evaluate_head(head, test_features, test.labels)
                history.append({"epoch": epoch + 1, "lr": lr,
                                "train_loss": loss_sum / max(1, len(plan)),
                                "top1": metrics["top1"], "metrics": metrics})
                best = max(history, key=lambda h: h["top1"])
                bar.set_postfix(epoch=epoch + 1, top1=f"{metrics['top1']:.2f}")
                log(f"mocov3 {info.name}: epoch {epoch + 1}/{recipe.epochs} lr {lr:.4g} loss "
                    f"{history[-1]['train_loss']:.4f} top-1 {metrics['top1']:.2f} (best "
                    f"{best['top1']:.2f} at epoch {best['epoch']})")
                atomic_torch_save(checkpoint_path, {
                    "format": CHECKPOINT_FORMAT, "key": key, "settings": parts,
                    "epoch": epoch + 1, "head": head.state_dict(),
                    "optimizer": optimizer.state_dict(), "history": history})
            else:
                history.append({"epoch": epoch + 1})
            barrier(env)
    finally:
        bar.close()
    if not env.is_main:
        return None
    final = history[-1]["metrics"] if history else evaluate_head(head, test_features, test.labels)
    best = max(history, key=lambda h: h["top1"]) if history else {"top1": final["top1"], "epoch": 0}
    record = make_record(
        **base_fields("linear_probe", MOCOV3, spec, settings, "top1", dataset=info.name,
                      image_size=size, feature_dim=dim, preprocessing=ex.transform,
                      cache_hit=None),
        split_sizes={"train": len(raw), "val": 0, "test": int(len(test.labels))}, seed=int(seed),
        weight_decay=recipe.weight_decay, metrics=final,
        timings={"extract_s": extract_s, "fit_s": train_s,
                 "total_s": time.perf_counter() - t_start},
        recipe=asdict(recipe), lr=recipe.lr, schedule="cosine per epoch",
        train_preprocessing=train_prep.description, num_classes=num_classes,
        best={"top1": best["top1"], "epoch": best["epoch"]},
        history=[{k: h[k] for k in ("epoch", "lr", "train_loss", "top1")} for h in history],
        resumed_from_epoch=start_epoch, world_size=env.world_size, device=str(device),
        amp=parts["amp"], workers=workers,
        images_per_s=images_seen / train_s if train_s else None,
        checkpoint=str(checkpoint_path))
    if output:
        append_jsonl(output, [record])
    return record
