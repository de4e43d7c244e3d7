"""Fast-distillation benchmark: what the store buys and what it costs.

Figures (each against a baseline measured in the same run, same machine and threads):

* ``step_store_vs_online_seconds`` — one student training step fed from the store (replayed
  augmentation + record read + soft-label rebuild + forward / backward / update) vs the same
  step with the teacher run online. The teacher is ViT-L/14-sized (timm
  ``vit_large_patch14_clip_224`` architecture, 304M parameters, random weights — no download)
  at a reduced resolution on CPU (56 px: 16 patches; the full run uses 112 px) so the run stays
  short; the student is TinyViT-5M (windows 7, 7, 4, 2 to fit the resolution), batch 16, on
  the embedded digits. At 224 px on a GPU the teacher's share only grows.
* ``step_store_vs_labels_seconds`` — the same step from the store vs a plain supervised step
  (labels, same pipeline). Goal: at most 5% slower (speedup >= 0.95). The runs alternate so
  that load changes on a shared machine hit both.
* ``record_bytes_k<K>`` — bytes per record vs the official ``4 + 4K`` (K = 10 / C = 1000 for
  IN-1k, K = 100 / C = 21841 for IN-21k); ``extra`` has the whole-store sizes of the paper's
  runs. Goal: at most 10% larger.
* ``random_read_records_per_s`` — random single-record reads (decoded, integrity-checked)
  from our memory-mapped store vs a keys-text-file + values-blob layout like the official one
  (key -> offset dict, seek, read, decode), same records; ``extra`` has the official reader's
  key-index load time, which it pays once per process and per epoch.

Run ``python bench/bench_distill.py`` (quick) or ``... --full``.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from bench.common import Figure, main, time_call

BENCH = "distill"
STUDENT_ARCH = {"embed_dims": [64, 128, 160, 320], "depths": [2, 2, 6, 2],
                "num_heads": [2, 4, 5, 10], "window_sizes": [7, 7, 4, 2]}
TEACHER = "vit_large_patch14_clip_224"
IN1K_IMAGES, IN21K_IMAGES = 1_281_167, 13_153_920  # IN-21k: the count the official 481 GB implies


# --------------------------------------------------------------------------- (a) training step
def _fake_store(root: str, data, aug, topk: int, num_classes: int):
    """A store whose records are random top-K rows: the student reads them like real ones."""
    from tinyvit_backbone.distill.replay import sample_seed
    from tinyvit_backbone.distill.save_logits import SaveSettings, build_manifest
    from tinyvit_backbone.distill.store import LogitStore

    teacher = dict(model=TEACHER, model_kwargs={}, checkpoint="-", checkpoint_sha256="-",
                   num_classes=num_classes, mean=list(aug.mean), std=list(aug.std))
    store = LogitStore.create(root, build_manifest(teacher, data, aug, SaveSettings(topk=topk)))
    store.allocate_epoch(0)
    rng = np.random.default_rng(0)
    n = data.num_samples
    idx = np.stack([rng.permutation(num_classes)[:topk] for _ in range(n)])
    vals = -np.sort(-rng.dirichlet(np.ones(num_classes), n)[:, :topk], axis=1)
    store.write(0, np.arange(n), np.array([sample_seed(0, 0, i) for i in range(n)]), idx,
                vals.astype(np.float16))
    store.mark_complete(0)
    return LogitStore.open(root)


def _step_figures(quick: bool) -> list[Figure]:
    import timm
    from torch.utils.data import Subset

    from tinyvit_backbone.backbone import build_timm_tinyvit
    from tinyvit_backbone.device import select_device
    from tinyvit_backbone.distill.datasets import DatasetInfo, open_dataset
    from tinyvit_backbone.distill.replay import (
        AugConfig,
        ReplayDataset,
        epoch_batches,
        mixed_label_targets,
        replay_loader,
    )
    from tinyvit_backbone.distill.soft_label import rebuild_soft_labels, soft_target_cross_entropy
    from tinyvit_backbone.distill.teacher import Teacher

    device = select_device()  # a GPU when there is one, like the training CLI
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    size, batch, steps = (56, 16, 3) if quick else (112, 16, 6)
    ds, info = open_dataset("digits", "train", size)
    n = batch * steps
    data = Subset(ds, range(n))
    info = DatasetInfo("digits", "digits", "train", n, info.classes, "bench")
    aug = AugConfig(image_size=size, hflip=0.0)
    tmp = tempfile.TemporaryDirectory(prefix="bench_distill_")
    store = _fake_store(os.path.join(tmp.name, "store"), info, aug, 5, 10)
    torch.manual_seed(0)
    student = build_timm_tinyvit(STUDENT_ARCH, 10).to(device)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    tic = time.perf_counter()
    vit = timm.create_model(TEACHER, pretrained=False, num_classes=10, img_size=size)
    teacher_build_s = time.perf_counter() - tic
    teacher = Teacher(vit, aug.mean, aug.std, aug.mean, aug.std).to(device)
    batches = epoch_batches(n, 0, 0, batch)
    loaders = {mode: ReplayDataset(data, aug, 0, store if mode == "store" else None)
               for mode in ("labels", "store", "online")}

    def epoch(mode: str) -> None:
        for b in replay_loader(loaders[mode], 0, batches):
            image = b["image"].to(device, non_blocking=True)
            if mode == "store":
                target = rebuild_soft_labels(b["topk_indices"].to(device),
                                             b["topk_values"].to(device), 10)
            elif mode == "online":
                with torch.no_grad():
                    target = torch.softmax(teacher(image).float(), -1)
            else:
                target = mixed_label_targets(b["label"].to(device), b["lam"], 10, 0.1)
            loss = soft_target_cross_entropy(student(image), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()

    epoch("labels")  # warm-up (allocator, first-call paths)
    rounds = 3 if quick else 5
    times = {"labels": [], "store": []}
    for _ in range(rounds):  # interleaved: load drift hits both alike
        for mode in ("labels", "store"):
            times[mode].append(time_call(lambda m=mode: epoch(m), warmup=0, repeat=1) / steps)
    online = time_call(lambda: epoch("online"), warmup=0, repeat=1) / steps
    store.close()
    tmp.cleanup()
    t_store, t_labels = float(np.median(times["store"])), float(np.median(times["labels"]))
    extra = dict(image_size=size, batch=batch, steps_per_timing=steps, rounds=rounds,
                 student="TinyViT-5M (windows 7,7,4,2)", student_params=sum(
                     p.numel() for p in student.parameters()),
                 teacher=f"{TEACHER} (random weights, img_size={size})",
                 teacher_params=sum(p.numel() for p in vit.parameters()),
                 teacher_build_s=round(teacher_build_s, 2), store_times=times["store"],
                 labels_times=times["labels"], device=str(device))
    return [
        Figure(BENCH, "step_store_vs_online_seconds", t_store, "s/step", "online ViT-L/14 teacher",
               online, higher_is_better=False, goal=1.0, extra=extra),
        Figure(BENCH, "step_store_vs_labels_seconds", t_store, "s/step", "supervised (labels)",
               t_labels, higher_is_better=False, goal=0.95, extra=extra),
    ]


# --------------------------------------------------------------------------- (b) record size
def _size_figures() -> list[Figure]:
    from tinyvit_backbone.distill.store import official_record_bytes, record_dtype

    figs = []
    for name, topk, classes, images, epochs in (("in1k", 10, 1000, IN1K_IMAGES, 300),
                                                 ("in21k", 100, 21841, IN21K_IMAGES, 90)):
        ours, official = record_dtype(topk, classes).itemsize, official_record_bytes(topk)
        figs.append(Figure(BENCH, f"record_bytes_k{topk}", ours, "bytes", "official 4 + 4K",
                           official, higher_is_better=False, goal=1 / 1.1, extra=dict(
                               dataset=name, num_classes=classes, epochs=epochs,
                               store_gb=round(ours * images * epochs / 1e9, 1),
                               official_store_gb=round(official * images * epochs / 1e9, 1),
                               what_the_extra_bytes_hold="crc32 per record (integrity + done mark)")))
    return figs


# --------------------------------------------------------------------------- (c) random reads
class OfficialLikeStore:
    """Keys text file + values blob, read as the official reader does (dict key -> row, seek,
    read ``4 + 4K`` bytes, decode seed / int16 indices / float16 values)."""

    def __init__(self, folder: str, topk: int):
        self.folder, self.topk, self.size = folder, topk, 4 + 4 * topk
        self.keys: dict[str, int] = {}
        self.values = None

    @staticmethod
    def write(folder: str, keys: list[str], seeds, indices, values) -> None:
        with open(os.path.join(folder, "rank0-keys.txt"), "w") as f:
            f.write("".join(k + "\n" for k in keys))
        with open(os.path.join(folder, "rank0-values.bin"), "wb") as f:
            for s, i, v in zip(seeds, indices, values):
                f.write(np.int32(s).tobytes() + i.astype(np.int16).tobytes()
                        + v.astype(np.float16).tobytes())

    def load_keys(self) -> None:
        with open(os.path.join(self.folder, "rank0-keys.txt")) as f:
            self.keys = {line.strip(): row for row, line in enumerate(f)}
        self.values = open(os.path.join(self.folder, "rank0-values.bin"), "rb")

    def read(self, key: str):
        self.values.seek(self.keys[key] * self.size)
        raw = self.values.read(self.size)
        k = self.topk
        seed = int(np.frombuffer(raw[:4], dtype=np.int32)[0])
        return (seed, np.frombuffer(raw[4:4 + 2 * k], dtype=np.int16).astype(np.int64),
                np.frombuffer(raw[4 + 2 * k:], dtype=np.float16).astype(np.float32))


def _read_figures(quick: bool) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="bench_distill_read_") as tmp:
        return _read_figures_in(tmp, quick)


def _read_figures_in(tmp: str, quick: bool) -> list[Figure]:
    from tinyvit_backbone.distill.datasets import DatasetInfo
    from tinyvit_backbone.distill.replay import AugConfig

    n, reads, topk, classes = (100_000, 20_000, 10, 1000) if quick else (1_000_000, 100_000, 10, 1000)
    info = DatasetInfo("imagefolder", tmp, "train", n, tuple(map(str, range(classes))), "bench")
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 2**31, n).astype(np.int32)
    idx = rng.integers(0, classes, (n, topk))
    vals = rng.random((n, topk)).astype(np.float16)
    from tinyvit_backbone.distill.save_logits import SaveSettings, build_manifest
    from tinyvit_backbone.distill.store import LogitStore

    aug = AugConfig()
    teacher = dict(model="-", model_kwargs={}, checkpoint="-", checkpoint_sha256="-",
                   num_classes=classes, mean=list(aug.mean), std=list(aug.std))
    store = LogitStore.create(os.path.join(tmp, "ours"),
                              build_manifest(teacher, info, aug, SaveSettings(topk=topk)))
    store.allocate_epoch(0)
    store.write(0, np.arange(n), seeds, idx, vals)
    store.close()
    official_dir = os.path.join(tmp, "official")
    os.makedirs(official_dir)
    keys = [f"n{i // 1300:08d}/n{i // 1300:08d}_{i}.JPEG" for i in range(n)]  # ImageNet-like keys
    OfficialLikeStore.write(official_dir, keys, seeds, idx, vals)
    order = rng.integers(0, n, reads)
    ours = LogitStore.open(os.path.join(tmp, "ours"))
    ours.read(0, 0)  # open the map
    official = OfficialLikeStore(official_dir, topk)
    tic = time.perf_counter()
    official.load_keys()
    key_load_s = time.perf_counter() - tic
    key_order = [keys[i] for i in order]

    def read_ours():
        for i in order.tolist():
            ours.read(0, i)

    def read_official():
        for k in key_order:
            official.read(k)

    read_ours(), read_official()  # warm the page cache for both
    rounds = {"ours": [], "official": []}
    for _ in range(5):  # interleaved: load drift on a shared machine hits both alike
        rounds["ours"].append(time_call(read_ours, warmup=0, repeat=1))
        rounds["official"].append(time_call(read_official, warmup=0, repeat=1))
    t_ours, t_official = float(np.median(rounds["ours"])), float(np.median(rounds["official"]))
    # sanity: both layouts hold the same records
    rec = ours.read(0, int(order[0]))
    seed, ind, val = official.read(key_order[0])
    assert rec.seed == seed and np.array_equal(rec.indices, ind) and np.array_equal(rec.values, val)
    ours.close()
    official.values.close()
    return [Figure(BENCH, "random_read_records_per_s", reads / t_ours, "records/s",
                   "keys.txt + values.bin (official layout)", reads / t_official,
                   higher_is_better=True, goal=1.0, extra=dict(
                       records=n, reads=reads, topk=topk,
                       official_key_index_load_s=round(key_load_s, 3),
                       ours_checks_crc=True, official_checks_nothing=True))]


def run(quick: bool = True) -> list[Figure]:
    threads = torch.get_num_threads()
    figs = _size_figures() + _read_figures(quick) + _step_figures(quick)
    for fig in figs:
        fig.extra.setdefault("torch_threads", threads)
    return figs


if __name__ == "__main__":
    sys.exit(main(run))
