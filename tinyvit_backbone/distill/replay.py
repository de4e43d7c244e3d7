"""Exact augmentation replay: every random draw of a sample's augmentation comes from its seed.

The seed of sample ``i`` in epoch ``e`` is a pure function of (base seed, e, i) — see
:func:`sample_seed` — so the teacher (when saving logits), the student (when training from the
store) and an online teacher all see the same pixels, whatever the number of DataLoader workers
or processes, and after any resume.

* Per-sample transforms are timm's own (RandomResizedCrop, flip, RandAugment, color jitter,
  RandomErasing). They draw from Python's ``random``, NumPy's and torch's global generators, so
  :func:`rng_scope` seeds those three from the sample's seed and restores their states on exit:
  no other randomness in the process (model init, dropout, drop-path) is disturbed.
* Mixup / CutMix work on sample pairs, as the official code's ``pair2`` mode: an epoch's order
  (:func:`epoch_order`) is cut into pairs (2j, 2j+1), which batches never split; the pair's
  parameters come from a scope seeded with ``seed_a ^ seed_b`` (:func:`mix_pairs`). timm's
  Mixup has no such mode; only the pairing and the parameter draw are written here (the CutMix
  box is timm's ``cutmix_bbox_and_lam``, run inside the scope).

Record order: samples are processed in batches that are fixed consecutive chunks of the epoch
order (:func:`epoch_batches`), and rank ``r`` of ``w`` takes batches ``r, r + w, ...``.
"""
from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .errors import DistillError, StoreError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------- seeds and order
def sample_seed(base_seed: int, epoch: int, index: int) -> int:
    """Augmentation seed in [0, 2**31) of sample ``index`` in ``epoch`` (a hash, no state)."""
    digest = hashlib.blake2b(struct.pack("<qqq", base_seed, epoch, index), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def epoch_order(num_samples: int, base_seed: int, epoch: int) -> np.ndarray:
    """The epoch's sample order (a permutation of ``range(num_samples)``); pairs are (2j, 2j+1)."""
    return np.random.Generator(np.random.PCG64([base_seed, epoch])).permutation(num_samples)


def epoch_batches(num_samples: int, base_seed: int, epoch: int,
                  batch_size: int) -> list[np.ndarray]:
    """The epoch's order cut into batches of ``batch_size`` (even: pairs stay together)."""
    if batch_size < 2 or batch_size % 2:
        raise DistillError(f"batch size must be even and >= 2 so that mixup pairs stay "
                           f"together, got {batch_size}")
    order = epoch_order(num_samples, base_seed, epoch)
    return [order[i: i + batch_size] for i in range(0, num_samples, batch_size)]


def rank_batches(batches: Sequence[np.ndarray], rank: int, world_size: int,
                 equal: bool = False) -> list[np.ndarray]:
    """Batches of ``rank``: every ``world_size``-th one. ``equal`` drops the tail batches that
    not every rank would get (DDP training needs the same number of steps on every rank)."""
    if equal:
        batches = batches[: len(batches) // world_size * world_size]
    return list(batches[rank::world_size])


@contextmanager
def rng_scope(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's (CPU) global generators; restore them on exit."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    # fork_rng restores the CPU generator; devices=[] leaves CUDA generators untouched.
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# ---------------------------------------------------------------------- augmentation config
@dataclass(frozen=True)
class AugConfig:
    """The training augmentation; stored in the store's manifest (it decides the pixels).

    Defaults are the official ImageNet recipe (TinyViT / DeiT): RandomResizedCrop (bicubic),
    flip, RandAugment ``rand-m9-mstd0.5-inc1``, RandomErasing 0.25 (per-pixel noise), Mixup 0.8
    / CutMix 1.0 by pairs. As in timm, color jitter is off while RandAugment is on unless
    ``force_color_jitter``. The released IN-21k distillation recipe sets mixup = cutmix = 0.
    """

    image_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    force_color_jitter: bool = False
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self):
        for name in ("scale", "ratio", "mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.image_size < 8:
            raise DistillError(f"augmentation image_size must be >= 8 pixels, got {self.image_size}")
        if self.mixup < 0 or self.cutmix < 0:
            raise DistillError(f"mixup / cutmix alphas must be >= 0, got {self.mixup} / {self.cutmix}")

    @property
    def mixing(self) -> bool:
        return self.mix_prob > 0 and (self.mixup > 0 or self.cutmix > 0)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> AugConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DistillError(f"unknown augmentation settings {sorted(unknown)}; known: "
                               f"{sorted(known)}")
        return cls(**d)


def build_train_transform(aug: AugConfig):
    """timm's ImageNet training transform for ``aug`` (PIL image -> normalised CHW tensor)."""
    from timm.data.transforms_factory import transforms_imagenet_train

    transform = transforms_imagenet_train(
        img_size=aug.image_size, scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip,
        color_jitter=aug.color_jitter if aug.color_jitter > 0 else None,
        force_color_jitter=aug.force_color_jitter, auto_augment=aug.auto_augment,
        interpolation=aug.interpolation, mean=aug.mean, std=aug.std, re_prob=aug.re_prob,
        re_mode=aug.re_mode, re_count=aug.re_count)
    _patch_posterize(transform)
    return transform


def _posterize_keep_bits(img, bits_to_keep, **_):
    # timm's 'PosterizeIncreasing' asks for 0 bits at magnitude 10 (reachable with mstd0.5);
    # Pillow >= 13 refuses bits < 1, older Pillow returned an all-zero image. Keep that result
    # (and every random draw) instead of crashing.
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, int(bits_to_keep))


def _patch_posterize(transform) -> None:
    """Give this transform's Posterize ops a Pillow-13-safe function (timm's stays untouched)."""
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if getattr(op, "name", "").startswith("Posterize"):
                op.aug_fn = _posterize_keep_bits


def build_eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                         interpolation: str = "bicubic", crop_pct: float = 0.875):
    """timm's evaluation transform (resize, center crop of ``crop_pct``, normalise)."""
    from timm.data import create_transform

    return create_transform(image_size, is_training=False, interpolation=interpolation,
                            mean=tuple(mean), std=tuple(std), crop_pct=crop_pct)


# ---------------------------------------------------------------------- pair mixing
def mix_pairs(images: torch.Tensor, seeds: Sequence[int], aug: AugConfig
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup / CutMix images (B, C, H, W) by pairs (0, 1), (2, 3), ... in place.

    Each pair draws (apply?, cutmix?, lambda, box) from a scope seeded by ``seeds[a] ^ seeds[b]``;
    an odd last image is left alone. Returns ``(images, lam)`` where ``lam`` (B,) float32 is the
    weight of each image's own label (the partner of ``k`` is ``k ^ 1``).
    """
    lam = torch.ones(len(images), dtype=torch.float32)
    if not aug.mixing:
        return images, lam
    from timm.data.mixup import cutmix_bbox_and_lam

    for a in range(0, len(images) - 1, 2):
        b = a + 1
        with rng_scope(int(seeds[a]) ^ int(seeds[b])):
            if np.random.rand() >= aug.mix_prob:
                continue
            if aug.mixup > 0 and aug.cutmix > 0:
                use_cutmix = bool(np.random.rand() < aug.switch_prob)
            else:
                use_cutmix = aug.cutmix > 0
            alpha = aug.cutmix if use_cutmix else aug.mixup
            weight = float(np.random.beta(alpha, alpha))
            if use_cutmix:
                (yl, yh, xl, xh), weight = cutmix_bbox_and_lam(images.shape, weight)
                patch = images[a, :, yl:yh, xl:xh].clone()
                images[a, :, yl:yh, xl:xh] = images[b, :, yl:yh, xl:xh]
                images[b, :, yl:yh, xl:xh] = patch
            else:
                first = images[a].clone()
                images[a].mul_(weight).add_(images[b], alpha=1 - weight)
                images[b].mul_(weight).add_(first, alpha=1 - weight)
        lam[a] = lam[b] = weight
    return images, lam


def mixed_label_targets(labels: torch.Tensor, lam: torch.Tensor, num_classes: int,
                        smoothing: float = 0.0) -> torch.Tensor:
    """Soft targets (B, C) of pair-mixed images: lam * y_self + (1 - lam) * y_partner, with
    optional label smoothing (the partner of ``k`` is ``k ^ 1``; an unpaired image keeps lam 1)."""
    off = smoothing / num_classes
    one_hot = torch.full((len(labels), num_classes), off, device=labels.device)
    one_hot.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)
    partner = torch.arange(len(labels), device=labels.device) ^ 1
    partner = partner.clamp(max=len(labels) - 1)
    lam = lam.to(one_hot.device).view(-1, 1)
    return lam * one_hot + (1 - lam) * one_hot[partner]


# ---------------------------------------------------------------------- dataset / loader
class ReplayDataset(Dataset):
    """Replays a base dataset's augmentation from per-sample seeds.

    Indexed by ``(epoch, index)`` tuples (as the batch samplers built from
    :func:`epoch_batches` yield them), so no epoch state has to reach the DataLoader workers.
    Items are dicts: ``image`` (C, H, W) float, ``label``, ``index``, ``seed``, and with a
    ``store`` also ``topk_indices`` (K,) int64, ``topk_values`` (K,) float32 and ``valid``.

    A DataLoader fetches a whole batch through :meth:`__getitems__`, which reads the batch's
    records from the store as one sequential run (training batches are runs of the store's
    order); single items read ahead in the store's order.

    Args:
        base: dataset returning ``(PIL image, label)`` with no transform of its own.
        aug: the augmentation (per-sample part; pair mixing happens in :class:`PairCollate`).
        base_seed: the seed of :func:`sample_seed`.
        store: a :class:`~.store.LogitStore` to read the teacher's records from.
        skip_bad: a record that fails its check gives ``valid`` False (and a harmless target)
            instead of raising :class:`StoreError`.
    """

    def __init__(self, base: Dataset, aug: AugConfig, base_seed: int, store=None,
                 skip_bad: bool = False):
        self.base = base
        self.aug = aug
        self.base_seed = int(base_seed)
        self.store = store
        self.skip_bad = skip_bad
        self.transform = build_train_transform(aug)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, ...]) -> dict:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[tuple[int, ...]]) -> list[dict]:
        """Keys are (epoch, index) or (epoch, index, position in the epoch's order)."""
        positions = [int(k[2]) for k in keys] if all(len(k) > 2 for k in keys) else None
        keys = [(int(k[0]), int(k[1])) for k in keys]
        items = (self._records(keys, positions) if self.store is not None
                 else [{} for _ in keys])
        for item, (epoch, index) in zip(items, keys):
            seed = sample_seed(self.base_seed, epoch, index)
            img, label = self.base[index]
            with rng_scope(seed):
                item["image"] = self.transform(img)
            item.update(label=int(label), index=index, epoch=epoch, seed=seed)
        return items

    def _records(self, keys: list[tuple[int, int]], positions: list[int] | None) -> list[dict]:
        store, out = self.store, []
        if len(keys) == 1 and positions is None:
            rec, ok = store.read_record(*keys[0])
            found = [(rec.seed, rec.indices, rec.values, ok)]
        else:
            found = []
            for epoch in sorted({e for e, _ in keys}):
                picked = [j for j, (e, _) in enumerate(keys) if e == epoch]
                batch = store.read_many(epoch, [keys[j][1] for j in picked],
                                        None if positions is None else
                                        [positions[j] for j in picked])
                found += [(j, (int(batch.seeds[r]), batch.indices[r], batch.values[r],
                               bool(batch.ok[r]))) for r, j in enumerate(picked)]
            found = [f for _, f in sorted(found, key=lambda t: t[0])]
        for (epoch, index), (seed, indices, values, ok) in zip(keys, found):
            if not ok:
                if not self.skip_bad:
                    raise StoreError(store.bad_record_message(epoch, index))
                indices = np.arange(store.topk)
                values = np.zeros(store.topk, dtype=np.float32)
            elif seed != sample_seed(self.base_seed, epoch, index):
                raise StoreError(
                    f"record {index} of epoch {epoch} in {store.root!r} has seed {seed}, "
                    f"expected {sample_seed(self.base_seed, epoch, index)} from base seed "
                    f"{self.base_seed}: the store was written with another seed scheme; rewrite "
                    "it with this version of save-logits")
            out.append(dict(topk_indices=torch.from_numpy(np.array(indices, dtype=np.int64)),
                            topk_values=torch.from_numpy(np.array(values, dtype=np.float32)),
                            valid=bool(ok)))
        return out


class PairCollate:
    """Collate replayed items and mix the pairs of the batch (picklable, runs in workers)."""

    def __init__(self, aug: AugConfig):
        self.aug = aug

    def __call__(self, items: list[dict]) -> dict:
        batch = default_collate(items)
        batch["image"], batch["lam"] = mix_pairs(batch["image"], batch["seed"].tolist(), self.aug)
        return batch


def replay_loader(dataset: ReplayDataset, epoch: int, batches: Sequence[np.ndarray],
                  workers: int = 0, pin_memory: bool = False,
                  starts: Sequence[int] | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader over the given batches of ``epoch`` (each a sequence of sample indices).

    ``starts[b]``: where batch ``b`` begins in the epoch's order, for batches that are runs of
    it (:func:`epoch_batches`); the keys then carry each sample's position, so the workers read
    the store without building the epoch's order table."""
    if starts is None:
        batch_keys = [[(epoch, int(i)) for i in batch] for batch in batches]
    else:
        batch_keys = [[(epoch, int(i), s + j) for j, i in enumerate(batch)]
                      for batch, s in zip(batches, starts)]
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batch_keys, num_workers=workers, collate_fn=PairCollate(dataset.aug),
        pin_memory=pin_memory, persistent_workers=False)


__all__ = ["AugConfig", "CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "PairCollate",
           "ReplayDataset", "build_eval_transform", "build_train_transform", "epoch_batches",
           "epoch_order", "mix_pairs", "mixed_label_targets", "rank_batches", "replay_loader",
           "rng_scope", "sample_seed"]
