"""Reproduce one of the paper's transfer tables: run every row the given weights and data allow,
then regenerate the table with the published numbers beside ours.

    # Table 5: linear probe (MoCo v3 protocol) + cdfsl few-shot, per pretraining row
    python tools/reproduce.py table5 --weights in21k-distill=tiny_vit_21m_22k_distill \\
        in1k=tiny_vit_21m_1k --data-root data --out results/table5
    # Table 6: collect (or, with --train, train) the three Cascade Mask R-CNN runs
    python tools/reproduce.py table6 --work-dirs work_dirs --out results/table6 [--train --gpus 8]

Weights are registry names, URLs, timm hub tags or files. Missing rows and datasets are listed
in the JSON result with the command or download that fills them. See reproduction.reproduce.
"""
import argparse
import os
import shlex
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def build_parser() -> argparse.ArgumentParser:
    from tinyvit_backbone.cli import add_runtime_flags, subcommands

    parser = argparse.ArgumentParser(prog="tools/reproduce.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = subcommands(parser)
    t5 = sub.add_parser("table5", help="linear probe + cdfsl few-shot of TinyViT-21M")
    t5.add_argument("--weights", nargs="+", default=[], metavar="ROW=WEIGHTS",
                    help="per row: in1k, in1k-distill, in21k, in21k-distill = a registry name, "
                         "URL, timm/ hub tag or file (default: none; rows without weights are "
                         "listed with the weights that fill them)")
    t5.add_argument("--data-root", default=None, help="folder holding the datasets "
                    "(default $TINYVIT_DATA or ./data)")
    t5.add_argument("--download", action="store_true",
                    help="first fetch the missing datasets torchvision can fetch (CIFAR-10/100, "
                         "Flowers, Pets, EuroSAT); the others are listed with their source")
    t5.add_argument("--out", default="results/table5",
                    help="folder for results.jsonl, the two halves of the table (.md, .csv) "
                         "and summary.json (default results/table5)")
    t5.add_argument("--only", choices=["linear", "fewshot"], help="one half of the table")
    t5.add_argument("--freeze-backbone", action="store_true",
                    help="cdfsl with a frozen backbone (default: fine-tuned, cdfsl's default)")
    small = t5.add_argument_group("smoke scale (records then differ from the paper's protocol)")
    small.add_argument("--mocov3-epochs", type=int,
                       help="MoCo v3 linear-probe epochs (default: the recipe's 90)")
    small.add_argument("--episodes", type=int, default=600,
                       help="cdfsl episodes per shot count (default %(default)s)")
    small.add_argument("--shots", type=int, nargs="+", default=[5, 20, 50],
                       help="cdfsl shots per class (default 5 20 50)")
    small.add_argument("--image-size", type=int,
                       help="input side in pixels (default: the dataset's, else the model's 224)")
    add_runtime_flags(t5, workers=None)
    t6 = sub.add_parser("table6", help="the three Cascade Mask R-CNN 1x COCO runs")
    t6.add_argument("--work-dirs", nargs="*", default=None, metavar="DIR",
                    help="mmengine work dirs, or folders holding them (default work_dirs, if it "
                         "exists); with --train the runs are trained into the first, created "
                         "if missing")
    t6.add_argument("--out", default="results/table6",
                    help="folder for table6.md, table6.csv and summary.json (default "
                         "results/table6)")
    t6.add_argument("--train", action="store_true",
                    help="train the rows without a complete run (resuming started ones), "
                         "after checking the GPUs and COCO")
    t6.add_argument("--gpus", type=int, default=8,
                    help="GPUs, one process each, per run with --train (default 8, the "
                         "recipe's 8 x 2 images)")
    return parser


def cmd_table5(args, command: str | None = None):
    from linear_probe.settings import FeatureSettings
    from reproduction.reproduce import parse_weights, reproduce_table5

    settings = FeatureSettings(data_root=args.data_root, image_size=args.image_size,
                               workers=args.workers, device=args.device, amp=args.amp,
                               progress=args.progress)
    return reproduce_table5(parse_weights(args.weights), args.out, linear=args.only != "fewshot",
                            fewshot=args.only != "linear", freeze_backbone=args.freeze_backbone,
                            shots=args.shots, episodes=args.episodes,
                            mocov3_epochs=args.mocov3_epochs, settings=settings,
                            download=args.download, command=command)


def cmd_table6(args):
    from reproduction.reproduce import reproduce_table6

    work_dirs = args.work_dirs
    if work_dirs is None:  # only a folder named on the command line must exist
        work_dirs = ["work_dirs"] if args.train or os.path.isdir("work_dirs") else []
    return reproduce_table6(work_dirs, args.out, train=args.train, config_root=ROOT,
                            gpus=args.gpus)


def main(argv=None) -> int:
    from tinyvit_backbone.cli import run_commands

    # mmengine imports pkg_resources, whose deprecation warning would be the first line a
    # user reads before any message of ours
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

    argv = sys.argv[1:] if argv is None else list(argv)
    command = "python tools/reproduce.py " + shlex.join(argv)
    return run_commands(build_parser(), {"table5": lambda a: cmd_table5(a, command),
                                         "table6": cmd_table6}, argv,
                        errors=(ValueError, OSError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
