"""TinyViT backbone: shapes, equality with timm, checkpoint layouts, freezing, checkpointing."""
import copy

import pytest
import timm
import torch
import torch.nn as nn

from tinyvit_backbone import CheckpointError, TinyViT
from tinyvit_backbone.backbone import resolve_arch
from tinyvit_backbone.checkpoint import (
    backbone_state_dict,
    official_to_timm,
    resize_attention_biases,
    timm_to_official,
)

TINY = dict(embed_dims=[16, 32, 64, 96], depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 3],
            window_sizes=[7, 7, 7, 7])


def _randomise_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm non-trivial statistics / affine values, so layouts and fusions are
    tested on weights where a mistake shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.copy_(torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def timm_5m():
    torch.manual_seed(0)
    return _randomise_stats(timm.create_model("tiny_vit_5m_224", pretrained=False)).eval()


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size", [(333, 517), (64, 64), (97, 45)])
def test_four_maps_at_strides_4_to_32_for_any_size(size):
    model = TinyViT(arch=TINY).eval()
    h, w = size
    outs = model(torch.randn(1, 3, h, w))
    assert len(outs) == 4
    for out, stride, dim in zip(outs, (4, 8, 16, 32), TINY["embed_dims"]):
        # each stride-2 conv maps n -> ceil(n / 2)
        eh, ew = h, w
        for _ in range(stride.bit_length() - 1):
            eh, ew = (eh + 1) // 2, (ew + 1) // 2
        assert out.shape == (1, dim, eh, ew)
    assert model.out_channels == TINY["embed_dims"]


def test_official_variants_have_published_parameter_counts():
    counts = {arch: sum(p.numel() for p in TinyViT(arch=arch).parameters()) / 1e6
              for arch in ("5m", "11m", "21m")}
    # backbone only (no classifier): the paper's 5.4M / 11M / 21M include a 1000-way head
    assert counts["5m"] == pytest.approx(5.07, abs=0.05)
    assert counts["11m"] == pytest.approx(10.5, abs=0.1)
    assert counts["21m"] == pytest.approx(20.6, abs=0.1)


def test_out_indices_and_out_norms():
    model = TinyViT(arch=TINY, out_indices=(1, 3), out_norms=True).eval()
    outs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 96]
    assert hasattr(model, "norm1") and hasattr(model, "norm3") and not hasattr(model, "norm0")


def test_bad_arguments_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown TinyViT arch"):
        TinyViT(arch="7m")
    with pytest.raises(ValueError, match="out_indices"):
        TinyViT(arch=TINY, out_indices=(4,))
    with pytest.raises(ValueError, match="not divisible"):
        resolve_arch(dict(TINY, num_heads=[1, 3, 2, 3]))
    bad = tmp_path / "arch.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        resolve_arch(str(bad))


def test_arch_from_json_file(tmp_path):
    import json
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(TINY))
    assert TinyViT(arch=str(path)).arch == TINY


# ----------------------------------------------------------------------------- equality with timm
def _save(sd, path):
    torch.save(sd, path)
    return str(path)


def test_same_features_as_timm_on_timm_weights(timm_5m, tmp_path):
    ckpt = _save(timm_5m.state_dict(), tmp_path / "timm.pth")
    model = TinyViT(arch="5m", init_cfg=dict(type="Pretrained", checkpoint=ckpt))
    model.init_weights()
    model.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = model(x)
        expected = timm_5m.forward_intermediates(x, intermediates_only=True)
        logits = timm_5m.forward_head(feats[-1])
    for a, b in zip(feats, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(logits, timm_5m(x), rtol=0, atol=0)


def test_safetensors_timm_checkpoint_loads(timm_5m, tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in timm_5m.state_dict().items()}, str(path))
    sd = backbone_state_dict(path, TinyViT(arch="5m").state_dict())
    torch.testing.assert_close(sd["stages.3.blocks.1.attn.attention_biases"],
                               timm_5m.state_dict()["stages.3.blocks.1.attn.attention_biases"])


# ----------------------------------------------------------------------------- official layout
# The documented key map, written out literally (independent of the code under test).
OFFICIAL_EXAMPLES = {
    "patch_embed.seq.0.c.weight": "patch_embed.conv1.conv.weight",
    "patch_embed.seq.0.bn.running_var": "patch_embed.conv1.bn.running_var",
    "patch_embed.seq.2.bn.weight": "patch_embed.conv2.bn.weight",
    "layers.0.blocks.1.conv3.c.weight": "stages.0.blocks.1.conv3.conv.weight",
    "layers.0.downsample.conv2.bn.bias": "stages.1.downsample.conv2.bn.bias",
    "layers.2.downsample.conv1.c.weight": "stages.3.downsample.conv1.conv.weight",
    "layers.2.blocks.5.attn.attention_biases": "stages.2.blocks.5.attn.attention_biases",
    "layers.1.blocks.0.attn.qkv.weight": "stages.1.blocks.0.attn.qkv.weight",
    "layers.3.blocks.1.local_conv.c.weight": "stages.3.blocks.1.local_conv.conv.weight",
    "layers.3.blocks.1.mlp.fc2.bias": "stages.3.blocks.1.mlp.fc2.bias",
    "norm_head.weight": "head.norm.weight",
    "head.bias": "head.fc.bias",
}


def test_official_key_map_matches_the_documented_table(timm_5m):
    official = timm_to_official(timm_5m.state_dict())
    for old, new in OFFICIAL_EXAMPLES.items():
        assert old in official, old
        assert official_to_timm({old: official[old]}) == {new: official[old]}
    assert official_to_timm({"layers.1.blocks.0.attn.attention_bias_idxs": torch.zeros(1)}) == {}


def test_official_checkpoint_gives_identical_features(timm_5m, tmp_path):
    official = timm_to_official(timm_5m.state_dict())
    # the released files carry the index buffers and wrap everything in 'model'
    official["layers.1.blocks.0.attn.attention_bias_idxs"] = torch.zeros(49, 49, dtype=torch.long)
    ckpt = _save({"model": official}, tmp_path / "tiny_vit_5m_22kto1k_distill.pth")
    model = TinyViT(arch="5m", pretrained=ckpt)
    model.init_weights()
    model.eval()
    x = torch.randn(1, 3, 160, 192)
    with torch.no_grad():
        expected = timm_5m.forward_intermediates(x, intermediates_only=True)
        for a, b in zip(model(x), expected):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_openmmlab_checkpoint_with_neck_keys_loads(timm_5m, tmp_path):
    sd = {f"backbone.{k}": v for k, v in timm_5m.state_dict().items() if not k.startswith("head.")}
    sd["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    ckpt = _save({"state_dict": sd, "meta": {"epoch": 12}}, tmp_path / "epoch_12.pth")
    state = backbone_state_dict(ckpt, TinyViT(arch="5m").state_dict())
    assert "neck.lateral_convs.0.conv.weight" not in state and len(state) == len(sd) - 1


def test_window_change_resizes_attention_biases(timm_5m, tmp_path):
    ckpt = _save(timm_5m.state_dict(), tmp_path / "timm.pth")
    model = TinyViT(arch="5m", window_sizes=[16, 16, 32, 16], pretrained=ckpt)
    model.init_weights()
    key = "stages.2.blocks.0.attn.attention_biases"
    loaded = model.state_dict()[key]
    source = timm_5m.state_dict()[key]  # (5 heads, 14*14)
    assert source.shape == (5, 196) and loaded.shape == (5, 1024)
    expected = nn.functional.interpolate(source.view(1, 5, 14, 14), size=(32, 32), mode="bicubic",
                                         antialias=True).view(5, 1024)  # as timm / Cream resize
    torch.testing.assert_close(loaded, expected)
    torch.testing.assert_close(resize_attention_biases(source, 14), source)


# ----------------------------------------------------------------------------- clear errors
def test_malformed_checkpoints_give_clear_errors(timm_5m, tmp_path):
    sd5 = timm_5m.state_dict()
    target = TinyViT(arch="5m").state_dict()
    with pytest.raises(CheckpointError, match="not found"):
        backbone_state_dict(tmp_path / "nope.pth", target)
    truncated = tmp_path / "truncated.pth"
    torch.save(sd5, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="could not read"):
        backbone_state_dict(truncated, target)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="safetensors"):
        backbone_state_dict(junk, target)
    with pytest.raises(CheckpointError, match=r"holds TinyViT-5M.*the model TinyViT-11M.*`arch`"):
        backbone_state_dict(_save(sd5, tmp_path / "5m.pth"), TinyViT(arch="11m").state_dict())
    odd = dict(sd5, **{"stages.1.blocks.0.mlp.fc1.bias": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"shape mismatches: stages.1.blocks.0.mlp.fc1.bias"):
        backbone_state_dict(_save(odd, tmp_path / "odd.pth"), target)
    extra = dict(sd5, **{"stages.1.blocks.0.extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unexpected keys: stages.1.blocks.0.extra.weight"):
        backbone_state_dict(_save(extra, tmp_path / "extra.pth"), target)
    partial = {k: v for k, v in sd5.items() if not k.startswith("stages.3")}
    with pytest.raises(CheckpointError, match="missing keys: stages.3"):
        backbone_state_dict(_save(partial, tmp_path / "partial.pth"), target)
    with pytest.raises(CheckpointError, match="found no tensors"):
        backbone_state_dict(_save({"epoch": 3}, tmp_path / "empty.pth"), target)


# ----------------------------------------------------------------------------- training behaviour
def test_frozen_stages_get_no_gradients_and_stay_in_eval():
    model = TinyViT(arch=TINY, frozen_stages=2)
    assert model.train() is model  # chains, unlike mmdet's Swin
    assert not model.patch_embed.training and not model.stages[0].training
    assert not model.stages[1].training and model.stages[2].training
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
    for name, p in model.named_parameters():
        frozen = name.startswith(("patch_embed", "stages.0", "stages.1"))
        assert (p.grad is None) == frozen, name


def test_norm_eval_keeps_batchnorm_statistics():
    model = TinyViT(arch=TINY, norm_eval=True).train()
    bn = model.stages[0].blocks[0].conv1.bn
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert not bn.training and torch.equal(before, bn.running_mean)


def test_with_cp_gives_identical_outputs_and_gradients():
    torch.manual_seed(0)
    plain = TinyViT(arch=TINY, drop_path_rate=0.0).train()
    ckpt = copy.deepcopy(plain)
    ckpt.with_cp = True
    x = torch.randn(2, 3, 64, 64)
    outs = [m(x) for m in (plain, ckpt)]
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for o in outs:
        sum((t ** 2).sum() for t in o).backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7, msg=n)


# ----------------------------------------------------------------------------- OpenMMLab builds
@pytest.mark.requires_mmcv_ops
def test_builds_from_mmdet_and_mmseg_config_dicts(timm_5m, tmp_path):
    from mmengine.registry import init_default_scope

    ckpt = _save(timm_5m.state_dict(), tmp_path / "timm.pth")
    cfg = dict(type="TinyViT", arch="5m", out_indices=(1, 2, 3), drop_path_rate=0.1,
               init_cfg=dict(type="Pretrained", checkpoint=ckpt))
    for scope in ("mmdet", "mmseg"):
        init_default_scope(scope)
        registry = __import__(f"{scope}.registry", fromlist=["MODELS"]).MODELS
        model = registry.build(copy.deepcopy(cfg))
        model.init_weights()
        torch.testing.assert_close(model.stages[2].blocks[0].attn.attention_biases,
                                   timm_5m.stages[2].blocks[0].attn.attention_biases)
