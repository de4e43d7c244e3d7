"""Prove that the environment works: the compiled mmcv ops run on CPU, mmdet and mmseg import
and build models from their registries, `mim` answers, and torch is the pinned version. With
`--ops cuda-...` (what tools/bootstrap.sh passes when it built CUDA ops) it also proves that
mmcv was compiled by torch's CUDA version and, where a GPU is visible, that nms and RoIAlign on
CUDA tensors agree with the CPU. With `--ops lite` (mmcv-lite) the ops are not looked for.
With `--kept FILE` (a bring-your-own-torch environment) torch need not be the pinned version;
instead every `name==version` of FILE must still be that version, imported from outside the
venv: the interpreter's own packages, which no pip call may have replaced.

Run by tools/bootstrap.sh as its last step; exits non-zero with the reason on the first failure.
`--editable-at ROOT` alone (also run by bootstrap, from a neutral folder with `python -I`)
only checks that the environment imports the project from the checkout at ROOT.
"""
import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

PINNED_TORCH = "2.14.1"


def check_cuda_ops() -> str:
    import torch
    from mmcv.ops import RoIAlign, get_compiling_cuda_version, nms

    compiled = get_compiling_cuda_version()
    if compiled != torch.version.cuda:
        sys.exit(f"mmcv's ops were compiled with CUDA {compiled!r}, torch has CUDA "
                 f"{torch.version.cuda}: delete .venv and rerun tools/bootstrap.sh")
    if not torch.cuda.is_available():
        return f"mmcv CUDA ops compiled with CUDA {compiled} (no GPU visible to run them)"
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(64, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(64, 2, generator=g) * 20], 1)
    scores = torch.rand(64, generator=g)
    _, keep_cpu = nms(boxes, scores, iou_threshold=0.5)
    _, keep_gpu = nms(boxes.cuda(), scores.cuda(), iou_threshold=0.5)
    if keep_gpu.cpu().tolist() != keep_cpu.tolist():
        sys.exit("mmcv nms on CUDA keeps other boxes than on CPU: the CUDA build is broken")
    feats = torch.rand(1, 4, 16, 16, generator=g)
    rois = torch.tensor([[0, 1.5, 2.0, 11.0, 9.5], [0, 0, 0, 15, 15]])
    align = RoIAlign((3, 3), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    diff = (align(feats.cuda(), rois.cuda()).cpu() - align(feats, rois)).abs().max().item()
    if diff > 1e-5:
        sys.exit(f"mmcv RoIAlign on CUDA differs from CPU by {diff:.2e}: the CUDA build is broken")
    return f"mmcv CUDA ops (CUDA {compiled}) agree with CPU on {torch.cuda.get_device_name()}"


def editable_at(root: Path) -> str | None:
    """None when the project's packages resolve into ``root``, else where they resolve. Only
    looks them up (``find_spec`` runs no package code), through whatever the editable install
    put into site-packages: a path entry or setuptools' finder."""
    root = Path(os.path.realpath(root))
    for name in ("tinyvit_backbone", "linear_probe"):
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec and spec.origin else None
        if origin is None or root not in Path(os.path.realpath(origin)).parents:
            return f"{name} resolves to {origin}"
    return None


def check_kept(constraints: Path) -> str:
    """Every ``name==version`` of ``constraints`` that names the interpreter's own stack is
    installed at that version outside this venv."""
    kept = []
    for line in constraints.read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if name not in ("torch", "torchvision", "timm", "numpy"):
            continue
        dist = importlib.metadata.distribution(name)
        where = Path(os.path.realpath(dist.locate_file("")))
        if dist.version != version:
            sys.exit(f"{name} is {dist.version}, the interpreter brought {version} "
                     f"({constraints}): some pip call replaced it; delete the venv and rerun")
        if Path(os.path.realpath(sys.prefix)) in (where, *where.parents):
            sys.exit(f"{name} {version} was installed into the venv ({where}), not kept from the "
                     "interpreter: delete the venv and rerun")
        kept.append(f"{name} {version}")
    return ", ".join(kept)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default=None,
                        help="the mmcv ops key bootstrap built (cpu, cuda-sm_XY..., or lite for "
                             "mmcv-lite); cuda keys add the CUDA checks, lite skips the ops")
    parser.add_argument("--kept", type=Path, default=None,
                        help="a bring-your-own-torch environment's generated constraints: its "
                             "torch, torchvision, timm and numpy must be the interpreter's")
    parser.add_argument("--editable-at", type=Path, default=None, metavar="ROOT",
                        help="only check that the project is imported from the checkout ROOT")
    args = parser.parse_args(argv)
    if args.editable_at is not None:
        where = editable_at(args.editable_at)
        if where:
            print(f"the environment imports the project from elsewhere: {where}", file=sys.stderr)
            return 1
        return 0
    import torch

    if args.kept is not None:
        kept_note = "; kept " + check_kept(args.kept)
    elif torch.__version__.split("+")[0] != PINNED_TORCH:
        sys.exit(f"torch is {torch.__version__}, expected {PINNED_TORCH}: some pip call changed it; "
                 "delete .venv and rerun tools/bootstrap.sh")
    else:
        kept_note = ""
    if args.ops == "lite":
        return _check_rest(torch, args, "mmcv-lite (no compiled ops)" + kept_note)
    from mmcv.ops import RoIAlign, nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2], keep
    feats = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)(feats, torch.tensor([[0, 0, 0, 4, 4.]]))
    assert out.shape == (1, 1, 2, 2), out.shape
    return _check_rest(torch, args, "mmcv ops nms/RoIAlign ran on CPU" + kept_note)


def _check_rest(torch, args, ops_note: str) -> int:
    import mmdet
    import mmseg
    from mmdet.registry import MODELS as DET_MODELS
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS as SEG_MODELS

    if args.ops == "lite":  # their model packages import mmcv.ops, which needs the compiled ops
        built = "mmdet and mmseg import (their models need mmcv's ops)"
    else:
        init_default_scope("mmdet")
        DET_MODELS.build(dict(type="ResNet", depth=18))
        init_default_scope("mmseg")
        SEG_MODELS.build(dict(type="ResNetV1c", depth=18))
        built = "registries built models"

    cuda_note = ""
    if args.ops and args.ops.startswith("cuda"):
        cuda_note = "; " + check_cuda_ops()
    elif args.ops == "cpu":
        from mmcv.ops import get_compiling_cuda_version
        if get_compiling_cuda_version() != "not available":
            sys.exit("a CPU build of mmcv was asked for, but the installed one has CUDA ops: "
                     "delete .venv and rerun tools/bootstrap.sh")

    mim = shutil.which("mim") or str(Path(sys.executable).with_name("mim"))
    ver = subprocess.run([mim, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    print(f"torch {torch.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, "
          f"{ver}: {ops_note}, {built}{cuda_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
