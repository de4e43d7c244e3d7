"""Prove that the environment works: the compiled mmcv ops run on CPU, mmdet and mmseg import
and build models from their registries, `mim` answers, and torch is the pinned version. With
``--ops cuda-...`` (what tools/bootstrap.sh passes when it built CUDA ops) it also proves that
mmcv was compiled by torch's CUDA version and, where a GPU is visible, that nms and RoIAlign on
CUDA tensors agree with the CPU.

Run by tools/bootstrap.sh as its last step; exits non-zero with the reason on the first failure.
"""
import argparse
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", default=None,
                        help="the mmcv ops key bootstrap built (cpu, cuda-sm_XY...); cuda keys "
                             "add the CUDA checks")
    args = parser.parse_args(argv)
    import torch

    if torch.__version__.split("+")[0] != PINNED_TORCH:
        sys.exit(f"torch is {torch.__version__}, expected {PINNED_TORCH}: some pip call changed it; "
                 "delete .venv and rerun tools/bootstrap.sh")
    from mmcv.ops import RoIAlign, nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2], keep
    feats = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)(feats, torch.tensor([[0, 0, 0, 4, 4.]]))
    assert out.shape == (1, 1, 2, 2), out.shape

    import mmdet
    import mmseg
    from mmdet.registry import MODELS as DET_MODELS
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS as SEG_MODELS

    init_default_scope("mmdet")
    DET_MODELS.build(dict(type="ResNet", depth=18))
    init_default_scope("mmseg")
    SEG_MODELS.build(dict(type="ResNetV1c", depth=18))

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
          f"{ver}: mmcv ops nms/RoIAlign ran on CPU, registries built models{cuda_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
