"""Train any det_configs/ or seg_configs/ config with mmengine's Runner, optionally on the
embedded scenes (the CPU overlay of tinyvit_backbone.config_overlay).

    python tools/train.py det_configs/mask_rcnn_tinyvit5m_1x.py --embedded --iters 20
    torchrun --nproc_per_node 2 tools/train.py CONFIG --embedded --launcher pytorch

Without --embedded this does what `mim train mmdet|mmseg CONFIG` does (mmdet's and mmseg's
tools/train.py), for both libraries. Distribution comes from mmengine's launchers unchanged.

As in mmdet's train.py: the work dir is --work-dir if given, else the config's work_dir, else
work_dirs/<config name> (with --embedded: work_dirs/<config name>_embedded, the TinyViT size in
the name following --arch); --resume alone continues from the work dir's latest checkpoint,
--resume PATH from that checkpoint. A run resumed after its last iteration (stopped while it
was being evaluated) is evaluated, not left without metrics.

Before anything is built or written, the files the config's train and val dataloaders read are
checked: a missing COCO / ADE20K is named with the command that says how to get it.
"""
import argparse
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    # mmengine imports pkg_resources, whose deprecation warning would be the first line a
    # user reads before any message of ours
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    from mmengine.config import DictAction

    from tinyvit_backbone.config_overlay import add_overlay_options

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="an mmdet or mmseg config file (det_configs/*.py, "
                        "seg_configs/*.py or your own)")
    parser.add_argument("--work-dir", help="where checkpoints and logs go (default: the config's "
                        "work_dir, else work_dirs/<config name>[_embedded])")
    parser.add_argument("--resume", nargs="?", type=str, const="auto", metavar="PATH",
                        help="resume training: from PATH, or (no PATH) from the latest "
                             "checkpoint of the work dir")
    parser.add_argument("--amp", action="store_true", help="mixed precision (GPU)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="mmengine's launcher: none (one process, default), pytorch "
                             "(under torchrun; gloo on CPU), slurm or mpi")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        metavar="KEY=VALUE", help="override config values, as in mmdet's "
                        "train.py (e.g. train_cfg.max_epochs=1 work_dir=/tmp/w; default: none)")
    embedded = parser.add_argument_group(
        "embedded scenes (CPU overlay)", "Train and evaluate CONFIG's model and recipe on the "
        "embedded scenes instead of COCO / ADE20K:\nsmall images, BN for SyncBN, fp32, a few "
        "iterations (tinyvit_backbone.config_overlay).")
    embedded.add_argument("--embedded", action="store_true",
                          help="apply the overlay (the options below only act with it)")
    add_overlay_options(embedded)
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0,
                        help="set by the launcher (torch.distributed.launch; default 0); not "
                             "needed by hand")
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def build_config(args):
    from mmengine.config import Config

    from tinyvit_backbone.config_overlay import apply_overlay, ensure_scenes, overlay_name

    if not os.path.isfile(args.config):
        raise SystemExit(f"error: config not found: {args.config}")
    cfg = Config.fromfile(args.config)
    name = os.path.splitext(os.path.basename(args.config))[0]
    if args.embedded:
        ensure_scenes(args.data_root)
        cfg = apply_overlay(cfg, args.data_root, iters=args.iters, image_size=args.image_size,
                            batch_size=args.batch_size, lr=args.lr, arch=args.arch,
                            backbone_checkpoint=args.backbone_checkpoint)
        name = overlay_name(name, args.arch) + "_embedded"
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


def check_data(cfg, config: str) -> None:
    """Refuse to start (before the Runner writes its work dir or logs the config) when the
    files of the train / val dataloaders are missing; the message says how to get them."""
    from tinyvit_backbone.config_data import data_problem

    problem = data_problem(cfg, config=config)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def final_evaluation_hook():
    """A hook that evaluates a run whose training ended in this launch without an evaluation.

    mmengine's train loops evaluate after their last iteration, but a run resumed from its last
    checkpoint (it stopped while being evaluated) has no iteration left: the loop ends at once,
    and the run would exit 0 with no metrics."""
    from mmengine.hooks import Hook

    class FinalEvaluationHook(Hook):
        evaluated = False

        def after_val_epoch(self, runner, metrics=None):
            self.evaluated = True

        def after_train(self, runner):
            if self.evaluated or runner.val_loop is None or runner.iter < runner.max_iters:
                return
            runner.logger.info(f"Training had ended at iteration {runner.iter} with no "
                               "evaluation after it: evaluating the last checkpoint now.")
            runner.val_loop.run()

    return FinalEvaluationHook()


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner

    import tinyvit_backbone  # noqa: F401  (registers TinyViT; lets resume load checkpoints)
    from tinyvit_backbone.checkpoint import CheckpointError

    cfg = build_config(args)
    check_data(cfg, args.config)
    setup_cpu_distributed(cfg)
    try:
        runner = Runner.from_cfg(cfg)
        runner.register_hook(final_evaluation_hook(), priority="LOWEST")
        runner.train()
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
