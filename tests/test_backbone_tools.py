"""Converter CLI, layer-decay optimizer constructor, fast inference path."""
import json

import pytest
import timm
import torch
import torch.nn as nn

from tinyvit_backbone import TinyViT
from tinyvit_backbone.checkpoint import timm_to_official
from tinyvit_backbone.convert import main as convert_main
from tinyvit_backbone.inference import fuse_for_inference
from tinyvit_backbone.layer_decay import layer_decay_param_groups

from .test_backbone import TINY, _randomise_stats


def _official_file(tmp_path):
    torch.manual_seed(0)
    model = _randomise_stats(timm.create_model("tiny_vit_5m_224", pretrained=False)).eval()
    path = tmp_path / "tiny_vit_5m_22kto1k_distill.pth"
    torch.save({"model": timm_to_official(model.state_dict())}, path)
    return model, path


def test_converter_writes_timm_and_openmmlab_files(tmp_path, capsys):
    model, official = _official_file(tmp_path)
    out = tmp_path / "out" / "tiny_vit_5m.safetensors"
    assert convert_main([str(official), str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["wrote"] == str(out)
    # timm loads it as its own pretrained file, classifier included
    loaded = timm.create_model("tiny_vit_5m_224", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(out))).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    mm = tmp_path / "tiny_vit_5m_mm.pth"
    assert convert_main([str(official), str(mm), "--to", "openmmlab"]) == 0
    ckpt = torch.load(mm, weights_only=True)
    assert all(k.startswith("backbone.stages.") or k.startswith("backbone.patch_embed.")
               for k in ckpt["state_dict"])
    backbone = TinyViT(arch="5m", pretrained=str(mm))
    backbone.init_weights()
    assert not list(tmp_path.glob("**/.tmp-*")), "temporary files left behind"


def test_converter_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, bad)
    assert convert_main([str(bad), str(tmp_path / "x.pth")]) == 2
    assert "no TinyViT weights" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = TinyViT(arch=TINY)
        self.neck = nn.Conv2d(96, 8, 1)


def test_layer_decay_groups():
    model = _Detector()
    groups = layer_decay_param_groups(model, lr=1e-3, weight_decay=0.05, decay_rate=0.5)
    by_name = {n: g for g in groups for n in g["param_names"]}
    top = sum(TINY["depths"]) + 1  # 6
    assert by_name["backbone.patch_embed.conv1.conv.weight"]["lr"] == 1e-3 * 0.5 ** top
    assert by_name["backbone.stages.0.blocks.0.conv1.conv.weight"]["layer_id"] == 1
    # a patch merging shares the id of the block before it
    assert by_name["backbone.stages.2.downsample.conv1.conv.weight"]["layer_id"] == 2
    assert by_name["backbone.stages.3.blocks.0.attn.qkv.weight"]["layer_id"] == 5
    assert by_name["neck.weight"]["lr"] == 1e-3 and by_name["neck.weight"]["weight_decay"] == 0.05
    for name in ("backbone.stages.1.blocks.0.attn.attention_biases",
                 "backbone.stages.1.blocks.0.attn.norm.weight", "backbone.stages.1.blocks.0.mlp.fc1.bias",
                 "backbone.stages.0.blocks.0.conv1.bn.weight", "neck.bias"):
        assert by_name[name]["weight_decay"] == 0.0, name
    assert by_name["backbone.stages.1.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.requires_mmcv_ops
def test_layer_decay_constructor_builds_from_config():
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    import tinyvit_backbone  # noqa: F401  (registers the constructor)
    init_default_scope("mmdet")
    wrapper = build_optim_wrapper(_Detector(), dict(
        type="OptimWrapper", constructor="TinyViTLayerDecayOptimizerConstructor",
        optimizer=dict(type="AdamW", lr=2e-4, weight_decay=0.05),
        paramwise_cfg=dict(layer_decay_rate=0.8)))
    lrs = sorted({round(g["lr"], 12) for g in wrapper.optimizer.param_groups})
    assert lrs[-1] == 2e-4 and abs(lrs[0] - 2e-4 * 0.8 ** 6) < 1e-12


def test_fast_path_on_timm_classifier_and_without_onednn(monkeypatch):
    import tinyvit_backbone.inference as inference

    torch.manual_seed(0)
    model = _randomise_stats(timm.create_model("tiny_vit_5m_224", pretrained=False)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = model(x)
        fused = fuse_for_inference(model)
        torch.testing.assert_close(fused(x), expected, rtol=0, atol=1e-5)
        monkeypatch.setattr(inference, "_ONEDNN", False)  # the plain-op fallback (CUDA, bf16, ...)
        torch.testing.assert_close(fused(x), expected, rtol=0, atol=1e-5)


def test_fast_path_matches_within_1e5():
    for arch, size in (("5m", (224, 224)), (TINY, (333, 517))):
        torch.manual_seed(0)
        model = _randomise_stats(TinyViT(arch=arch)).eval()
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = model(x)
            fast = fuse_for_inference(model)(x)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        for a, b in zip(fast, expected):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
