"""Detection benchmarks on the embedded scenes, each against Swin-T measured in the same run.

(a) Learning is real: Mask R-CNN with TinyViT-5M, trained from scratch on the embedded scenes,
    evaluated on the held-out scenes every few iterations (COCO bbox mAP through pycocotools);
    baseline: Mask R-CNN with Swin-T under the identical budget. Figures: final bbox mAP and
    training wall time; the mAP curves and CPU seconds are in ``extra``.
(b) Cost of the paper's detector: one Cascade Mask R-CNN training iteration (forward, backward,
    AdamW step) with TinyViT-21M vs Swin-T at the same input size and batch: seconds per
    iteration and peak memory (GPU: max allocated; CPU: peak resident set of a fresh process
    per model, so neither model's allocations count for the other).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import Figure, build_parser, subprocess_env  # noqa: E402
from bench.common import main as bench_main  # noqa: E402
from reproduction.runs import eval_lines  # noqa: E402

SWIN_MASK_RCNN = "det_configs/mask_rcnn_swin-t_1x.py"


def _config(path: str, data_root: str, **overlay):
    from mmengine.config import Config

    import tinyvit_backbone  # noqa: F401
    from tinyvit_backbone.config_overlay import apply_overlay

    cfg = Config.fromfile(str(ROOT / path))
    return apply_overlay(cfg, data_root, **overlay)


# ----------------------------------------------------------------------------- (a) learning
def learning_curve(config: str, data_root: str, iters: int, every: int, lr: float) -> dict:
    from mmengine.runner import Runner

    with tempfile.TemporaryDirectory() as work_dir:
        cfg = _config(config, data_root, iters=iters, lr=lr, work_dir=work_dir)
        cfg.train_cfg.val_interval = every
        cfg.log_level = "WARNING"
        runner = Runner.from_cfg(cfg)
        wall, cpu = time.perf_counter(), time.process_time()
        runner.train()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        evals = eval_lines(work_dir, "coco/bbox_mAP")
    curve = [(every * (i + 1), line["coco/bbox_mAP"]) for i, line in enumerate(evals)]
    return dict(curve=curve, final=curve[-1][1], wall_s=wall, cpu_s=cpu)


# ----------------------------------------------------------------------------- (b) iteration cost
def _iteration_worker(config: str, size: int, batch: int, iters: int, data_root: str) -> dict:
    """Runs in a fresh process: seconds per training iteration and peak memory."""
    import torch
    from mmengine.runner import Runner

    with tempfile.TemporaryDirectory() as work_dir:
        cfg = _config(config, data_root, iters=iters, image_size=size, batch_size=batch,
                      work_dir=work_dir)
        cfg.log_level = "WARNING"
        runner = Runner.from_cfg(cfg)
        model = runner.model.train()
        wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
        loader = iter(runner.build_dataloader(cfg.train_dataloader))
        batches = [next(loader) for _ in range(iters + 1)]
        model.train_step(batches[0], wrapper)  # warm-up: allocator, kernels
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for data in batches[1:]:
            model.train_step(data, wrapper)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
        return dict(s_per_iter=(time.perf_counter() - start) / iters, peak_mib=peak,
                    device="cuda" if torch.cuda.is_available() else "cpu")


def iteration_cost(config: str, size: int, batch: int, iters: int, data_root: str) -> dict:
    cmd = [sys.executable, str(Path(__file__)), "--worker", config, "--size", str(size),
           "--batch", str(batch), "--iters", str(iters), "--data-root", data_root]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                         env=subprocess_env(ROOT))
    if out.returncode != 0:
        raise RuntimeError(f"{config} iteration worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[Figure]:
    from tinyvit_backbone.config_overlay import ensure_scenes

    data_root = ensure_scenes(str(ROOT / "data" / "embedded" / "scenes"))
    iters, every = (30, 15) if quick else (200, 50)
    ours = learning_curve("det_configs/mask_rcnn_tinyvit5m_1x.py", data_root, iters, every, 3e-4)
    swin = learning_curve(SWIN_MASK_RCNN, data_root, iters, every, 3e-4)
    budget = dict(iters=iters, batch=2, image_size=128, lr=3e-4, init="random")
    figures = [
        Figure("detection", f"Mask R-CNN TinyViT-5M bbox mAP after {iters} iterations",
               ours["final"], "bbox mAP", "Mask R-CNN Swin-T, same budget", swin["final"],
               extra=dict(budget, curve=ours["curve"], baseline_curve=swin["curve"],
                          cpu_s=ours["cpu_s"], baseline_cpu_s=swin["cpu_s"])),
        Figure("detection", f"Mask R-CNN TinyViT-5M training time for {iters} iterations",
               ours["wall_s"], "s", "Mask R-CNN Swin-T, same budget", swin["wall_s"],
               higher_is_better=False, extra=budget),
    ]
    size, batch, n = (256, 1, 2) if quick else (512, 2, 3)
    tiny = iteration_cost("det_configs/cascade_tinyvit21m.py", size, batch, n, data_root)
    base = iteration_cost("det_configs/cascade_swin-t_1x.py", size, batch, n, data_root)
    where = f"{size}x{size} batch {batch}"
    figures += [
        Figure("detection", f"Cascade Mask R-CNN TinyViT-21M train iteration @{where}",
               tiny["s_per_iter"], "s/iter", "Cascade Mask R-CNN Swin-T", base["s_per_iter"],
               higher_is_better=False, extra=dict(device=tiny["device"])),
        Figure("detection", f"Cascade Mask R-CNN TinyViT-21M peak memory @{where}",
               tiny["peak_mib"], "MiB", "Cascade Mask R-CNN Swin-T", base["peak_mib"],
               higher_is_better=False, extra=dict(device=tiny["device"])),
    ]
    return figures


def main(argv=None) -> int:
    parser = build_parser(__doc__)
    g = parser.add_argument_group(
        "iteration worker", "The Cascade iteration cost is timed in a fresh process per model, "
        "started with these options; it prints one JSON line.")
    g.add_argument("--worker", metavar="CONFIG",
                   help="time training iterations of this config instead of the benchmark")
    g.add_argument("--size", type=int, default=512,
                   help="input side in pixels (default %(default)s)")
    g.add_argument("--batch", type=int, default=2, help="images per iteration (default %(default)s)")
    g.add_argument("--iters", type=int, default=3,
                   help="timed iterations after one warm-up (default %(default)s)")
    g.add_argument("--data-root", default=str(ROOT / "data" / "embedded" / "scenes"),
                   help="the embedded scenes' folder (default: data/embedded/scenes of the "
                        "checkout)")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_iteration_worker(args.worker, args.size, args.batch, args.iters,
                                           args.data_root)))
        return 0
    return bench_main(run, argv, parser)


if __name__ == "__main__":
    sys.exit(main())
