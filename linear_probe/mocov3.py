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
  top-1 (and top-5, mean per-class). What the record reports (``metrics``, the number the
  paper's table takes) is what ``main_lincls.py`` reports: ``best_acc1``, the best epoch's
  top-1, with that epoch's other metrics; and, as it saves ``model_best``, that epoch's head
  is kept beside the checkpoint (``model_best.pth``). The last epoch's metrics stand beside it
  in the record (``last``), with the whole history.

``--augment device`` (opt-in; records and run keys say so) moves the augmentation's pixel work
to the compute device: the loader only reads the JPEG bytes and draws each image's crop box and
flip exactly as the PIL pipeline does; the device decodes them (nvJPEG on a GPU), crops,
resizes bilinearly with antialiasing and flips. Same boxes, same flips, same interpolation;
only the decoder's and the resize kernel's rounding differ (the README gives the top-1
difference on the digits). The paper's numbers come from the default PIL pipeline.

The backbone being frozen and deterministic in eval mode, the evaluation images give the same
features every epoch; they are extracted once into the feature cache (same preprocessing, same
precision) and every epoch's evaluation is a matrix product — the numbers ``validate()`` would
compute, without a pass over the test set per epoch.

Runtime. Everything runs in float32, as ``main_lincls.py`` does; ``--amp`` opts in to a
bfloat16 frozen forward (the head stays float32), recorded as ``amp``. The training images
are decoded and augmented by persistent loader workers (on a GPU every core but one, see
:func:`loader_workers`), copied from pinned memory without blocking, and the step never waits
for the GPU (the losses are read once per epoch). Measured on a CPU with TinyViT-21M at
224 px on JPEG files, the loop runs at the raw frozen forward's speed (the README's table). Under ``torchrun`` (NCCL on GPUs, gloo on CPUs; the head is wrapped in
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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .recipes import MOCOV3_RECIPE, MoCoV3Recipe

CHECKPOINT_FORMAT = 1
BEST_NAME = "model_best.pth"  # the best epoch's head, beside checkpoint.pth


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


def training_loader(data, sampler: EpochSampler, workers: int, device: torch.device,
                    collate_fn=None) -> DataLoader:
    """The training images, decoded and augmented by ``workers`` persistent processes (0: in
    this process, each epoch then wrapped in a prefetch thread)."""
    return DataLoader(data, batch_sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers else None, collate_fn=collate_fn)


# --------------------------------------------------------------------------- device augmentation
AUGMENTATIONS = ("pil", "device")  # the paper's pipeline (default) | decode + crop on the device
JPEG_SUFFIXES = (".jpg", ".jpeg")


def image_file(base, i: int) -> str | None:
    """The file row ``i`` of ``base`` is read from unchanged, where the dataset lists it
    (ImageFolder's samples; torchvision's Flowers, Pets and Cars lists; the registry's CSV
    sets when they do not resize on load), through Subset and ConcatDataset; else None."""
    import bisect

    from torch.utils.data import ConcatDataset, Subset

    while True:
        if isinstance(base, Subset):
            base, i = base.dataset, int(base.indices[i])
        elif isinstance(base, ConcatDataset):
            part = bisect.bisect_right(base.cumulative_sizes, i)
            i -= base.cumulative_sizes[part - 1] if part else 0
            base = base.datasets[part]
        else:
            break
    if getattr(base, "resize", None):  # CSV sets that shrink on load: not the file's pixels
        return None
    for name in ("samples", "_samples"):
        items = getattr(base, name, None)
        if isinstance(items, list) and len(items) == len(base):
            return str(items[i][0])
    for name in ("files", "_image_files", "_images"):
        items = getattr(base, name, None)
        if isinstance(items, list) and len(items) == len(base):
            return str(items[i])
    return None


class DrawnAugmentation(Dataset):
    """The MoCo v3 train augmentation's draws without its pixel work, for ``--augment device``.

    Key ``(epoch, i)`` gives ``(image, box, flip, target)``: ``box`` = (top, left, height,
    width) of RandomResizedCrop and ``flip`` are drawn exactly as
    :class:`~linear_probe.preprocessing.SeededAugmentation` draws them for the PIL pipeline
    (the same seed per image and epoch, the same ``get_params``, the same order), so both
    pipelines crop the same boxes and flip the same images. ``image`` is the file's bytes when
    it is a JPEG file (decoded later, on the device), else its RGB pixels, uint8 (3, H, W)."""

    def __init__(self, base, seed: int, scale: tuple[float, float], ratio: tuple[float, float]):
        from .loaders import dataset_labels

        self.base, self.seed, self.scale, self.ratio = base, int(seed), tuple(scale), tuple(ratio)
        self.targets = dataset_labels(base)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        import torchvision.transforms as T
        from torchvision.transforms.functional import pil_to_tensor

        from .preprocessing import ToRGB, augmentation_seed

        epoch, i = key
        path = image_file(self.base, int(i))
        if path is not None and path.lower().endswith(JPEG_SUFFIXES):
            from PIL import Image
            from torchvision.io import read_file

            with Image.open(path) as img:  # the header only: the size the crop is drawn for
                width, height = img.size
            image = read_file(path)
        else:
            image = pil_to_tensor(ToRGB()(self.base[int(i)][0]))
            height, width = image.shape[-2:]
        torch.default_generator.manual_seed(augmentation_seed(self.seed, int(epoch), int(i)))
        box = T.RandomResizedCrop.get_params(torch.empty(1).expand(3, height, width), self.scale,
                                             self.ratio)
        flip = bool(torch.rand(1) < 0.5)
        return image, tuple(int(v) for v in box), flip, int(self.targets[int(i)])


def _as_list(batch):
    return batch


def augment_on_device(batch: list, size: int, device: torch.device,
                      interpolation=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (B, 3, size, size), labels) on ``device`` from :class:`DrawnAugmentation`
    items: JPEG bytes decoded there (``torchvision.io.decode_jpeg``, nvJPEG on a GPU), each
    image cropped to its box and resized with antialiasing by ``interpolation`` (the PIL
    pipeline's RandomResizedCrop's: bilinear), then flipped where drawn."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import InterpolationMode

    interpolation = interpolation or InterpolationMode.BILINEAR
    encoded = [item[0] for item in batch if item[0].dim() == 1]
    decoded = iter(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device) if encoded else [])
    out = []
    for image, (top, left, height, width), flip, _ in batch:
        image = next(decoded) if image.dim() == 1 else image.to(device, non_blocking=True)
        crop = TF.resized_crop(image, top, left, height, width, [size, size],
                               interpolation=interpolation, antialias=True)
        out.append(crop.flip(-1) if flip else crop)
    labels = torch.tensor([item[3] for item in batch], device=device)
    return torch.stack(out), labels


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
                on_step: Callable[[int, torch.Tensor], None] | None = None) -> tuple[float, int]:
    """One epoch over ``batches`` of (uint8 images, labels): frozen forward (under autocast
    when ``amp_dtype`` is given), head step in float32. Returns (sum of this process's losses x
    world / global size, images). ``on_step(images, loss)`` gets the step's detached loss as a
    tensor: reading it would wait for the GPU, so the epoch itself reads the losses once."""
    from tinyvit_backbone.device import autocast

    total, seen = torch.zeros((), device=device), 0
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
        # no float() here: a host sync per step would stall the next batch's copy and forward
        total += loss.detach()
        seen += len(labels)
        if on_step is not None:
            on_step(len(labels), loss.detach())
    return float(total), seen


def loader_workers(n: int, device: torch.device, requested: int | None = None) -> int:
    """Training loader processes: ``requested``, else on a GPU every core this process may
    use but one (shared among the processes of a torchrun node) — the workers persist for
    all 90 epochs, so their start is paid once, and one decoding thread would feed a GPU's
    frozen forward several times too slowly even on a small set — and on a CPU the
    extraction's rule (none under 4,096 images: a prefetch thread then decodes beside the
    forward)."""
    import os

    from .extract import default_workers

    if requested is not None:
        return int(requested)
    if device.type == "cuda":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 2
        return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) - 1)
    return default_workers(n, cap=None)


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


@dataclass
class ProbeRun:
    """What one probe run works with: its data, evaluation features, device and identity."""

    spec: object
    info: object
    settings: object
    recipe: MoCoV3Recipe
    seed: int
    env: object
    device: torch.device
    amp: torch.dtype | None
    size: int
    train: object  # the raw train split
    train_prep: object
    evaluation: object  # the Extraction of the evaluation features
    test_features: torch.Tensor
    test_labels: np.ndarray
    num_classes: int
    parts: dict
    key: str
    checkpoint: Path
    augment: str = "pil"


def prepare_run(spec, info, settings, recipe: MoCoV3Recipe, seed: int, work_dir,
                augment: str = "pil") -> ProbeRun:
    """Join the process group, open the train split, extract the evaluation features (rank 0
    first; the others then read them from the cache) and name the run by its settings."""
    from tinyvit_backbone.distributed import barrier, init_distributed
    from tinyvit_backbone.fingerprint import dataset_fingerprint

    from .device import autocast_dtype, select_device
    from .extract import input_config
    from .loaders import dataset_labels, load_split
    from .preprocessing import mocov3_train_preprocessing
    from .results import MOCOV3
    from .settings import run_dir

    if augment not in AUGMENTATIONS:
        raise ValueError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
    if info.train_split is None or info.test_split is None or info.multilabel:
        raise ValueError(f"{info.name} has no single-label train / test split (splits: "
                         f"{list(info.splits)}); the MoCo v3 probe needs one")
    device = select_device(settings.device)
    env = init_distributed(device)
    amp = autocast_dtype(device, settings.amp)
    data_config = input_config(spec, info, settings.image_size)
    size = int(data_config["input_size"][-1])
    train_prep = mocov3_train_preprocessing(data_config)
    train = load_split(info, info.train_split, settings.data_root, size)
    evaluation = None
    for turn in ("main", "others"):
        if (turn == "main") == env.is_main:
            evaluation = settings.extract(spec, info.name, [info.test_split],
                                          preprocessing="mocov3-eval")
        barrier(env)
    test = evaluation.splits[info.test_split]
    num_classes = max(int(dataset_labels(train).max()) + 1, len(test.classes or ()))
    amp_name = str(amp).replace("torch.", "") if amp else "fp32"
    parts = {"model": spec.key_parts(), "dataset": info.name, "train_split": info.train_split,
             "dataset_fingerprint": dataset_fingerprint(train), "train": train_prep.description,
             "eval": evaluation.transform, "feature_layer": settings.feature_layer,
             "recipe": asdict(recipe), "seed": seed, "amp": amp_name}
    if augment != "pil":  # other pixels, another run; the paper's pipeline keeps its old key
        parts["augment"] = augment
    folder, key = run_dir(work_dir, MOCOV3, info.name, parts)
    return ProbeRun(spec, info, settings, recipe, seed, env, device, amp, size, train, train_prep,
                    evaluation, torch.from_numpy(np.array(test.features, np.float32)),
                    np.asarray(test.labels), num_classes, parts, key, folder / "checkpoint.pth",
                    augment)


def restore(run: ProbeRun, head: nn.Module, optimizer, log) -> list[dict]:
    """The history of the epochs already done (head and optimiser loaded from the checkpoint),
    or [] for a fresh run."""
    state = _load_checkpoint(run.checkpoint, run.key)
    if state is None:
        return []
    head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    log(f"mocov3 {run.info.name}: resuming after epoch {len(state['history'])} of "
        f"{run.recipe.epochs} from {run.checkpoint}")
    return list(state["history"])


def train_epochs(run: ProbeRun, extractor: nn.Module, head: nn.Module, optimizer,
                 history: list[dict], log) -> tuple[float, int, int]:
    """The remaining epochs: train, evaluate, checkpoint (rank 0), each in turn. Appends to
    ``history``; returns (training seconds, images seen over all processes, workers)."""
    from tinyvit_backbone.distributed import barrier
    from tinyvit_backbone.files import atomic_torch_save
    from tinyvit_backbone.progress import progress_bar

    from .extract import prefetched
    from .preprocessing import SeededAugmentation

    env, recipe, device = run.env, run.recipe, run.device
    trained = head
    if env.distributed:
        trained = nn.parallel.DistributedDataParallel(
            head, device_ids=[device.index] if device.type == "cuda" else None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    n = len(run.train)
    workers = loader_workers(n, device, run.settings.workers)
    sampler = EpochSampler()
    if run.augment == "device":
        import torchvision.transforms as T
        crop = next(t for t in run.train_prep.transform.transforms
                    if isinstance(t, T.RandomResizedCrop))  # its scale, ratio, interpolation
        data = DrawnAugmentation(run.train, run.seed, crop.scale, crop.ratio)
        loader = training_loader(data, sampler, workers, device, collate_fn=_as_list)

        def batches():
            return (augment_on_device(items, run.size, device, crop.interpolation)
                    for items in loader)
    else:
        data = SeededAugmentation(run.train, run.train_prep.transform, run.seed)
        loader = training_loader(data, sampler, workers, device)

        def batches():
            return loader
    steps = len(epoch_batches(n, recipe.batch_size, 0, run.seed, env.rank, env.world_size))
    start = len(history)
    bar = progress_bar(total=recipe.epochs * steps, initial=start * steps, unit="step",
                       desc=f"mocov3 {run.info.name}",
                       enabled=run.settings.progress is not False and env.is_main)
    train_s, images = 0.0, 0
    try:
        for epoch in range(start, recipe.epochs):
            lr = recipe.lr_at(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            plan = epoch_batches(n, recipe.batch_size, epoch, run.seed, env.rank, env.world_size)
            sampler.set(plan, epoch)
            t0 = time.perf_counter()
            loss_sum, _ = train_epoch(extractor, trained, optimizer,
                                      batches() if workers else prefetched(batches()),
                                      [g for _, g in plan], run.train_prep.normalise, device,
                                      run.amp, env.world_size, on_step=lambda n, loss: bar.update(1))
            train_s += time.perf_counter() - t0
            images += sum(g for _, g in plan)
            if not env.is_main:
                history.append({"epoch": epoch + 1})
            else:
                metrics = evaluate_head(head, run.test_features, run.test_labels)
                history.append({"epoch": epoch + 1, "lr": lr,
                                "train_loss": loss_sum / max(1, len(plan)),
                                "top1": metrics["top1"], "metrics": metrics})
                best = best_epoch(history)
                bar.set_postfix(epoch=epoch + 1, top1=f"{metrics['top1']:.2f}")
                log(f"mocov3 {run.info.name}: epoch {epoch + 1}/{recipe.epochs} lr {lr:.4g} loss "
                    f"{history[-1]['train_loss']:.4f} top-1 {metrics['top1']:.2f} (best "
                    f"{best['top1']:.2f} at epoch {best['epoch']})")
                if best is history[-1]:  # main_lincls.py's is_best: save model_best
                    atomic_torch_save(run.checkpoint.with_name(BEST_NAME), {
                        "format": CHECKPOINT_FORMAT, "key": run.key, "epoch": epoch + 1,
                        "top1": metrics["top1"], "head": head.state_dict()})
                atomic_torch_save(run.checkpoint, {
                    "format": CHECKPOINT_FORMAT, "key": run.key, "settings": run.parts,
                    "epoch": epoch + 1, "head": head.state_dict(),
                    "optimizer": optimizer.state_dict(), "history": history})
            barrier(env)
    finally:
        bar.close()
    return train_s, images, workers


def best_epoch(history: list[dict]) -> dict:
    """The epoch ``main_lincls.py`` reports: the highest top-1, the earliest on a tie (it
    updates ``best_acc1`` only on a strictly higher value)."""
    return max(history, key=lambda h: h["top1"])


def probe_record(run: ProbeRun, head: nn.Module, history: list[dict], resumed_from: int,
                 timings: dict, **extra) -> dict:
    """The result record: ``metrics`` of the best epoch (``best_acc1``, what the paper's table
    takes), the last epoch's beside it (``last``), and the history."""
    from .results import MOCOV3, make_record
    from .settings import base_fields

    if history:
        best, last = best_epoch(history), history[-1]
    else:  # no epoch trained (0 epochs asked): the initial head
        best = last = {"epoch": 0, "metrics": evaluate_head(head, run.test_features,
                                                             run.test_labels)}
    return make_record(
        **base_fields("linear_probe", MOCOV3, run.spec, run.settings, "top1",
                      dataset=run.info.name, image_size=run.size,
                      feature_dim=int(run.test_features.shape[1]),
                      preprocessing=run.evaluation.transform, cache_hit=None),
        split_sizes={"train": len(run.train), "val": 0, "test": int(len(run.test_labels))},
        seed=int(run.seed), weight_decay=run.recipe.weight_decay, metrics=best["metrics"],
        timings=timings, recipe=asdict(run.recipe), lr=run.recipe.lr, schedule="cosine per epoch",
        train_preprocessing=run.train_prep.description, num_classes=run.num_classes,
        reported="best_acc1 (main_lincls.py): the best epoch's top-1",
        best={"top1": best["metrics"]["top1"], "epoch": best["epoch"]},
        last={"top1": last["metrics"]["top1"], "epoch": last["epoch"], "metrics": last["metrics"]},
        history=[{k: h[k] for k in ("epoch", "lr", "train_loss", "top1")} for h in history],
        resumed_from_epoch=resumed_from, world_size=run.env.world_size, device=str(run.device),
        amp=run.parts["amp"], augment=run.augment, checkpoint=str(run.checkpoint),
        model_best=str(run.checkpoint.with_name(BEST_NAME)) if history else None, **extra)


def run_mocov3(model, dataset: str, *, recipe: MoCoV3Recipe = MOCOV3_RECIPE, seed: int = 0,
               settings=None, work_dir=None, output=None, augment: str = "pil",
               log: Callable[[str], None] | None = None) -> dict | None:
    """Train and score a MoCo v3 linear probe of ``model`` on ``dataset`` (module docstring).

    ``augment='device'`` (opt-in, not the paper's pipeline) decodes the JPEG files and crops
    and flips the training images on the compute device, with the PIL pipeline's boxes, flips
    and interpolation (:class:`DrawnAugmentation`). Returns the record on rank 0 (also
    appended to ``output``), None on the other processes."""
    from .backbones import build_extractor
    from .registry import dataset_spec
    from .results import append_jsonl
    from .settings import FeatureSettings, as_model_spec

    t_start = time.perf_counter()
    settings = settings or FeatureSettings()
    log = log or _stderr
    run = prepare_run(as_model_spec(model), dataset_spec(dataset), settings, recipe, seed, work_dir,
                      augment)
    # eval mode throughout: batch-norm statistics are part of the pretrained model
    extractor = build_extractor(run.spec, settings.feature_layer, run.device).eval()
    head = init_head(int(run.test_features.shape[1]), run.num_classes, seed,
                     recipe.init_std).to(run.device)
    optimizer = torch.optim.SGD(head.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    history = restore(run, head, optimizer, log)
    resumed_from = len(history)
    train_s, images, workers = train_epochs(run, extractor, head, optimizer, history, log)
    if not run.env.is_main:
        return None
    record = probe_record(run, head, history, resumed_from,
                          {"extract_s": run.evaluation.extract_s, "fit_s": train_s,
                           "total_s": time.perf_counter() - t_start},
                          workers=workers, images_per_s=images / train_s if train_s else None)
    if output:
        append_jsonl(output, [record])
    return record
