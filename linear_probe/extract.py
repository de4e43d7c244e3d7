"""Run a frozen backbone over a dataset split and stream its features into the cache.

Images are decoded and preprocessed by DataLoader workers while the model runs (pinned memory
and non-blocking copies on CUDA; bfloat16 autocast only with ``--amp``); features go straight into the
cache's memory map, so memory stays flat at ImageNet scale and an interrupted run resumes from
its last checkpoint (:mod:`linear_probe.cache`).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from tinyvit_backbone.fingerprint import dataset_fingerprint
from tinyvit_backbone.progress import progress_bar

from .backbones import FeatureExtractor, ModelSpec, build_extractor
from .cache import CachedFeatures, FeatureCache, NonFiniteFeaturesError
from .device import autocast_dtype, select_device
from .loaders import check_split_classes, class_names, load_split
from .preprocessing import Preprocessed, Preprocessing, dataset_preprocessing
from .registry import DatasetSpec, dataset_spec


def default_workers(n_images: int, cap: int | None = 8) -> int:
    """DataLoader workers: none for small sets (spawning costs more than it saves; most get a
    prefetch thread instead), else one per spare core, up to ``cap`` (None: no cap)."""
    if n_images <= 4096:
        return 0
    spare = max(1, (os.cpu_count() or 2) - 1)
    return spare if cap is None else min(cap, spare)


def prefetched(batches, depth: int = 2):
    """Iterate ``batches`` (e.g. a worker-less DataLoader) in a background thread, ``depth``
    batches ahead, so that decoding the next batch overlaps the model's forward on this one.
    PIL's decode / resize and torch's kernels release the GIL, so the two really overlap; a
    thread costs nothing to start, unlike a worker process. The producer's torch ops run on one
    intra-op thread: with torch's default (one per core) the thread got an OpenMP team of its
    own beside the consumer's, and the two teams took the cores from each other. Measured on 2
    cores, fine-tuned few-shot episodes with the next episode's images prepared here: 2.5x
    slower than the same episodes without the thread, the same speed with one intra-op thread.
    Errors in the producer are raised here; leaving the loop early (break, Ctrl-C) stops the
    producer."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        torch.set_num_threads(1)  # this thread's own OpenMP team: see the docstring
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer
            put(exc)

    thread = threading.Thread(target=produce, name="extract-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _non_finite_message(feats: np.ndarray, row: int, model: str, where: str,
                        amp_dtype: torch.dtype | None) -> str:
    bad = ~np.isfinite(feats)
    rows = int(bad.any(axis=1).sum())
    first = row + int(np.flatnonzero(bad.any(axis=1))[0])
    amp = (f" If the weights are sound, the {str(amp_dtype).removeprefix('torch.')} autocast "
           "may overflow: rerun with --no-amp." if amp_dtype is not None else "")
    return (f"{model} gives non-finite features on {where}: {rows} of images {row}..."
            f"{row + len(feats) - 1} (first: image {first}) have NaN or Inf values "
            f"({int(np.isnan(feats).sum())} NaN, {int(np.isinf(feats).sum())} Inf of "
            f"{feats.size}). The weights are broken (e.g. saved from a training run that "
            f"diverged): evaluate another checkpoint. Nothing was cached as complete.{amp}")


@dataclass
class Extraction:
    """What :func:`extract_splits` produced: one cache entry per split, and the settings."""

    splits: dict[str, CachedFeatures]
    info: DatasetSpec
    image_size: int
    transform: dict
    extract_s: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)


def key_parts(spec: ModelSpec, info: DatasetSpec, split: str, dataset_fp: str, transform: dict,
              layer: str, amp: torch.dtype | None) -> dict:
    return {"model": spec.key_parts(), "dataset": info.name, "dataset_fingerprint": dataset_fp,
            "split": split, "transform": transform, "feature_layer": layer,
            "amp": str(amp).replace("torch.", "") if amp else "fp32"}


def input_config(spec: ModelSpec, info: DatasetSpec, image_size: int | None = None) -> dict:
    """The model's timm data config at ``image_size``; by default the dataset's own size for
    TinyViT (digits: 32), else the model's (TinyViT: 224; a timm model: its pretrained
    config's)."""
    if image_size is None and spec.kind == "tinyvit":
        # TinyViT takes any input size; a timm model may not (ViTs fix theirs), so it keeps
        # its own default unless --image-size says otherwise
        image_size = info.default_image_size
    return spec.data_config(image_size)


def extract_splits(
    spec: ModelSpec,
    dataset: str,
    splits: list[str],
    *,
    data_root=None,
    cache_dir=None,
    feature_layer: str = "pooled",
    image_size: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device=None,
    amp: bool | None = None,
    progress: bool = True,
    extractor: FeatureExtractor | None = None,
    backend: str = "auto",
    preprocessing: str | None = None,
) -> Extraction:
    """Cached features of ``splits`` of ``dataset`` for ``spec`` (extracting what is missing).

    The model is built only when some split is not cached (or passed in as ``extractor``,
    which must be ``spec``'s at ``feature_layer`` on ``device``: reuse one across datasets).
    ``image_size`` defaults to the dataset's own for TinyViT (digits: 32), else the model's
    (TinyViT: 224; a timm model: its pretrained config's). ``backend``: 'torch', 'onnxruntime'
    or 'auto' (:func:`tinyvit_backbone.inference.resolve_backend`); both give the same features
    within 1e-4, so the cache entry is shared. ``preprocessing`` names a style of
    :func:`linear_probe.preprocessing.eval_preprocessing` that a protocol prescribes (e.g.
    'mocov3-eval'); None = the dataset's own.
    """
    info = dataset_spec(dataset)
    device = select_device(device)
    amp_dtype = autocast_dtype(device, amp)
    if batch_size is None:
        batch_size = 256 if device.type == "cuda" else 64
    if extractor is None:
        from tinyvit_backbone.inference import resolve_backend
        backend = resolve_backend(backend, device, tinyvit=spec.kind == "tinyvit")
    data_config = input_config(spec, info, image_size)
    size = int(data_config["input_size"][-1])
    prep = _preprocessing(info, data_config, preprocessing)
    cache = FeatureCache(cache_dir)
    out: dict[str, CachedFeatures] = {}
    seconds: dict[str, float] = {}
    start_all = time.perf_counter()
    raws, load_s = {}, {}
    for split in splits:  # all first: each split's classes are checked before any extraction
        t0 = time.perf_counter()
        raws[split] = load_split(info, split, data_root, size)
        load_s[split] = time.perf_counter() - t0
        if len(raws[split]) == 0:
            raise ValueError(f"{info.name}/{split} has no images")
    _check_classes(info, raws)
    for split in splits:
        t0 = time.perf_counter() - load_s[split]
        raw = raws[split]
        parts = key_parts(spec, info, split, dataset_fingerprint(raw), prep.description, feature_layer,
                          amp_dtype)
        entry = cache.load(parts)
        if entry is None:
            with cache.lock(parts):
                entry = cache.load(parts)  # another process may have finished it meanwhile
                if entry is None:
                    if extractor is None:
                        extractor = build_extractor(spec, feature_layer, device,
                                                    backend=backend, image_size=size)
                    entry = _extract_one(extractor, cache, parts, raw, prep, info, split,
                                         batch_size, workers, device, amp_dtype, progress,
                                         _model_words(spec))
        out[split] = entry
        seconds[split] = time.perf_counter() - t0
    return Extraction(out, info, size, prep.description, time.perf_counter() - start_all, seconds)


def _check_classes(info: DatasetSpec, raws: dict) -> None:
    """Refuse a split whose class names differ from the training split's, when both are
    extracted (a reader that takes each split's classes from that split, such as DTD's or
    Food-101's split files, would otherwise number them differently)."""
    reference = class_names(raws[info.train_split]) if info.train_split in raws else None
    if reference is None or info.multilabel:
        return
    for split, raw in raws.items():
        if split != info.train_split and class_names(raw) is not None:
            check_split_classes(reference, class_names(raw), f"{info.name}/{split}",
                                f"{info.name}/{info.train_split}",
                                "the dataset's files on disk are inconsistent: download or "
                                "extract it again")


def preprocessed_batches(spec: ModelSpec, dataset: str, split: str, image_size: int | None,
                         batch_size: int) -> list[torch.Tensor]:
    """The normalised batches extraction feeds the model for ``dataset``'s ``split``, held in
    memory: the raw-forward baseline that the benchmarks set the extraction loop against."""
    info = dataset_spec(dataset)
    config = input_config(spec, info, image_size)
    prep = dataset_preprocessing(info, config)
    raw = load_split(info, split, None, int(config["input_size"][-1]))
    return [prep.normalise(images) for images, _ in
            DataLoader(Preprocessed(raw, prep.transform), batch_size=batch_size)]


def _preprocessing(info: DatasetSpec, data_config: dict, style: str | None) -> Preprocessing:
    if style is None:
        return dataset_preprocessing(info, data_config)
    from .preprocessing import eval_preprocessing
    return eval_preprocessing(style, data_config)


def _model_words(spec: ModelSpec) -> str:
    weights = f"weights {spec.weights}" if spec.weights else f"random init (seed {spec.init_seed})"
    return f"{spec.display_label()} ({weights})"


def _extract_one(extractor, cache, parts, raw, prep, info, split, batch_size, workers,
                 device, amp_dtype, progress, model: str) -> CachedFeatures:
    n = len(raw)
    writer = cache.writer(parts, n)
    data = Preprocessed(raw, prep.transform)
    if writer.done:
        data = Subset(data, range(writer.done, n))
    if batch_size is None:
        batch_size = 256 if device.type == "cuda" else 64
    workers = default_workers(n) if workers is None else workers
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    # Worker-less loading gets a prefetch thread when there is GIL-free work to overlap (file
    # decode, resize); the native style (digits: tiny in-memory images) is pure Python per
    # image, where a thread only contends for the GIL (measured slower).
    batches = loader if workers or prep.description.get("style") == "native" else prefetched(loader)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    t0 = time.perf_counter()
    bar = progress_bar(total=n, initial=writer.done, unit="img", enabled=progress,
                       desc=f"extract {info.name}/{split}", leave=False)
    row = resumed = writer.done
    try:
        with torch.inference_mode(), autocast:
            for images, targets in batches:
                feats = extractor(prep.normalise(images.to(device, non_blocking=True)))
                feats = feats.float().cpu().numpy()
                if not np.isfinite(feats).all():
                    # refused before it reaches the cache: NaN features would make every fit
                    # fail far from the cause, or score silently at chance
                    raise NonFiniteFeaturesError(_non_finite_message(
                        feats, row, model, f"{info.name}/{split}", amp_dtype))
                writer.write(row, feats, targets.numpy())
                row += len(images)
                bar.update(len(images))
    except BaseException:
        writer.checkpoint()  # Ctrl-C or a crash: keep every row written so far for the resume
        raise
    finally:
        bar.close()
        if hasattr(batches, "close"):
            batches.close()  # stops the prefetch thread now, not when the traceback is freed
    elapsed = time.perf_counter() - t0
    return writer.finish({"classes": class_names(raw), "extract_s": elapsed,
                          "images_per_s": (n - resumed) / elapsed if elapsed else None,
                          "resumed_from": resumed,
                          "device": str(device), "batch_size": batch_size, "workers": workers,
                          "backend": getattr(extractor, "backend", "torch"),
                          "multilabel": bool(info.multilabel)})

