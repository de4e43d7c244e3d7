"""The mini reproduction end to end at its smallest scale, and its reuse of finished stages."""
import json
import os

import pytest
import torch

from tinyvit_backbone.checkpoint import backbone_state_dict
from tinyvit_backbone.distill.reproduce import DEMO_ARCH, run_pipeline
from tinyvit_backbone.distill.store import LogitStore


@pytest.mark.slow
def test_pipeline_smoke_and_rerun_reuses_outputs(tmp_path):
    out = str(tmp_path / "repro")
    result = run_pipeline(out, scale="smoke", with_online=True, progress=False,
                          log=lambda _: None)
    assert set(result["accuracy"]) == {"teacher", "store", "labels", "online"}
    assert all(0 <= v <= 100 for v in result["accuracy"].values())
    assert result["accuracy"]["teacher"] > 20  # chance is 10%: one epoch already learns
    for key in ("store", "labels", "online", "init"):
        state = torch.load(result["weights"][key], weights_only=True)
        from tinyvit_backbone.backbone import TinyViT

        backbone = TinyViT(arch=DEMO_ARCH)
        assert set(backbone_state_dict(result["weights"][key], backbone.state_dict())) == \
            set(backbone.state_dict())
        assert "head.fc.weight" in state
    assert LogitStore.open(os.path.join(out, "store")).epochs_complete == [0, 1]
    assert json.load(open(os.path.join(out, "results.json")))["accuracy"] == result["accuracy"]

    messages = []
    again = run_pipeline(out, scale="smoke", with_online=True, progress=False,
                         log=messages.append)
    assert again["accuracy"] == result["accuracy"]
    assert sum("finished run found, skipped" in m for m in messages) == 4  # teacher + 3 students
    assert not any("[save-logits] epoch" in m for m in messages)  # store reused
