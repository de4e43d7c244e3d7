"""The mini reproduction end to end at its smallest scale, and its reuse of finished stages."""
import json
import os

import pytest
import torch

from tinyvit_backbone.backbone import TinyViT
from tinyvit_backbone.checkpoint import backbone_state_dict
from tinyvit_backbone.distill.reproduce import DEMO_ARCH, run_pipeline
from tinyvit_backbone.distill.store import LogitStore


@pytest.mark.slow
def test_pipeline_smoke_and_rerun_reuses_outputs(tmp_path):
    out = str(tmp_path / "repro")
    lines = []
    result = run_pipeline(out, scale="smoke", with_online=True, progress=False,
                          value_formats=("fp16", "log8"), log=lines.append)
    # one step each, numbered out of all of them (two used to say "4/4")
    steps = [line.split()[1] for line in lines if line.startswith("[mini-repro] ")
             and line.split()[1][0].isdigit()]
    assert steps == [f"{i}/6" for i in range(1, 7)]
    # the students' architecture, for --arch of the probes (kshot, sweep)
    assert result["arch"] == os.path.join(os.path.abspath(out), "student_arch.json")
    assert json.load(open(result["arch"])) == TinyViT(arch=DEMO_ARCH).arch
    assert any(f"kshot --arch {os.path.join(out, 'student_arch.json')}" in line for line in lines)
    assert set(result["accuracy"]) == {"teacher", "store", "store_log8", "labels", "online"}
    assert result["stores"]["fp16"]["record_bytes"] == 4 + 5 * 4 + 4
    assert result["stores"]["log8"]["record_bytes"] == 4 + 3 + 4 + 4 + 4  # 4-bit indices
    assert all(0 <= v <= 100 for v in result["accuracy"].values())
    assert result["accuracy"]["teacher"] > 20  # chance is 10%: one epoch already learns
    for key in ("store", "store_log8", "labels", "online", "init"):
        state = torch.load(result["weights"][key], weights_only=True)
        backbone = TinyViT(arch=result["arch"])
        assert set(backbone_state_dict(result["weights"][key], backbone.state_dict())) == \
            set(backbone.state_dict())
        assert "head.fc.weight" in state
    assert LogitStore.open(os.path.join(out, "store")).epochs_complete == [0, 1]
    assert LogitStore.open(os.path.join(out, "store_log8")).record.values == "log8"
    assert json.load(open(os.path.join(out, "results.json")))["accuracy"] == result["accuracy"]

    messages = []
    again = run_pipeline(out, scale="smoke", with_online=True, progress=False,
                         value_formats=("fp16", "log8"), log=messages.append)
    assert again["accuracy"] == result["accuracy"]
    assert sum("finished run found, skipped" in m for m in messages) == 5  # teacher + 4 students
    # the stores are scanned again and reused: nothing written
    assert sum("sound, nothing to write" in m for m in messages) == 2
    assert not any("records written" in m for m in messages)
