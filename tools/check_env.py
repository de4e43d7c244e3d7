"""Prove that the environment works: the compiled mmcv ops run on CPU, mmdet and mmseg import
and build models from their registries, `mim` answers, and torch is the pinned version.

Run by tools/bootstrap.sh as its last step; exits non-zero with the reason on the first failure.
"""
import shutil
import subprocess
import sys
from pathlib import Path

PINNED_TORCH = "2.14.1"


def main() -> int:
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

    mim = shutil.which("mim") or str(Path(sys.executable).with_name("mim"))
    ver = subprocess.run([mim, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    print(f"torch {torch.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, "
          f"{ver}: mmcv ops nms/RoIAlign ran on CPU, registries built models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
