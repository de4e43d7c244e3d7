"""Backbones as frozen feature extractors, weights loading and device selection."""
import pytest
import torch

from linear_probe.backbones import FeatureExtractor, ModelSpec, build_extractor, build_network
from linear_probe.device import autocast_dtype, select_device

TINY = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
        "window_sizes": [7, 4, 2, 1]}


def test_device_selection(monkeypatch):
    assert select_device(None) == torch.device("cpu")  # tests hide GPUs
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda asks for CUDA, but torch sees no GPU"):
        select_device("cuda")
    with pytest.raises(ValueError, match="not a device name"):
        select_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="only 1 GPU"):
        select_device("cuda:3")
    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype(torch.device("cuda"), amp=False) is None


def test_model_spec_labels_and_errors(tmp_path):
    assert ModelSpec("tinyvit", arch="21m").display_label() == "tinyvit-21m"
    assert ModelSpec("tinyvit-5m").arch == "5m"
    assert ModelSpec("tinyvit", arch=str(tmp_path / "student_a.json")).display_label() == "tinyvit-student_a"
    assert ModelSpec("timm:resnet50").display_label() == "resnet50"
    assert ModelSpec("tinyvit", arch="5m", label="mine").display_label() == "mine"
    assert ModelSpec("tinyvit", arch="5m").weights_digest() == "random"
    with pytest.raises(ValueError, match="--model must be 'tinyvit' or 'timm:<name>'"):
        ModelSpec("resnet50")
    with pytest.raises(FileNotFoundError, match="no such file"):
        ModelSpec("tinyvit", weights=str(tmp_path / "missing.pth"))
    path = tmp_path / "w.pth"
    path.write_bytes(b"abc")
    assert ModelSpec("tinyvit", weights=str(path)).weights_digest() == \
        "ba7816bf8f01cfea"  # sha256("abc")


def _reference(arch, seed=3):
    from tinyvit_backbone.backbone import build_timm_tinyvit
    torch.manual_seed(seed)
    model = build_timm_tinyvit(arch, num_classes=7).eval()
    with torch.no_grad():  # give the head norm a non-identity affine to check it is loaded
        model.head.norm.weight.uniform_(0.5, 1.5)
        model.head.norm.bias.uniform_(-0.5, 0.5)
    return model


@pytest.mark.parametrize("layout", ["timm", "official"])
def test_tinyvit_weights_give_the_checkpoints_features(tmp_path, layout):
    from tinyvit_backbone.checkpoint import timm_to_official
    ref = _reference(TINY)
    sd = ref.state_dict()
    if layout == "official":
        sd = {"model": timm_to_official(sd)}
    path = tmp_path / f"{layout}.pth"
    torch.save(sd, path)
    extractor = build_extractor(ModelSpec("tinyvit", arch=TINY, weights=str(path)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
        torch.testing.assert_close(extractor(x), expected, atol=1e-4, rtol=1e-4)


def test_random_init_is_seeded_and_fused_matches_unfused():
    spec = ModelSpec("tinyvit", arch=TINY)
    a, b = build_network(spec), build_network(spec)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(build_network(ModelSpec("tinyvit", arch=TINY, init_seed=1)).stages[1]
                           .blocks[0].attn.qkv.weight, a.stages[1].blocks[0].attn.qkv.weight)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(build_extractor(spec, fuse=True)(x),
                                   build_extractor(spec, fuse=False)(x), atol=1e-4, rtol=1e-4)
    assert all(not p.requires_grad for p in a.parameters())


def test_stage_feature_layers():
    net = build_network(ModelSpec("tinyvit", arch=TINY))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for i, dim in enumerate(TINY["embed_dims"]):
            assert FeatureExtractor(net, f"stage{i}")(x).shape == (2, dim)
        assert FeatureExtractor(net, "stage-1")(x).shape == (2, 64)
    with pytest.raises(ValueError, match="stages 0..3"):
        FeatureExtractor(net, "stage4")
    with pytest.raises(ValueError, match="'pooled' or 'stage<i>'"):
        FeatureExtractor(net, "last")


def test_timm_model_by_name_with_weights(tmp_path):
    import timm
    torch.manual_seed(1)
    ref = timm.create_model("test_vit", num_classes=5).eval()
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    extractor = build_extractor(ModelSpec("timm:test_vit", weights=str(path)))
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(extractor(x),
                                   ref.forward_head(ref.forward_features(x), pre_logits=True))
        assert FeatureExtractor(extractor.net, "stage1")(x).shape[0] == 2
    torch.save({"bogus.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    from tinyvit_backbone.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="does not fit timm model"):
        build_extractor(ModelSpec("timm:test_vit", weights=str(tmp_path / "bad.pth")))
    with pytest.raises(ValueError, match="timm has no model"):
        build_network(ModelSpec("timm:no_such_model_xyz"))
