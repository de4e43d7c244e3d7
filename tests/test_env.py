"""The environment the bootstrap promises: compiled mmcv ops on CPU, both registries, the
pinned torch, and mmengine resume under torch's weights_only loading."""
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]


def test_torch_is_the_pinned_version():
    pinned = [line.split("==")[1].strip() for line in (ROOT / "tools/constraints.txt").read_text().splitlines()
              if line.startswith("torch==")]
    assert torch.__version__.split("+")[0] == pinned[0]


def test_mmcv_ops_run_on_cpu():
    from mmcv.ops import RoIAlign, nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    feats = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    out = RoIAlign((1, 1), spatial_scale=1.0, sampling_ratio=1, aligned=True)(
        feats, torch.tensor([[0, 0, 0, 4, 4.0]]))
    # the centre sample of a 4x4 ramp 0..15 is its mean
    assert out.item() == pytest.approx(7.5)


def test_registries_build_tinyvit():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    import tinyvit_backbone  # noqa: F401  (registers)

    for registry in (DET, SEG):
        model = registry.build(dict(type="TinyViT", arch="5m", out_indices=(3,)))
        assert model(torch.zeros(1, 3, 64, 64))[0].shape == (1, 320, 2, 2)


def test_check_env_script_passes():
    out = subprocess.run([sys.executable, str(ROOT / "tools/check_env.py")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ran on CPU" in out.stdout


def _toy_runner(work_dir, max_iters, resume):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import TensorDataset

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x, y, mode="loss"):
            out = self.fc(x)
            return dict(loss=nn.functional.cross_entropy(out, y)) if mode == "loss" else out

    def collate(batch):
        return dict(x=torch.stack([b[0] for b in batch]), y=torch.stack([b[1] for b in batch]))

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g))
    return Runner(
        model=Toy(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=data, batch_size=4, collate_fn=collate,
                              sampler=dict(type="DefaultSampler", shuffle=True)),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1)),
        param_scheduler=dict(type="LinearLR", start_factor=0.5, by_epoch=False, end=4),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=2, by_epoch=False)),
        resume=resume, randomness=dict(seed=0))


def test_mmengine_resume_works_with_weights_only_loading(tmp_path):
    import tinyvit_backbone  # noqa: F401  (registers the safe globals)

    _toy_runner(tmp_path, max_iters=2, resume=False).train()
    runner = _toy_runner(tmp_path, max_iters=4, resume=True)
    runner.train()
    assert runner.iter == 4
    # the message hub's history survived the round trip
    assert runner.message_hub.get_scalar("train/loss").data[0].size >= 3


def test_safe_getattr_refuses_anything_but_history_buffer_methods(tmp_path):
    from collections import OrderedDict

    from mmengine.logging.history_buffer import HistoryBuffer

    import tinyvit_backbone  # noqa: F401

    class Reach:
        def __init__(self, owner, name):
            self.owner, self.name = owner, name

        def __reduce__(self):
            return (getattr, (self.owner, self.name))

    ok = tmp_path / "ok.pt"
    torch.save({"m": Reach(HistoryBuffer, "mean")}, ok)
    assert torch.load(ok, weights_only=True)["m"] is HistoryBuffer.mean
    for owner, name in [(OrderedDict, "fromkeys"), (HistoryBuffer, "__init__")]:
        path = tmp_path / "evil.pt"
        torch.save({"x": Reach(owner, name)}, path)
        with pytest.raises(pickle.UnpicklingError, match="refusing getattr"):
            torch.load(path, weights_only=True)
