"""Linear-probe benchmark: feature extraction throughput and the weight-decay sweep.

Figures (each against a baseline measured in the same run, same machine and threads):

* ``extract_<case>_images_per_s`` — the full extraction pipeline (dataset -> DataLoader ->
  fused TinyViT -> memory-mapped cache) vs the raw forward of the same fused model on the same
  batches already in memory. Goal >= 0.9: data loading and caching must not be the bottleneck.
  Cases: digits at 32 px (quick: a tiny 4-stage TinyViT; full: TinyViT-5M widths; both with
  windows 7,4,2,1, which fit 32 px inputs unpadded); the full run adds JPEG files at 224 px
  (TinyViT-5M on an ImageFolder of smooth synthetic JPEGs: decode + resize + crop).
* ``sweep_<case>_seconds`` — our whole linear-probe protocol (torch L-BFGS, warm-started binary
  search over the CLIP paper's C grid logspace(-6, 6, 97), refit on train + val) vs the CLIP
  protocol with scikit-learn (``LogisticRegression(lbfgs, max_iter=1000)`` fitted from scratch
  at every C visited; same search and tie-break, same val split, same standardised features).
  Goal: 10x faster.
* ``sweep_<case>_test_top1`` — test accuracy of both sweeps. Goal: within 0.5 points of
  scikit-learn (goal expressed as the ratio (sklearn - 0.5) / sklearn).
* ``parity_<case>_top1`` — our solver vs scikit-learn at the same regularisation (the C the
  scikit-learn sweep chose), on the same features: the solver itself, without the search.

Features: the digits train / test split through the randomly initialised model above, plus a
larger synthetic set in the full run (Gaussian classes in 384-d: 8,000 train rows, 50
classes), since digits is small next to real transfer datasets.
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

from bench.common import Figure, main, time_call  # noqa: E402

BENCH = "probe"
ARCH_TINY_32PX = {"embed_dims": [32, 64, 96, 128], "depths": [1, 1, 2, 1],
                  "num_heads": [1, 2, 3, 4], "window_sizes": [7, 4, 2, 1]}
ARCH_32PX = {"embed_dims": [64, 128, 160, 320], "depths": [2, 2, 6, 2],
             "num_heads": [2, 4, 5, 10], "window_sizes": [7, 4, 2, 1]}


# --------------------------------------------------------------------------- extraction
def _extraction_figures(case: str, spec, dataset: str, split: str, image_size: int | None,
                        batch_size: int, repeats: int = 5) -> list[Figure]:
    """Extraction loop throughput (DataLoader + fused forward + memmap writes, from the cache
    entry's own timing) vs the forward alone on the same batches held in memory; both use the
    same warmed-up fused model. The two are alternated, best of ``repeats`` each (a shared
    machine's load swings a lot)."""
    from torch.utils.data import DataLoader

    from linear_probe.backbones import build_extractor
    from linear_probe.datasets import Preprocessed, eval_transform, get_info, load_split
    from linear_probe.extract import extract_splits
    from tinyvit_backbone.device import select_device

    info = get_info(dataset)
    size = image_size or info.default_image_size
    config = spec.data_config(size)
    prep = eval_transform(info, config)
    raw = load_split(info, split, None, int(config["input_size"][-1]))
    batches = [prep.normalise(images)
               for images, _ in DataLoader(Preprocessed(raw, prep.transform), batch_size=batch_size)]
    device = select_device()  # extraction runs where the CLI would run it
    model = build_extractor(spec, "pooled", device)
    n = sum(len(b) for b in batches)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward_all():
        with torch.inference_mode():
            for images in batches:
                model(images.to(device, non_blocking=True))
        sync()

    def pipeline() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            entry = extract_splits(spec, dataset, [split], cache_dir=cache, image_size=image_size,
                                   batch_size=batch_size, device=device, progress=False,
                                   extractor=model).splits[split]
            return entry.meta["extract_s"], time.perf_counter() - start

    forward_all()  # warm-up
    raw_runs, loop_runs, wall_runs = [], [], []
    for _ in range(repeats):
        raw_runs.append(time_call(forward_all, warmup=0, repeat=1))
        loop_s, wall_s = pipeline()
        loop_runs.append(loop_s)
        wall_runs.append(wall_s)
    raw_s, loop_s = min(raw_runs), min(loop_runs)
    return [Figure(BENCH, f"extract_{case}_images_per_s", n / loop_s, "img/s",
                   "raw fused forward on the same batches in memory", n / raw_s,
                   higher_is_better=True, goal=0.9,
                   extra={"images": n, "batch_size": batch_size, "loop_s": loop_s,
                          "raw_forward_s": raw_s, "wall_s_with_setup": min(wall_runs)})]


# --------------------------------------------------------------------------- sweep
def sklearn_clip_sweep(X_fit, y_fit, X_val, y_val, X_all, y_all) -> tuple[float, object, int]:
    """The CLIP paper's protocol with scikit-learn: binary search over C on val, final fit on
    train + val. Returns (C, fitted model, number of fits)."""
    from scipy.special import log_softmax
    from sklearn.linear_model import LogisticRegression

    from linear_probe.sweep import CLIP_C_GRID, binary_grid_search

    fits = 0
    # Same search as ours: index order strong -> weak regularisation and ties in val accuracy
    # broken by the val loss, so that differences come from the solvers only.
    grid = CLIP_C_GRID[::-1]

    def evaluate(i: int) -> tuple[float, float]:
        nonlocal fits
        fits += 1
        model = LogisticRegression(C=float(grid[i]), max_iter=1000).fit(X_fit, y_fit)
        log_proba = log_softmax(model.decision_function(X_val), axis=1)[np.arange(len(y_val)), y_val]
        return 100.0 * model.score(X_val, y_val), float(log_proba.mean())  # ties: lower val loss

    best, _ = binary_grid_search(evaluate, len(grid))
    C = float(grid[best])
    final = LogisticRegression(C=C, max_iter=1000).fit(X_all, y_all)
    return C, final, fits + 1


def _sweep_figures(case: str, X_train, y_train, X_test, y_test) -> list[Figure]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from linear_probe.metrics import topk_accuracy
    from linear_probe.solver import C_to_weight_decay, fit_lbfgs, standardisation
    from linear_probe.sweep import balanced_val_split, sweep_weight_decay

    X_train = np.ascontiguousarray(X_train, dtype=np.float32)
    X_test = np.ascontiguousarray(X_test, dtype=np.float32)
    num_classes = int(y_train.max()) + 1

    # ours, end to end (split, standardisation, search, refit, test scores)
    def ours():
        res = sweep_weight_decay(X_train, y_train, num_classes=num_classes)
        return res, topk_accuracy(res.head.logits(X_test), y_test)

    ours()  # warm-up: torch's first L-BFGS call pays one-off initialisation
    start = time.perf_counter()
    res, ours_acc = ours()
    ours_s = time.perf_counter() - start

    # scikit-learn, CLIP protocol, on the same split and the same standardisation
    fit_idx, val_idx = balanced_val_split(y_train)
    mu, sd = (t.numpy() for t in standardisation(X_train[fit_idx]))
    mu_all, sd_all = (t.numpy() for t in standardisation(X_train))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        C, model, sk_fits = sklearn_clip_sweep(
            (X_train[fit_idx] - mu) / sd, y_train[fit_idx], (X_train[val_idx] - mu) / sd,
            y_train[val_idx], (X_train - mu_all) / sd_all, y_train)
        sk_acc = 100.0 * model.score((X_test - mu_all) / sd_all, y_test)
        sk_s = time.perf_counter() - start

        # solver parity at one regularisation: sklearn's chosen C, both on train + val
        wd = C_to_weight_decay(C, len(y_train))
        head = fit_lbfgs(X_train, y_train, wd, num_classes=num_classes,
                         shift=torch.from_numpy(mu_all), scale=torch.from_numpy(sd_all))
        parity_ours = topk_accuracy(head.logits(X_test), y_test)
        parity_sk = 100.0 * LogisticRegression(C=C, max_iter=1000).fit(
            (X_train - mu_all) / sd_all, y_train).score((X_test - mu_all) / sd_all, y_test)

    shape = {"train": list(X_train.shape), "test": list(X_test.shape), "classes": num_classes}
    return [
        Figure(BENCH, f"sweep_{case}_seconds", ours_s, "s",
               "scikit-learn CLIP-protocol sweep (lbfgs from scratch, same C grid and search)",
               sk_s, higher_is_better=False, goal=10.0,
               extra={**shape, "ours_fits": res.fits, "sklearn_fits": sk_fits,
                      "ours_weight_decay": res.weight_decay, "sklearn_C": C,
                      "sklearn_C_as_weight_decay": C_to_weight_decay(C, len(fit_idx))}),
        Figure(BENCH, f"sweep_{case}_test_top1", ours_acc, "%", "scikit-learn CLIP-protocol sweep",
               sk_acc, higher_is_better=True, goal=(sk_acc - 0.5) / sk_acc,
               extra={"difference_points": ours_acc - sk_acc}),
        Figure(BENCH, f"parity_{case}_top1", parity_ours, "%",
               f"scikit-learn LogisticRegression at the same C ({C:.3g})", parity_sk,
               higher_is_better=True, goal=(parity_sk - 0.5) / parity_sk,
               extra={"weight_decay": wd, "difference_points": parity_ours - parity_sk}),
    ]


def _synthetic(n: int, dim: int, classes: int, seed: int = 0):
    """Gaussian classes with overlapping means: not separable (about 60% test accuracy)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((classes, dim)).astype(np.float32) * 0.15
    y = rng.integers(0, classes, n)
    X = means[y] + rng.standard_normal((n, dim)).astype(np.float32)
    return X, y


def run(quick: bool = True) -> list[Figure]:
    from linear_probe.backbones import ModelSpec
    from linear_probe.extract import extract_splits

    figures: list[Figure] = []
    # quick: a 4-stage TinyViT small enough for a one-minute run; full: TinyViT-5M widths
    spec = (ModelSpec("tinyvit", arch=ARCH_TINY_32PX, label="tinyvit-tiny") if quick
            else ModelSpec("tinyvit", arch=ARCH_32PX, label="tinyvit-5m-w421"))
    case = "tiny" if quick else "5m"
    # quick: the 540 test images; full: all 1,797 (less timer noise)
    figures += _extraction_figures(f"digits32_{case}", spec, "digits", "test" if quick else "all",
                                   32, 64)
    with tempfile.TemporaryDirectory() as cache:
        ex = extract_splits(spec, "digits", ["train", "test"], cache_dir=cache, device="cpu",
                            progress=False)
        train, test = ex.splits["train"], ex.splits["test"]
        figures += _sweep_figures(f"digits_{case}", np.array(train.features), train.labels,
                                  np.array(test.features), test.labels)
    if not quick:
        X, y = _synthetic(10000, 384, 50)
        figures += _sweep_figures("synthetic8k_384d_50c", X[:8000], y[:8000], X[8000:], y[8000:])
        figures += _jpeg_extraction()
    return figures


def _jpeg_extraction() -> list[Figure]:
    """224 px extraction from real JPEG files (decode + resize + crop in the pipeline; under
    4,096 images that runs in a prefetch thread beside the forward, as the CLI does)."""
    from PIL import Image

    from linear_probe.backbones import ModelSpec

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        for c in range(4):
            os.makedirs(os.path.join(root, "train", f"class{c}"))
            os.makedirs(os.path.join(root, "test", f"class{c}"))
            for i in range(64):  # 256 images, 8 batches: long enough for a steady state
                # smooth random images compress like photos (noise would bloat the JPEGs)
                small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((320, 240), Image.BICUBIC)
                img.save(os.path.join(root, "test", f"class{c}", f"{i}.jpg"), quality=90)
        return _extraction_figures("jpeg224", ModelSpec("tinyvit", arch="5m"),
                                   f"imagefolder:{root}", "test", 224, 32, repeats=2)


if __name__ == "__main__":
    sys.exit(main(run))
