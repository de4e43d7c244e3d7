"""Fast-distillation benchmark: what the store buys and what it costs.

Every figure is against a baseline measured in the same run, on the same machine and threads.
The store baselines behave as the official code (microsoft/Cream TinyViT, ``TxtManager``) does:
one ``rank<r>-keys.txt`` (a sample key per line) and ``rank<r>-values.bin`` (records of
``4 + 4K`` bytes: int32 seed, int16 indices, float16 values) per rank and epoch; written by a
background process fed through a queue, one ``(key, bytes)`` message per sample, into a temporary
folder moved into place at the end; read by loading the keys file into a dict on the first miss,
then ``seek`` + ``read`` + decode per sample. Written from that description, not copied.

Records: ImageNet-21k shape (K = 100 of 21,841 classes), 200,000 per epoch (``--quick``: 50,000),
peaked random teacher distributions, the same records in both layouts.

* ``read_per_sample_records_per_s`` — one record per call in training order (each record
  decoded; ours also checked), as a DataLoader fetching items one by one does: ours reads ahead
  along the epoch's order, the official reader reads its own rank file front to back.
* ``read_epoch_seconds`` — a whole epoch as training reads it: ours one ``pread`` per training
  batch (the DataLoader's batch fetch), the official reader per sample, its keys load included.
* ``write_records_per_s`` — an epoch written as teacher batches of 128 arrive: ours encodes,
  seals and ``pwrite``s each batch; the official-like writer queues one message per sample to
  its writing process, timed until the files are in place. Neither syncs to disk.
* ``scan_gb_per_s`` — the integrity scan (every record's crc32 and top-1) against reading the
  same file's bytes with no check.
* ``record_bytes_<format>_k<K>`` — bytes per record per value format vs the official ``4 + 4K``
  (goal for log8 at K = 100: at most 75%, i.e. speedup >= 1.333); ``extra`` holds the whole-store
  sizes of the paper's runs and the soft-label reconstruction error of the format.
* ``step_store_vs_online_seconds`` / ``step_store_vs_labels_seconds`` — one student training
  step fed from the store (replayed augmentation + batch read + soft-label rebuild + forward /
  backward / update) vs the same step with a ViT-L/14-sized teacher online (timm
  ``vit_large_patch14_clip_224``, 304M parameters, random weights, no download; 56 px on CPU,
  112 px full) and vs a plain supervised step (goal >= 0.95). TinyViT-5M student (windows
  7, 7, 4, 2), batch 16, embedded digits; the runs alternate so load changes hit both.

Run ``python bench/bench_distill.py`` (full) or ``... --quick``.
"""
from __future__ import annotations

import multiprocessing
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
TOPK, CLASSES, BATCH = 100, 21841, 128


# --------------------------------------------------------------------------- records
def teacher_records(n: int, topk: int, classes: int, seed: int = 0, chunk: int = 2000):
    """(indices (n, K) int64, probabilities (n, K) float32 sorted) of peaked random softmaxes:
    one class boosted by 2..12 nats over Gaussian logits of std 3 (a confident teacher)."""
    rng = np.random.default_rng(seed)
    out_i, out_v = [], []
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        logits = rng.standard_normal((m, classes), dtype=np.float32) * 3
        logits[np.arange(m), rng.integers(0, classes, m)] += rng.uniform(2, 12, m)
        logits -= logits.max(1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(1, keepdims=True)
        top = np.argpartition(-probs, topk - 1, axis=1)[:, :topk]
        order = np.argsort(-np.take_along_axis(probs, top, 1), axis=1)
        idx = np.take_along_axis(top, order, 1)
        out_i.append(idx)
        out_v.append(np.take_along_axis(probs, idx, 1).astype(np.float32))
    return np.concatenate(out_i), np.concatenate(out_v)


def reconstruction_error(values_format: str, topk: int, classes: int, n: int = 2000) -> dict:
    """How far soft labels rebuilt from a value format's records are from those rebuilt from the
    exact float32 top-K: mean / max L1 distance per label and mean KL(exact || format)."""
    from tinyvit_backbone.distill.record import RecordFormat
    from tinyvit_backbone.distill.soft_label import rebuild_soft_labels

    idx, vals = teacher_records(n, topk, classes, seed=1)
    fmt = RecordFormat(topk, classes, values_format)
    exact = rebuild_soft_labels(torch.from_numpy(idx), torch.from_numpy(vals), classes)
    stored = rebuild_soft_labels(torch.from_numpy(idx), torch.from_numpy(fmt.roundtrip(vals)),
                                 classes)
    l1 = (exact - stored).abs().sum(-1)
    kl = (exact * (exact.clamp_min(1e-30).log() - stored.clamp_min(1e-30).log())).sum(-1)
    rel = np.abs(fmt.roundtrip(vals) / vals - 1)
    return dict(samples=n, mean_l1=float(l1.mean()), max_l1=float(l1.max()),
                mean_kl=float(kl.mean()), max_rel_error_per_value=float(rel.max()),
                mean_rel_error_per_value=float(rel.mean()),
                top1_mass_mean=float(vals[:, 0].mean()),
                topk_mass_mean=float(vals.sum(1).mean()))


# --------------------------------------------------------------------------- official layout
def _official_writer_process(queue, folder: str, rank: int) -> None:
    """Drain (key, bytes) messages into a temporary folder, then move the files into place."""
    import shutil

    tmp = tempfile.mkdtemp(prefix=f"official_rank{rank}_")
    keys_path = os.path.join(tmp, f"rank{rank}-keys.txt")
    values_path = os.path.join(tmp, f"rank{rank}-values.bin")
    seen = set()
    with open(keys_path, "w") as keys, open(values_path, "wb") as values:
        while True:
            item = queue.get()
            if item is None:
                break
            key, value = item
            if key in seen:  # padded samplers repeat samples: the first copy wins
                continue
            seen.add(key)
            keys.write(key + "\n")
            values.write(value)
    os.makedirs(folder, exist_ok=True)
    for path in (keys_path, values_path):
        shutil.move(path, os.path.join(folder, os.path.basename(path)))
    os.rmdir(tmp)


class OfficialLikeWriter:
    """A background writing process fed one message per sample (see the module docstring)."""

    def __init__(self, folder: str, rank: int = 0):
        ctx = multiprocessing.get_context("fork")
        self.queue = ctx.Queue()
        self.process = ctx.Process(target=_official_writer_process,
                                   args=(self.queue, folder, rank))
        self.process.start()

    def write_batch(self, keys, seeds, indices, values) -> None:
        seeds = np.asarray(seeds, np.int32)
        indices = np.asarray(indices).astype(np.int16)
        values = np.asarray(values).astype(np.float16)
        for key, s, i, v in zip(keys, seeds, indices, values):
            self.queue.put((key, s.tobytes() + i.tobytes() + v.tobytes()))

    def close(self) -> None:
        self.queue.put(None)
        self.process.join()


class OfficialLikeReader:
    """Keys loaded into a dict on the first miss, then seek + read + decode per sample."""

    def __init__(self, folder: str, topk: int, rank: int = 0):
        self.folder, self.topk, self.rank = folder, topk, rank
        self.size = 4 + 4 * topk
        self.keys: dict[str, int] = {}
        self.values = None

    def _load(self) -> None:
        with open(os.path.join(self.folder, f"rank{self.rank}-keys.txt")) as f:
            for row, line in enumerate(f.readlines()):
                self.keys[line.strip()] = row

    def read(self, key: str):
        row = self.keys.get(key)
        if row is None:
            self._load()
            row = self.keys[key]
        if self.values is None:
            self.values = open(os.path.join(self.folder, f"rank{self.rank}-values.bin"), "rb")
        self.values.seek(row * self.size)
        raw = self.values.read(self.size)
        k = self.topk
        seed = int(np.frombuffer(raw[:4], dtype=np.int32)[0])
        return (seed, np.frombuffer(raw[4:4 + 2 * k], dtype=np.int16).copy(),
                np.frombuffer(raw[4 + 2 * k:4 + 4 * k], dtype=np.float16).copy())

    def close(self) -> None:
        if self.values is not None:
            self.values.close()


# --------------------------------------------------------------------------- our store
def _store_manifest(n: int, topk: int, classes: int, value_format: str = "fp16") -> dict:
    from tinyvit_backbone.distill.datasets import DatasetInfo
    from tinyvit_backbone.distill.replay import AugConfig
    from tinyvit_backbone.distill.save_logits import SaveSettings, build_manifest

    aug = AugConfig()
    teacher = dict(model=TEACHER, model_kwargs={}, checkpoint="-", checkpoint_sha256="-",
                   num_classes=classes, mean=list(aug.mean), std=list(aug.std))
    info = DatasetInfo("imagefolder", "-", "train", n, tuple(map(str, range(classes))), "bench")
    return build_manifest(teacher, info, aug, SaveSettings(topk=topk, batch_size=BATCH,
                                                           value_format=value_format))


def _io_figures(quick: bool) -> list[Figure]:
    from tinyvit_backbone.distill.integrity import bad_positions
    from tinyvit_backbone.distill.layout import epoch_order_table
    from tinyvit_backbone.distill.replay import epoch_batches
    from tinyvit_backbone.distill.store import LogitStore

    n = 50_000 if quick else 200_000
    idx, vals = teacher_records(n, TOPK, CLASSES)
    seeds = np.random.default_rng(2).integers(0, 2**31, n).astype(np.int32)
    keys = [f"n{i // 1300:08d}/n{i // 1300:08d}_{i}.JPEG" for i in range(n)]  # IN-21k-like keys
    batches = epoch_batches(n, 0, 0, BATCH)  # training order: consecutive runs of the order
    order = np.concatenate(batches)
    figs = []
    with tempfile.TemporaryDirectory(prefix="bench_distill_") as tmp:
        # ---- writes (order of arrival: the epoch's batches)
        def write_ours():
            store = LogitStore.create(os.path.join(tmp, "ours"), _store_manifest(n, TOPK, CLASSES))
            for b in batches:
                store.write(0, b, seeds[b], idx[b], vals[b])
            store.close()

        def write_official():
            writer = OfficialLikeWriter(os.path.join(tmp, "official"))
            for b in batches:
                writer.write_batch([keys[i] for i in b], seeds[b], idx[b], vals[b])
            writer.close()

        def clean(name):
            import shutil

            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)

        w = {"ours": [], "official": []}
        for _ in range(2 if quick else 3):  # interleaved: load drift hits both alike
            for name, fn in (("ours", write_ours), ("official", write_official)):
                clean(name)
                w[name].append(time_call(fn, warmup=0, repeat=1))
        t_w_ours, t_w_off = float(np.median(w["ours"])), float(np.median(w["official"]))
        store = LogitStore.open(os.path.join(tmp, "ours"))
        official = OfficialLikeReader(os.path.join(tmp, "official"), TOPK)
        # same records in both layouts
        rec = store.read(0, int(order[5]))
        s, i, v = official.read(keys[order[5]])
        assert rec.seed == s and np.array_equal(rec.indices, i) and np.array_equal(
            rec.values, v.astype(np.float32))
        figs.append(Figure(BENCH, "write_records_per_s", n / t_w_ours, "records/s",
                           "official-like: queue + writing process", n / t_w_off, goal=1.0,
                           extra=dict(records=n, batch=BATCH, topk=TOPK, classes=CLASSES,
                                      value_format="fp16", ours_s=w["ours"],
                                      official_s=w["official"], fsync="neither")))

        # ---- per-sample reads in training order
        order_list, key_order = order.tolist(), [keys[i] for i in order]

        def per_sample_ours():
            epoch_order_table.cache_clear()  # the epoch's order: computed per epoch, like keys
            fresh = LogitStore.open(os.path.join(tmp, "ours"))
            for i in order_list:
                fresh.read(0, i)
            fresh.close()

        def per_sample_official():
            reader = OfficialLikeReader(os.path.join(tmp, "official"), TOPK)
            for k in key_order:
                reader.read(k)
            reader.close()

        def epoch_ours():
            epoch_order_table.cache_clear()
            fresh = LogitStore.open(os.path.join(tmp, "ours"))
            for b in batches:
                fresh.read_many(0, b)
            fresh.close()

        r = {k: [] for k in ("ps_ours", "ps_official", "ep_ours")}
        per_sample_ours(), per_sample_official()  # warm the page cache for both
        for _ in range(3 if quick else 5):
            r["ps_ours"].append(time_call(per_sample_ours, warmup=0, repeat=1))
            r["ps_official"].append(time_call(per_sample_official, warmup=0, repeat=1))
            r["ep_ours"].append(time_call(epoch_ours, warmup=0, repeat=1))
        t_ps_ours, t_off = float(np.median(r["ps_ours"])), float(np.median(r["ps_official"]))
        t_ep_ours = float(np.median(r["ep_ours"]))
        tic = time.perf_counter()
        OfficialLikeReader(os.path.join(tmp, "official"), TOPK)._load()
        key_load_s = time.perf_counter() - tic
        extra = dict(records=n, topk=TOPK, classes=CLASSES, value_format="fp16",
                     ours_checks_crc=True, official_checks_nothing=True,
                     official_key_index_load_s=round(key_load_s, 3), rounds=r)
        figs.append(Figure(BENCH, "read_per_sample_records_per_s", n / t_ps_ours, "records/s",
                           "official reader, per sample", n / t_off, goal=1.0, extra=extra))
        figs.append(Figure(BENCH, "read_epoch_seconds", t_ep_ours, "s",
                           "official reader, per sample (keys load included)", t_off,
                           higher_is_better=False, goal=1.0,
                           extra=dict(extra, training_batch=BATCH)))

        # ---- integrity scan vs reading the bytes unchecked
        path = store.epoch_path(0)
        nbytes = os.path.getsize(path)

        def scan():
            s = LogitStore.open(os.path.join(tmp, "ours"))
            bad, _, _ = bad_positions(s, 0, [(0, n)])
            assert len(bad) == 0
            s.close()

        def raw_read():
            fd = os.open(path, os.O_RDONLY)
            try:
                offset = 0
                while chunk := os.pread(fd, 8 << 20, offset):
                    offset += len(chunk)
            finally:
                os.close(fd)

        scan(), raw_read()
        t_scan = time_call(scan, warmup=0, repeat=3)
        t_raw = time_call(raw_read, warmup=0, repeat=3)
        figs.append(Figure(BENCH, "scan_gb_per_s", nbytes / t_scan / 1e9, "GB/s",
                           "reading the same bytes unchecked", nbytes / t_raw / 1e9,
                           extra=dict(bytes=nbytes, records=n, check="crc32 per record "
                                      "(zlib) + top-1 > 0", processes=1)))
        store.close()
        official.close()
    return figs


# --------------------------------------------------------------------------- record size
def _size_figures() -> list[Figure]:
    from tinyvit_backbone.distill.record import RecordFormat, official_record_bytes

    figs = []
    for name, topk, classes, images, epochs in (("in1k", 10, 1000, IN1K_IMAGES, 300),
                                                 ("in21k", 100, 21841, IN21K_IMAGES, 90)):
        official = official_record_bytes(topk)
        for values, goal in (("fp16", 1 / 1.1), ("log8", 1 / 0.75 if topk == 100 else None)):
            ours = RecordFormat(topk, classes, values).size
            figs.append(Figure(
                BENCH, f"record_bytes_{values}_k{topk}", ours, "bytes", "official 4 + 4K",
                official, higher_is_better=False, goal=goal, extra=dict(
                    dataset=name, num_classes=classes, epochs=epochs, value_format=values,
                    share_of_official=round(ours / official, 4),
                    store_gb=round(ours * images * epochs / 1e9, 1),
                    official_store_gb=round(official * images * epochs / 1e9, 1),
                    reconstruction=reconstruction_error(values, topk, classes,
                                                        n=500 if topk == 100 else 2000))))
    return figs


# --------------------------------------------------------------------------- training step
def _fake_store(root: str, data, aug, topk: int, num_classes: int):
    """A store whose records are random top-K rows: the student reads them like real ones."""
    from tinyvit_backbone.distill.replay import sample_seed
    from tinyvit_backbone.distill.save_logits import SaveSettings, build_manifest
    from tinyvit_backbone.distill.store import LogitStore

    teacher = dict(model=TEACHER, model_kwargs={}, checkpoint="-", checkpoint_sha256="-",
                   num_classes=num_classes, mean=list(aug.mean), std=list(aug.std))
    store = LogitStore.create(root, build_manifest(teacher, data, aug, SaveSettings(topk=topk)))
    n = data.num_samples
    idx, vals = teacher_records(n, topk, num_classes)
    store.write(0, np.arange(n), np.array([sample_seed(0, 0, i) for i in range(n)]), idx, vals)
    store.mark_complete(0)
    store.close()
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


def run(quick: bool = True) -> list[Figure]:
    threads = torch.get_num_threads()
    figs = _size_figures() + _io_figures(quick) + _step_figures(quick)
    for fig in figs:
        fig.extra.setdefault("torch_threads", threads)
    return figs


if __name__ == "__main__":
    sys.exit(main(run))
