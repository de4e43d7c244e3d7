"""Train any det_configs/ or seg_configs/ config with mmengine's Runner, optionally on the
embedded scenes (the CPU overlay of tinyvit_backbone.config_overlay).

    python tools/train.py det_configs/mask_rcnn_tinyvit5m_1x.py --embedded --iters 20
    torchrun --nproc_per_node 2 tools/train.py CONFIG --embedded --launcher pytorch

Without --embedded this does what `mim train mmdet|mmseg CONFIG` does (mmdet's and mmseg's
tools/train.py), for both libraries. Distribution comes from mmengine's launchers unchanged.

As in mmdet's train.py: the work dir is --work-dir if given, else the config's ``work_dir``, else
``work_dirs/<config name>``; ``--resume`` alone continues from the work dir's latest checkpoint,
``--resume PATH`` from that checkpoint.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--work-dir", help="default: work_dirs/<config name>[_embedded]")
    parser.add_argument("--resume", nargs="?", type=str, const="auto", metavar="PATH",
                        help="resume training: from PATH, or (no PATH) from the latest "
                             "checkpoint of the work dir")
    parser.add_argument("--amp", action="store_true", help="mixed precision (GPU)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    embedded = parser.add_argument_group("embedded scenes (CPU overlay)")
    embedded.add_argument("--embedded", action="store_true")
    embedded.add_argument("--data-root", default="data/embedded/scenes")
    embedded.add_argument("--iters", type=int, default=20)
    embedded.add_argument("--image-size", type=int, default=128)
    embedded.add_argument("--batch-size", type=int, default=2)
    embedded.add_argument("--lr", type=float)
    embedded.add_argument("--arch", help="a smaller TinyViT: 5m / 11m / 21m / arch JSON")
    embedded.add_argument("--backbone-checkpoint", help="backbone weights (default: random)")
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def build_config(args):
    from mmengine.config import Config

    from tinyvit_backbone.config_overlay import apply_overlay, ensure_scenes

    if not os.path.isfile(args.config):
        raise SystemExit(f"error: config not found: {args.config}")
    cfg = Config.fromfile(args.config)
    name = os.path.splitext(os.path.basename(args.config))[0]
    if args.embedded:
        ensure_scenes(args.data_root)
        cfg = apply_overlay(cfg, args.data_root, iters=args.iters, image_size=args.image_size,
                            batch_size=args.batch_size, lr=args.lr, arch=args.arch,
                            backbone_checkpoint=args.backbone_checkpoint)
        name += "_embedded"
    cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or os.path.join("work_dirs", name)
    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not os.path.isfile(args.resume):
            raise SystemExit(f"error: --resume {args.resume}: no such checkpoint file (give an "
                             "iter_N.pth / epoch_N.pth of an earlier run, or --resume alone "
                             "for the work dir's latest)")
        cfg.resume = True
        cfg.load_from = args.resume
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    return cfg


def setup_cpu_distributed(cfg) -> None:
    """Let mmengine's pytorch launcher run on machines without GPUs.

    mmengine 0.10.7 calls torch.cuda.set_device in its pytorch launcher and gives DDP
    ``device_ids=[LOCAL_RANK]``; both only exist with GPUs. Without one, the process group is
    set up here (gloo, from torchrun's environment), which the Runner then uses as is, and DDP
    gets ``device_ids=None``, as CPU modules require.
    """
    import torch

    from tinyvit_backbone.distributed import init_distributed

    if cfg.launcher != "pytorch" or torch.cuda.is_available():
        return
    init_distributed(torch.device("cpu"), always=True)
    wrapper = dict(type="MMDistributedDataParallel", broadcast_buffers=False,
                   find_unused_parameters=cfg.get("find_unused_parameters", False))
    wrapper.update(cfg.get("model_wrapper_cfg") or {})
    wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner

    import tinyvit_backbone  # noqa: F401  (registers TinyViT; lets resume load checkpoints)
    from tinyvit_backbone.checkpoint import CheckpointError

    cfg = build_config(args)
    setup_cpu_distributed(cfg)
    try:
        runner = Runner.from_cfg(cfg)
        runner.train()
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
