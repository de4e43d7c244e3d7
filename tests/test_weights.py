"""Weights by name, URL, hub tag or path: the model zoo registry, downloads into the standard
caches (once, verified, re-fetched when damaged), clear errors offline, and the one loader
behind every command. Nothing leaves the machine: an HTTP server on 127.0.0.1 in a thread
serves checkpoints generated here, in the official, timm and OpenMMLab layouts."""
import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import timm
import torch

from bench.common import subprocess_env
from tinyvit_backbone import zoo
from tinyvit_backbone.backbone import TinyViT, build_timm_tinyvit
from tinyvit_backbone.checkpoint import CheckpointError, load_pretrained, timm_to_official
from tinyvit_backbone.weights import (
    RECORD_SUFFIX,
    WeightsNotFoundError,
    cache_path,
    classify,
    resolve_weights,
)

from .test_backbone import TINY, _randomise_stats

ROOT = Path(__file__).resolve().parents[1]
NAME = "tiny_vit_5m_1k"  # the registry's smallest 1000-class checkpoint (21 MB)


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; records every GET; sends half of the files listed in ``cut`` (after
    their full Content-Length), or in ``cut_quietly`` (without a Content-Length, so the cut
    looks like the end of the file)."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        self.server.hits.append(self.path)
        name = self.path.lstrip("/")
        if name in self.server.cut or name in self.server.cut_quietly:
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            if name in self.server.cut:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server's folder: the registry file NAME (official layout, like the release), a tiny
    arch in the three layouts, and the reference models they were made from."""
    root = tmp_path_factory.mktemp("mirror")
    torch.manual_seed(0)
    ref5 = _randomise_stats(timm.create_model("tiny_vit_5m_224", num_classes=1000)).eval()
    official = timm_to_official(ref5.state_dict())
    official["layers.1.blocks.0.attn.attention_bias_idxs"] = torch.zeros(49, 49, dtype=torch.long)
    torch.save({"model": official}, root / f"{NAME}.pth")
    tiny = _randomise_stats(build_timm_tinyvit(TINY, num_classes=10)).eval()
    (root / "layouts").mkdir()
    torch.save({"model": timm_to_official(tiny.state_dict())}, root / "layouts/official.pth")
    torch.save(tiny.state_dict(), root / "layouts/timm.pth")
    mm = {f"backbone.{k}": v for k, v in tiny.state_dict().items() if not k.startswith("head.")}
    mm["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    torch.save({"state_dict": mm, "meta": {"epoch": 12}}, root / "layouts/openmmlab.pth")
    torch.save({"model": {"x": torch.ones(2)}}, root / "swin_tiny_patch4_window7_224.pth")
    return root, ref5, tiny


@pytest.fixture(scope="module")
def server(served):
    root = served[0]
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    httpd.hits, httpd.cut, httpd.cut_quietly = [], set(), set()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def mirror(server, tmp_path, monkeypatch):
    """A fresh torch.hub cache and the registry pointed at the local server."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv(zoo.MIRROR_ENV, server.base)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server.hits.clear()
    server.cut.clear()
    server.cut_quietly.clear()
    return server


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more


# ----------------------------------------------------------------------------- the registry
def test_registry_lists_the_eleven_official_checkpoints_as_timm_describes_them():
    expected = {f"tiny_vit_{s}_{p}" for s in ("5m", "11m", "21m")
                for p in ("22k_distill", "22kto1k_distill", "1k")}
    expected |= {"tiny_vit_21m_22kto1k_384_distill", "tiny_vit_21m_22kto1k_512_distill"}
    assert set(zoo.ZOO) == expected
    assert zoo.get("tiny_vit_21m_22kto1k_distill.pth") is zoo.ZOO["tiny_vit_21m_22kto1k_distill"]
    hub_tags = set(timm.list_pretrained("tiny_vit*"))
    for entry in zoo.ZOO.values():
        assert entry.official_url == f"{zoo.TINYVIT_BASE_URL}/{entry.name}.pth"
        model, tag = entry.hub_tag.removeprefix("timm/"), entry.hub_tag
        assert model in hub_tags, model
        cfg = timm.models.get_pretrained_cfg(model)  # timm's own metadata, read independently
        assert cfg.num_classes == entry.num_classes and cfg.input_size[-1] == entry.resolution
        assert zoo.by_hub_tag(tag) is entry and zoo.by_url(entry.official_url) is entry
        assert model.startswith(f"tiny_vit_{entry.arch}_")
    assert zoo.ZOO["tiny_vit_21m_22kto1k_512_distill"].window_sizes == (16, 16, 32, 16)
    assert zoo.ZOO["tiny_vit_21m_1k"].in1k_top1 == 83.1


def test_mirror_rewrites_official_urls_only(monkeypatch):
    entry = zoo.ZOO[NAME]
    monkeypatch.setenv(zoo.MIRROR_ENV, "https://mirror.example/zoo/")
    assert entry.url == f"https://mirror.example/zoo/{NAME}.pth"
    assert zoo.by_url(entry.url) is entry
    assert zoo.mirrored("https://example.org/x.pth") == "https://example.org/x.pth"
    monkeypatch.setenv(zoo.MIRROR_ENV, "mirror.example")
    with pytest.raises(ValueError, match="not an http"):
        zoo.mirror_base()


def test_specs_are_classified_without_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert classify(NAME)[0] == "name"
    assert classify("https://host/x.pth") == ("url", "https://host/x.pth", None)
    monkeypatch.setenv(zoo.MIRROR_ENV, "http://127.0.0.1:9")
    assert classify(zoo.ZOO[NAME].official_url) == ("url", f"http://127.0.0.1:9/{NAME}.pth",
                                                    zoo.ZOO[NAME])
    assert classify("timm/tiny_vit_5m_224.in1k") == ("hub", "timm/tiny_vit_5m_224.in1k",
                                                     zoo.ZOO[NAME])
    assert classify("hf-hub:org/model")[:2] == ("hub", "org/model")
    (tmp_path / NAME).write_bytes(b"a local file wins over the registry name")
    assert classify(NAME)[0] == "path"
    with pytest.raises(WeightsNotFoundError, match=r"not found.*Did you mean tiny_vit_5m_22k"):
        resolve_weights("tiny_vit_5m_22k_distil")
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_weights(str(tmp_path / "missing.pth"))


# ----------------------------------------------------------------------------- downloads
def test_first_use_downloads_and_the_second_hits_the_cache(mirror, served):
    _, ref5, _ = served
    model = TinyViT(arch="5m", pretrained=NAME)
    model.init_weights()
    assert mirror.hits == [f"/{NAME}.pth"]
    dest = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / f"{NAME}.pth"
    assert cache_path(zoo.ZOO[NAME].url) == str(dest)
    record = json.loads(Path(str(dest) + RECORD_SUFFIX).read_text())
    assert record["sha256"] == _sha256(dest) and record["size"] == dest.stat().st_size
    assert record["name"] == NAME and record["url"] == f"{mirror.base}/{NAME}.pth"
    key = "stages.2.blocks.3.attn.attention_biases"
    torch.testing.assert_close(model.state_dict()[key], ref5.state_dict()[key])
    again = TinyViT(arch="5m", init_cfg=dict(type="Pretrained", checkpoint=NAME))
    again.init_weights()
    assert mirror.hits == [f"/{NAME}.pth"], "the second use must come from the cache"
    assert not [p for p in dest.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("layout", ["official", "timm", "openmmlab"])
def test_every_layout_loads_over_http(mirror, served, layout):
    _, _, tiny = served
    messages = []
    model = TinyViT(arch=TINY)
    result = load_pretrained(model, f"{mirror.base}/layouts/{layout}.pth", log=messages.append)
    assert result.weights.kind == "url" and result.weights.entry is None
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, tiny.state_dict()[key], msg=key)
    assert any("official (Cream) layout" in m for m in messages) == (layout == "official")


def test_truncated_or_altered_cache_file_is_refused_and_fetched_again(mirror):
    first = resolve_weights(NAME)
    data = Path(first.path).read_bytes()
    Path(first.path).write_bytes(data[:1000])  # truncated
    messages = []
    second = resolve_weights(NAME, log=messages.append)
    assert any("refused" in m and "truncated" in m for m in messages), messages
    assert Path(second.path).read_bytes() == data and len(mirror.hits) == 2
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # same size, other bytes
    Path(first.path).write_bytes(bytes(flipped))
    messages.clear()
    third = resolve_weights(NAME, log=messages.append)
    assert any("altered" in m for m in messages), messages
    assert third.sha256 == first.sha256 == _sha256(third.path) and len(mirror.hits) == 3
    Path(first.path).write_bytes(data[:-10])  # given by its path (as results record it)
    by_path = resolve_weights(first.path)
    assert by_path.sha256 == first.sha256 and len(mirror.hits) == 4


def test_interrupted_download_keeps_nothing_and_a_rerun_fetches_it(mirror):
    mirror.cut.add(f"{NAME}.pth")
    dest = Path(cache_path(zoo.ZOO[NAME].url))
    with pytest.raises(CheckpointError, match=r"stopped after .* bytes.*rerun to fetch it again"):
        resolve_weights(NAME, progress=False)
    assert not dest.exists() and not [p for p in dest.parent.iterdir() if p.is_file()]
    mirror.cut.clear()
    assert _sha256(resolve_weights(NAME, progress=False).path) == _sha256(dest)


def test_a_cut_without_content_length_is_not_kept_and_a_plain_rerun_fetches_it(mirror):
    """The server closes the connection halfway and never said how long the file is: the
    half file looks like a finished download, so only the file itself can tell."""
    mirror.cut_quietly.add(f"{NAME}.pth")
    dest = Path(cache_path(zoo.ZOO[NAME].url))
    with pytest.raises(CheckpointError, match=r"no Content-Length was sent.*cut short.*"
                                              r"truncated.*nothing was kept: rerun to fetch"):
        TinyViT(arch="5m", pretrained=NAME).init_weights()
    assert not dest.exists() and not Path(str(dest) + RECORD_SUFFIX).exists()
    assert not [p for p in dest.parent.iterdir() if p.is_file()]
    mirror.cut_quietly.clear()
    # The remedy the message promises, as written: run the same thing again.
    model = TinyViT(arch="5m", pretrained=NAME)
    model.init_weights()
    assert mirror.hits == [f"/{NAME}.pth"] * 2
    assert json.loads(Path(str(dest) + RECORD_SUFFIX).read_text())["sha256"] == _sha256(dest)


def test_a_half_file_recorded_before_verification_existed_is_fetched_again(mirror, served):
    """A cache poisoned by an older version (a half file with a matching size / sha256 record
    and no "verified" field), and a half file put there by hand: neither is used."""
    data = (served[0] / f"{NAME}.pth").read_bytes()
    dest = Path(cache_path(zoo.ZOO[NAME].url))
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data[: len(data) // 2])
    Path(str(dest) + RECORD_SUFFIX).write_text(json.dumps(dict(
        url=zoo.ZOO[NAME].url, name=NAME, size=dest.stat().st_size, sha256=_sha256(dest))))
    messages = []
    weights = resolve_weights(NAME, log=messages.append)
    assert any("refused" in m and "truncated" in m for m in messages), messages
    assert dest.read_bytes() == data and weights.sha256 == _sha256(dest)
    assert json.loads(Path(str(dest) + RECORD_SUFFIX).read_text())["verified"]
    dest.write_bytes(data[: len(data) // 3])  # by hand, no record
    Path(str(dest) + RECORD_SUFFIX).unlink()
    messages.clear()
    assert resolve_weights(NAME, log=messages.append).sha256 == _sha256(dest)
    assert dest.read_bytes() == data and len(mirror.hits) == 2
    assert any("without a download record" in m and "truncated" in m for m in messages)


def test_what_counts_as_a_complete_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from tinyvit_backbone.weights import checkpoint_problem

    zipped, old, st = tmp_path / "z.pth", tmp_path / "old.pth", tmp_path / "w.safetensors"
    torch.save({"w": torch.arange(1000.0)}, zipped)
    torch.save({"w": torch.arange(1000.0)}, old, _use_new_zipfile_serialization=False)
    save_file({"w": torch.arange(1000.0)}, str(st))
    for path in (zipped, old, st):
        assert checkpoint_problem(str(path)) is None, path
        whole = path.read_bytes()
        path.write_bytes(whole[: len(whole) - 100])
        assert checkpoint_problem(str(path)) is not None, path
    torch.save({"w": torch.arange(1000.0)}, zipped)
    flipped = bytearray(zipped.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # inside the tensor data
    zipped.write_bytes(bytes(flipped))
    assert "CRC" in checkpoint_problem(str(zipped))
    page = tmp_path / "page.pth"
    page.write_bytes(b"<!DOCTYPE html><html>sign in to this network</html>")
    assert "torch.load cannot read it" in checkpoint_problem(str(page))


def test_the_cache_is_keyed_on_the_url_not_on_the_file_name(mirror, served):
    """/a/x.pth and /c/x.pth are two checkpoints; /b/x.pth does not exist. Registry URLs keep
    the place mmengine and torch.hub give them, so either finds the other's download."""
    import torch.hub

    root = served[0]
    for sub, value in (("a", 1.0), ("c", 2.0)):
        (root / "keyed" / sub).mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.full((3,), value)}, root / "keyed" / sub / "x.pth")
    a, b, c = (f"{mirror.base}/keyed/{sub}/x.pth" for sub in "abc")
    first = resolve_weights(a)
    with pytest.raises(CheckpointError, match=r"HTTP 404"):
        resolve_weights(b)
    third = resolve_weights(c)
    assert mirror.hits == ["/keyed/a/x.pth", "/keyed/b/x.pth", "/keyed/c/x.pth"]
    assert torch.load(first.path)["w"][0] == 1.0 and torch.load(third.path)["w"][0] == 2.0
    assert resolve_weights(a).path == first.path and len(mirror.hits) == 3
    for weights, url in ((first, a), (third, c)):
        assert json.loads(Path(weights.path + RECORD_SUFFIX).read_text())["url"] == url
    flat = Path(torch.hub.get_dir()) / "checkpoints"
    assert cache_path(zoo.ZOO[NAME].url) == str(flat / f"{NAME}.pth")
    assert cache_path(zoo.ZOO[NAME].official_url) == str(flat / f"{NAME}.pth")
    assert Path(first.path).parent.parent == flat / "by_url"

    # A file at a registry name's place whose record names another URL is not that checkpoint.
    other = f"{mirror.base}/keyed/a/{NAME}.pth"
    dest = flat / f"{NAME}.pth"
    dest.write_bytes((root / "keyed" / "a" / "x.pth").read_bytes())
    Path(str(dest) + RECORD_SUFFIX).write_text(json.dumps(dict(
        url=other, name=None, size=dest.stat().st_size, sha256=_sha256(dest),
        verified="complete checkpoint")))
    messages = []
    weights = resolve_weights(NAME, log=messages.append)
    assert any(f"came from {other}" in m for m in messages), messages
    assert weights.sha256 == _sha256(root / f"{NAME}.pth") and mirror.hits[-1] == f"/{NAME}.pth"


def test_a_complete_file_the_loader_refuses_is_not_blamed_on_the_download(mirror, served):
    import argparse

    (served[0] / "pickled").mkdir(exist_ok=True)
    torch.save({"model": {"x": torch.ones(2)}, "args": argparse.Namespace(lr=1)},
               served[0] / "pickled" / "with_args.pth")
    url = f"{mirror.base}/pickled/with_args.pth"
    with pytest.raises(CheckpointError) as err:
        load_pretrained(TinyViT(arch=TINY), url)
    text = str(err.value)
    assert "re-save only its state dict" in text and "verified complete" in text
    assert "delete" not in text and "rerun" not in text


def test_404_and_a_dead_server_name_the_url_and_the_manual_path(mirror, served, monkeypatch):
    with pytest.raises(CheckpointError) as err:
        resolve_weights(f"{mirror.base}/nope/tiny_vit_6m.pth")
    text = str(err.value)
    assert "HTTP 404" in text and f"{mirror.base}/nope/tiny_vit_6m.pth" in text
    assert cache_path(f"{mirror.base}/nope/tiny_vit_6m.pth") in text

    monkeypatch.setenv(zoo.MIRROR_ENV, _dead_url())
    dest = cache_path(zoo.ZOO[NAME].url)
    with pytest.raises(CheckpointError) as err:
        TinyViT(arch="5m", pretrained=NAME).init_weights()
    text = str(err.value)
    assert "could not download" in text and zoo.ZOO[NAME].url in text and dest in text
    assert zoo.ZOO[NAME].hub_tag in text and zoo.MIRROR_ENV in text
    # The remedy the message promises: a file put at that path is picked up, still offline.
    Path(dest).write_bytes((served[0] / f"{NAME}.pth").read_bytes())
    messages = []
    weights = resolve_weights(NAME, log=messages.append)
    assert weights.path == dest and any("without a download record" in m for m in messages)
    assert json.loads(Path(dest + RECORD_SUFFIX).read_text())["sha256"] == _sha256(dest)
    TinyViT(arch="5m", pretrained=NAME).init_weights()


def test_concurrent_resolvers_download_once(mirror):
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_weights(NAME).sha256))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1 and len(mirror.hits) == 1


def test_the_command_lists_the_zoo_and_fetches_for_offline_use(mirror, capsys):
    from tinyvit_backbone.weights import main

    assert main(["list"]) == 0
    listing = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in listing["checkpoints"]}
    assert set(rows) == set(zoo.ZOO) | set(zoo.BASELINES) and listing["mirror"] == mirror.base
    assert rows[NAME]["url"] == f"{mirror.base}/{NAME}.pth" and not rows[NAME]["cached"]
    assert main(["fetch", NAME, "--no-progress"]) == 0
    fetched = json.loads(capsys.readouterr().out)["weights"][0]
    assert fetched["path"] == cache_path(zoo.ZOO[NAME].url) and fetched["name"] == NAME
    assert fetched["sha256"] == _sha256(fetched["path"])
    main(["list"])
    assert {r["name"]: r for r in json.loads(capsys.readouterr().out)["checkpoints"]}[NAME]["cached"]
    assert main(["fetch", "no_such_weights"]) == 2
    assert capsys.readouterr().err.startswith("error: weights 'no_such_weights' not found")


# ----------------------------------------------------------------------------- arch checks
def test_a_named_checkpoint_of_another_arch_is_refused_before_downloading(mirror):
    with pytest.raises(CheckpointError, match=r"tiny_vit_5m_1k does not fit this TinyViT.*"
                                              r"TinyViT-5M.*TinyViT-21M.*arch='5m'.*"
                                              r"tiny_vit_21m_1k"):
        TinyViT(arch="21m", pretrained=NAME).init_weights()
    with pytest.raises(CheckpointError, match=r"512 px.*window_sizes=\[16, 16, 32, 16\]"):
        load_pretrained(TinyViT(arch="21m"), "tiny_vit_21m_22kto1k_512_distill", windows="error")
    with pytest.raises(CheckpointError, match="holds TinyViT weights.*is not a TinyViT"):
        load_pretrained(timm.create_model("test_resnet"), NAME)
    assert mirror.hits == [], "nothing may be downloaded for a refused checkpoint"


def test_other_windows_are_resized_and_logged(mirror, served, tmp_path):
    _, ref5, _ = served
    messages = []
    model = TinyViT(arch="5m", window_sizes=[16, 16, 32, 16])
    result = load_pretrained(model, NAME, log=messages.append)
    assert any("windows [-, 7, 14, 7]" in m and "resized (bicubic)" in m for m in messages)
    assert result.resized and model.stages[2].blocks[0].attn.attention_biases.shape == (5, 1024)
    with pytest.raises(CheckpointError, match=r"224 px .* \[7, 7, 14, 7\].*uses \[-, 16, 32, 16\]"):
        load_pretrained(TinyViT(arch="5m", window_sizes=[16, 16, 32, 16]), NAME, windows="error")
    copy = tmp_path / "copy.pth"  # a file the registry does not know: checked from its tensors
    copy.write_bytes(Path(resolve_weights(NAME).path).read_bytes())
    with pytest.raises(CheckpointError, match="build the model with the file's window_sizes"):
        load_pretrained(TinyViT(arch="5m", window_sizes=[16, 16, 32, 16]), str(copy),
                        windows="error")


# ----------------------------------------------------------------------------- every command
def test_every_command_takes_a_registry_name(mirror, served, tmp_path, capsys):
    """Probe --weights, distillation --init and teacher, tinyvit-convert: one download."""
    from linear_probe.backbones import ModelSpec, build_network
    from tinyvit_backbone.convert import main as convert_main
    from tinyvit_backbone.distill.teacher import load_teacher
    from tinyvit_backbone.distill.train import load_weights

    _, ref5, _ = served
    x = torch.randn(1, 3, 64, 64)
    spec = ModelSpec("tinyvit", arch="5m", weights=NAME)
    assert spec.weights == cache_path(zoo.ZOO[NAME].url)
    with torch.no_grad():
        torch.testing.assert_close(build_network(spec).forward_features(x), ref5.forward_features(x))
    student = build_timm_tinyvit("5m", num_classes=10)
    assert load_weights(student, NAME) == ["head.fc.weight", "head.fc.bias"]
    teacher, info = load_teacher("tiny_vit_5m_224", NAME, 1000, data_mean=(0.5,) * 3,
                                 data_std=(0.5,) * 3)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), ref5(x))
    assert info["checkpoint_sha256"] == _sha256(spec.weights)
    out = tmp_path / "timm.safetensors"
    assert convert_main([NAME, str(out), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["tensors"] > 100
    assert mirror.hits == [f"/{NAME}.pth"]


def test_timm_models_load_through_the_same_loader(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("test_resnet", num_classes=5).eval()
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    net = timm.create_model("test_resnet", num_classes=0)
    result = load_pretrained(net, str(path))
    assert result.dropped == ["fc.bias", "fc.weight"]
    strict = timm.create_model("test_resnet", num_classes=7)
    with pytest.raises(CheckpointError, match=r"does not fit timm model 'test_resnet'.*fc.weight"):
        load_pretrained(strict, str(path), classifier="strict")
    assert load_pretrained(strict, str(path), classifier="reinit").reinitialised == \
        ["fc.weight", "fc.bias"]


def test_mmengine_fetches_registry_urls_through_the_zoo(mirror):
    """mmdet's Swin-T backbone (the baseline configs) loads through mmengine's CheckpointLoader,
    which the package points at the registry for its URLs: importing it where mmengine's runner
    is loaded (as mmdet's train script has when it reads custom_imports) does that."""
    from mmengine.runner import CheckpointLoader

    from tinyvit_backbone.registration import register_all

    register_all()  # what `import tinyvit_backbone` runs in such a process

    url = zoo.BASELINES["swin_tiny_patch4_window7_224"].official_url
    ckpt = CheckpointLoader.load_checkpoint(url, map_location="cpu")
    assert torch.equal(ckpt["model"]["x"], torch.ones(2))
    assert mirror.hits == ["/swin_tiny_patch4_window7_224.pth"]
    assert os.path.isfile(cache_path(url) + RECORD_SUFFIX)


_RESUME_SCRIPT = """
import sys
import torch
from torch import nn

if sys.argv[1] == "plugin-first":
    import tinyvit_backbone  # noqa: F401  (what a config's custom_imports does)
    light = "mmengine.runner" not in sys.modules
    from mmengine.runner import Runner
else:
    from mmengine.runner import Runner
    import tinyvit_backbone  # noqa: F401
    light = True
from mmengine.model import BaseModel


class Toy(BaseModel):  # no TinyViT anywhere in this process
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, x, y=None, mode="tensor"):
        out = self.fc(x).squeeze(-1)
        return dict(loss=((out - y) ** 2).mean()) if mode == "loss" else list(out)


class Data(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return dict(x=torch.full((2,), float(i)), y=torch.tensor(float(i)))


def runner(epochs, resume):
    return Runner(model=Toy(), work_dir=sys.argv[2], resume=resume,
                  train_dataloader=dict(dataset=Data(), batch_size=2,
                                        sampler=dict(type="DefaultSampler", shuffle=False),
                                        collate_fn=dict(type="default_collate")),
                  train_cfg=dict(by_epoch=True, max_epochs=epochs),
                  optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
                  default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1)))


runner(1, False).train()
resumed = runner(2, True)
resumed.train()
print("light import:", light)
"""


@pytest.mark.parametrize("order", ["plugin-first", "runner-first"])
def test_mmengine_resumes_with_the_plugin_imported_and_no_tinyvit_built(tmp_path, order):
    """torch >= 2.6 loads with weights_only=True; mmengine's checkpoints hold its
    HistoryBuffer and NumPy scalars. With the package imported (before or after mmengine's
    runner), a run resumes whatever its model; importing the package still loads no runner."""
    env = subprocess_env(ROOT)
    run = subprocess.run([sys.executable, "-c", _RESUME_SCRIPT, order, str(tmp_path / "wd")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "resumed epoch: 1, iter: 2" in run.stdout  # mmengine's own line
    assert "light import: True" in run.stdout


# ----------------------------------------------------------------------------- Hugging Face hub
def _hf_cache(root: Path, repo: str, data: bytes) -> Path:
    """A Hugging Face cache holding ``model.safetensors`` of ``repo``, laid out as
    huggingface_hub writes it (blob named by its SHA-256, snapshot symlink, refs/main)."""
    folder = root / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    sha = hashlib.sha256(data).hexdigest()
    (folder / "blobs").mkdir(parents=True)
    (folder / "blobs" / sha).write_bytes(data)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(Path("..", "..", "blobs", sha))
    return folder / "blobs" / sha


_OFFLINE_SCRIPT = """
import json, sys
from tinyvit_backbone.backbone import TinyViT
from tinyvit_backbone.checkpoint import CheckpointError
out = {}
for spec in sys.argv[1:]:
    model = TinyViT(arch='5m', pretrained=spec)
    try:
        model.init_weights()
        out[spec] = float(model.stages[2].blocks[0].attn.attention_biases.detach().sum())
    except CheckpointError as err:
        out[spec] = str(err)
print(json.dumps(out))
"""


def test_hub_tag_resolves_from_a_prepopulated_cache_offline(served, tmp_path):
    """One interpreter with HF_HUB_OFFLINE=1: a cached tag loads; a damaged blob and a tag
    missing from the cache are refused with what to do."""
    from safetensors.torch import save

    _, ref5, _ = served
    tag, missing = zoo.ZOO[NAME].hub_tag, "timm/tiny_vit_5m_224.dist_in22k_ft_in1k"
    data = save({k: v.contiguous() for k, v in ref5.state_dict().items()})
    _hf_cache(tmp_path / "hf", tag, data)
    damaged_tag = "hf-hub:timm/damaged_copy"
    blob = _hf_cache(tmp_path / "hf", damaged_tag.removeprefix("hf-hub:"), data)
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    env = subprocess_env(ROOT, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hf"),
                         HF_HUB_DISABLE_TELEMETRY="1")
    run = subprocess.run([sys.executable, "-c", _OFFLINE_SCRIPT, tag, damaged_tag, missing],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    expected = float(ref5.stages[2].blocks[0].attn.attention_biases.detach().sum())
    assert out[tag] == pytest.approx(expected, rel=1e-6)
    assert "is damaged" in out[damaged_tag] and str(blob) in out[damaged_tag]
    assert "HF_HUB_OFFLINE=1" in out[missing]
    assert f"https://huggingface.co/{missing}/resolve/main/model.safetensors" in out[missing]


_UNREACHABLE_SCRIPT = """
import json, sys, time
from tinyvit_backbone.weights import CheckpointError, resolve_weights
out = {}
for spec in sys.argv[1:]:
    start = time.monotonic()
    try:
        out[spec] = resolve_weights(spec).path
    except CheckpointError as err:
        out[spec] = str(err)
    out[spec + ' s'] = time.monotonic() - start
print(json.dumps(out))
"""


def test_an_unreachable_hub_is_told_at_once_and_the_cache_still_serves(served, tmp_path):
    """No network: huggingface_hub would retry each file five times (47 s for a tag before
    the answer). A connect probe finds the dead endpoint at once; a cached tag still loads
    and a missing one gets the offline advice, with no retry in between."""
    from safetensors.torch import save

    _, ref5, _ = served
    tag, missing = zoo.ZOO[NAME].hub_tag, "timm/tiny_vit_5m_224.dist_in22k_ft_in1k"
    _hf_cache(tmp_path / "hf", tag, save({k: v.contiguous() for k, v in ref5.state_dict().items()}))
    dead = _dead_url()
    env = subprocess_env(ROOT, HF_ENDPOINT=dead, HF_HUB_CACHE=str(tmp_path / "hf"),
                         HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost")
    env.pop("HF_HUB_OFFLINE", None)
    run = subprocess.run([sys.executable, "-c", _UNREACHABLE_SCRIPT, tag, missing],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out[tag].endswith("model.safetensors")
    assert "the hub is unreachable: no connection to 127.0.0.1:" in out[missing]
    assert f"{dead}/{missing}/resolve/main/model.safetensors" in out[missing]
    assert "Retry" not in run.stderr + run.stdout
    # Generous bounds (a probe takes milliseconds here); huggingface_hub's retries take 23 s
    # per file.
    assert out[tag + " s"] < 15 and out[missing + " s"] < 15, out


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """The two calls huggingface_hub makes for a file (HEAD for its commit, SHA-256 and size,
    then GET), for the files in ``server.files``; everything else is an unknown entry."""

    def log_message(self, *args):
        pass

    def _answer(self, body: bool):
        self.server.hits.append((self.command, self.path))
        data = self.server.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "f" * 40)
        self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)


_ONLINE_SCRIPT = """
import json, os, sys
from tinyvit_backbone.backbone import TinyViT
from tinyvit_backbone.weights import resolve_weights
arch = json.loads(sys.argv[2])
out = []
for attempt in range(3):
    if attempt == 2:  # damage the cached blob: the next load must fetch it again
        blob = os.path.realpath(resolve_weights(sys.argv[1]).path)
        with open(blob, 'r+b') as f:
            f.seek(-1, 2)
            last = f.read(1)
            f.seek(-1, 2)
            f.write(bytes([last[0] ^ 1]))
    model = TinyViT(arch=arch, pretrained=sys.argv[1])
    model.init_weights()
    out.append(float(model.stages[1].blocks[0].attn.attention_biases.detach().sum()))
print(json.dumps(out))
"""


def test_hub_tag_is_downloaded_once_into_the_hf_cache_and_refetched_when_damaged(served, tmp_path):
    from safetensors.torch import save

    _, _, tiny = served
    data = save({k: v.contiguous() for k, v in tiny.state_dict().items()})
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    hub.hits, hub.files = [], {"/timm/tiny_test/resolve/main/model.safetensors": data}
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    env = subprocess_env(ROOT, HF_ENDPOINT=f"http://127.0.0.1:{hub.server_address[1]}",
                         HF_HUB_CACHE=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
                         NO_PROXY="127.0.0.1,localhost")
    try:
        run = subprocess.run([sys.executable, "-c", _ONLINE_SCRIPT, "timm/tiny_test",
                              json.dumps(TINY)], capture_output=True, text=True, env=env,
                             timeout=300)
    finally:
        hub.shutdown()
        hub.server_close()
    assert run.returncode == 0, run.stderr[-3000:]
    expected = float(tiny.stages[1].blocks[0].attn.attention_biases.detach().sum())
    assert json.loads(run.stdout.strip().splitlines()[-1]) == pytest.approx([expected] * 3)
    gets = [path for method, path in hub.hits if method == "GET"]
    assert gets == ["/timm/tiny_test/resolve/main/model.safetensors"] * 2  # first use + damaged
    log = run.stdout + run.stderr  # mmengine's logger prints to stdout
    assert "does not match" in log and "fetching it again" in log
    assert list((tmp_path / "hf").glob("models--timm--tiny_test/snapshots/*/model.safetensors"))
