"""det_configs/ and seg_configs/: every config builds; the embedded overlay trains, evaluates
with the real metrics and resumes (mmdet Mask R-CNN, mmseg UperNet), and scales out with
mmengine's launcher (torchrun, gloo)."""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

import tinyvit_backbone  # noqa: F401  (registers TinyViT)
from bench.common import subprocess_env
from tinyvit_backbone.config_overlay import apply_overlay, task_of
from tinyvit_backbone.embedded.scenes import CATEGORIES, SceneSettings, generate

ROOT = Path(__file__).resolve().parents[1]
DET_CONFIGS = sorted(glob.glob(str(ROOT / "det_configs" / "*.py")))
SEG_CONFIGS = sorted(glob.glob(str(ROOT / "seg_configs" / "*.py")))
TINY_ARCH = dict(embed_dims=[16, 32, 64, 96], depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 3],
                 window_sizes=[7, 7, 7, 7])


def _build(cfg):
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    registry = __import__(f"{cfg.default_scope}.registry", fromlist=["MODELS"]).MODELS
    return registry.build(cfg.model)


def test_the_suite_has_the_promised_configs():
    names = {os.path.basename(p) for p in DET_CONFIGS + SEG_CONFIGS}
    for expected in ["cascade_tinyvit21m.py", "cascade_tinyvit21m_in1k.py",
                     "cascade_tinyvit21m_3x.py", "cascade_swin-t_1x.py",
                     "retinanet_tinyvit21m_1x.py", "fpn_tinyvit21m_4xb4_80k_ade20k_512x512.py"]:
        assert expected in names
    for size in ("5m", "11m", "21m"):
        assert {f"mask_rcnn_tinyvit{size}_1x.py", f"mask_rcnn_tinyvit{size}_3x.py",
                f"upernet_tinyvit{size}_8xb2_160k_ade20k_512x512.py"} <= names


@pytest.mark.requires_mmcv_ops
@pytest.mark.parametrize("path", DET_CONFIGS + SEG_CONFIGS, ids=os.path.basename)
def test_config_parses_and_builds_its_model(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports.imports == ["tinyvit_backbone"]
    model = _build(cfg)
    backbone = model.backbone
    # the neck / decode head is wired to the backbone's real channels
    channels = getattr(backbone, "out_channels", None)
    if channels is not None:
        head_in = cfg.model.neck.in_channels if "neck" in cfg.model else cfg.model.decode_head.in_channels
        assert list(head_in) == channels
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys["attention_biases"]["decay_mult"] == 0.0


@pytest.mark.parametrize("path", DET_CONFIGS + SEG_CONFIGS, ids=os.path.basename)
def test_overlay_adapts_every_config(path, tmp_path):
    cfg = apply_overlay(Config.fromfile(path), str(tmp_path), iters=3, image_size=64)
    text = cfg.pretty_text
    assert "SyncBN" not in text and "init_cfg" not in str(cfg.model.backbone)
    n = len(CATEGORIES) if task_of(cfg) == "det" else len(CATEGORIES) + 1
    found = []
    apply = lambda d: found.append(d["num_classes"]) if isinstance(d, dict) and "num_classes" in d else None  # noqa: E731
    stack = [cfg.model]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            apply(node)
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    assert found and set(found) == {n}
    assert cfg.train_cfg.max_iters == 3


def test_overlay_weights_choice(tmp_path):
    cfg = Config.fromfile(str(ROOT / "det_configs/cascade_tinyvit21m.py"))
    kept = apply_overlay(cfg, str(tmp_path), iters=1, keep_weights=True)
    assert kept.model.backbone.init_cfg == cfg.model.backbone.init_cfg
    assert kept.optim_wrapper.type == "OptimWrapper"  # mmengine's AMP wrapper needs a GPU
    chosen = apply_overlay(cfg, str(tmp_path), iters=1, backbone_checkpoint="tiny_vit_21m_1k")
    assert chosen.model.backbone.init_cfg.checkpoint == "tiny_vit_21m_1k"
    swin = apply_overlay(Config.fromfile(str(ROOT / "det_configs/cascade_swin-t_1x.py")),
                         str(tmp_path), iters=1, keep_weights=True)
    assert swin.model.backbone.init_cfg.checkpoint.endswith("swin_tiny_patch4_window7_224.pth")


def test_overlay_arch_rewires_channels(tmp_path):
    cfg = apply_overlay(Config.fromfile(str(ROOT / "seg_configs/upernet_tinyvit21m_8xb2_160k_ade20k_512x512.py")),
                        str(tmp_path), arch=TINY_ARCH)
    assert cfg.model.decode_head.in_channels == [16, 32, 64, 96]
    assert cfg.model.auxiliary_head.in_channels == 64
    with pytest.raises(ValueError, match="only applies to TinyViT"):
        apply_overlay(Config.fromfile(str(ROOT / "det_configs/cascade_swin-t_1x.py")),
                      str(tmp_path), arch=TINY_ARCH)


def test_scenes_are_deterministic_and_consistent(tmp_path):
    settings = SceneSettings(num_train=3, num_val=2, image_size=64)
    assert generate(str(tmp_path / "a"), settings)
    assert not generate(str(tmp_path / "a"), settings)  # up to date: untouched
    generate(str(tmp_path / "b"), settings)
    for rel in ("train/000001.png", "ann_dir/val/000001.png", "annotations/instances_train.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    coco = json.loads((tmp_path / "a/annotations/instances_train.json").read_text())
    import numpy as np
    from PIL import Image
    label = np.asarray(Image.open(tmp_path / "a/ann_dir/train/000000.png"))
    for ann in (a for a in coco["annotations"] if a["image_id"] == 0):
        x, y, w, h = ann["bbox"]
        inside = label[int(y):int(y + h) + 1, int(x):int(x + w) + 1]
        # the semantic map carries the same class where the box is, with about the polygon's area
        assert (inside == ann["category_id"]).sum() == pytest.approx(ann["area"], rel=0.25)


# ----------------------------------------------------------------------------- training (slow)
def _train(tmp_path, config, extra=(), launcher=None):
    scenes = tmp_path / "scenes"
    generate(str(scenes), SceneSettings(num_train=4, num_val=2, image_size=64))
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(TINY_ARCH))
    cmd = [str(ROOT / "tools/train.py"), str(ROOT / config), "--embedded", "--data-root", str(scenes),
           "--image-size", "64", "--arch", str(arch), "--work-dir", str(tmp_path / "wd"), *extra]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", "29531", *cmd, "--launcher", "pytorch"] if launcher
           else [sys.executable, *cmd])
    env = subprocess_env(ROOT, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def _last_metrics(work_dir):
    lines = []
    for path in sorted(glob.glob(str(work_dir / "*" / "vis_data" / "scalars.json"))):
        lines += [json.loads(line) for line in open(path)]
    return [line for line in lines if "coco/bbox_mAP" in line or "mIoU" in line][-1]


@pytest.mark.slow
@pytest.mark.requires_mmcv_ops
@pytest.mark.parametrize("config,metric", [("det_configs/mask_rcnn_tinyvit5m_1x.py", "coco/segm_mAP"),
                                           ("seg_configs/upernet_tinyvit5m_8xb2_160k_ade20k_512x512.py", "mIoU")])
def test_trains_evaluates_and_resumes_on_embedded_scenes(tmp_path, config, metric):
    _train(tmp_path, config, ["--iters", "2"])
    assert (tmp_path / "wd" / "iter_2.pth").exists()
    first = _last_metrics(tmp_path / "wd")
    assert metric in first
    log = _train(tmp_path, config, ["--iters", "3", "--resume",
                                    "--cfg-options", "train_cfg.val_interval=3"])
    assert "resumed" in log.lower() or "Load checkpoint" in log
    assert (tmp_path / "wd" / "iter_3.pth").exists()


@pytest.mark.slow
@pytest.mark.requires_mmcv_ops
def test_two_cpu_processes_train_with_torchrun(tmp_path):
    log = _train(tmp_path, "seg_configs/upernet_tinyvit5m_8xb2_160k_ade20k_512x512.py",
                 ["--iters", "2"], launcher="pytorch")
    assert "Distributed training is not used" not in log
    assert "mIoU" in json.dumps(_last_metrics(tmp_path / "wd"))


@pytest.mark.slow
@pytest.mark.requires_mmcv_ops
def test_mim_train_runs_an_overlay_config(tmp_path):
    """`mim train` runs mmseg's tools/train.py from site-packages: the package must import from
    there (editable install) and the overlay config must stand alone."""
    import shutil

    scenes = tmp_path / "scenes"
    generate(str(scenes), SceneSettings(num_train=4, num_val=2, image_size=64))
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(TINY_ARCH))
    config = tmp_path / "upernet_embedded.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "tinyvit_backbone.config_overlay",
                    str(ROOT / "seg_configs/upernet_tinyvit5m_8xb2_160k_ade20k_512x512.py"),
                    "--data-root", str(scenes), "--iters", "2", "--image-size", "64",
                    "--arch", str(arch), "--out", str(config)], check=True, cwd=tmp_path, env=env)
    mim = shutil.which("mim", path=os.path.dirname(sys.executable))
    out = subprocess.run([mim, "train", "mmseg", str(config), "--gpus", "0", "--work-dir",
                          str(tmp_path / "wd")], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "mIoU" in json.dumps(_last_metrics(tmp_path / "wd"))


@pytest.mark.slow
@pytest.mark.requires_mmcv_ops
def test_mim_train_cascade_fetches_its_weights_over_http(tmp_path):
    """`mim train mmdet` of det_configs/cascade_tinyvit21m.py through the embedded overlay, with
    the registry pointed at a server on 127.0.0.1: the config's own TinyViT-21M weights (its
    official URL) are downloaded once into torch.hub's cache and loaded; no step by hand."""
    import functools
    import http.server
    import shutil
    import threading

    import timm
    import torch

    from tinyvit_backbone.checkpoint import timm_to_official

    from .test_weights import _Handler

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    torch.manual_seed(0)
    ref = timm.create_model("tiny_vit_21m_224", num_classes=1000)
    name = "tiny_vit_21m_22kto1k_distill.pth"
    torch.save({"model": timm_to_official(ref.state_dict())}, mirror / name)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(mirror)))
    httpd.hits, httpd.cut, httpd.cut_quietly = [], set(), set()
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        scenes = tmp_path / "scenes"
        generate(str(scenes), SceneSettings(num_train=2, num_val=1, image_size=64))
        config = tmp_path / "cascade_embedded.py"
        env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_HOME=str(tmp_path / "torch"),
                   TINYVIT_ZOO_MIRROR=f"http://127.0.0.1:{httpd.server_address[1]}",
                   NO_PROXY="127.0.0.1,localhost")
        subprocess.run([sys.executable, "-m", "tinyvit_backbone.config_overlay",
                        str(ROOT / "det_configs/cascade_tinyvit21m.py"), "--data-root",
                        str(scenes), "--iters", "1", "--image-size", "64", "--batch-size", "1",
                        "--keep-weights", "--out", str(config)], check=True, cwd=tmp_path, env=env)
        assert "releases/download/checkpoints/" + name in config.read_text()
        mim = shutil.which("mim", path=os.path.dirname(sys.executable))
        out = subprocess.run([mim, "train", "mmdet", str(config), "--gpus", "0", "--work-dir",
                              str(tmp_path / "wd")], capture_output=True, text=True, timeout=900,
                             cwd=tmp_path, env=env)
    finally:
        httpd.shutdown()
        httpd.server_close()
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert httpd.hits == ["/" + name]
    cached = tmp_path / "torch" / "hub" / "checkpoints" / name
    assert cached.is_file() and (tmp_path / "torch/hub/checkpoints" / (name + ".record.json")).is_file()
    assert "TinyViT: loaded" in log and str(cached) in log
    assert "coco/bbox_mAP" in json.dumps(_last_metrics(tmp_path / "wd"))
