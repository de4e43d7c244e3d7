"""det_configs/ and seg_configs/: the Cascade configs hold Swin's 1x setting value by value,
every config names registry weights by URL, and the folders' metafiles, READMEs and configs
agree."""
import glob
import os
import re
from pathlib import Path

import pytest
import yaml
from mmengine.config import Config

from tinyvit_backbone import zoo

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("det_configs", "seg_configs")


def _configs(folder: str) -> list[str]:
    return sorted(glob.glob(str(ROOT / folder / "*.py")))


@pytest.fixture(scope="module")
def loaded():
    return {os.path.relpath(p, ROOT): Config.fromfile(p)
            for folder in FOLDERS for p in _configs(folder)}


# ----------------------------------------------------------------------------- Swin's 1x setting
# SwinTransformer/Swin-Transformer-Object-Detection, configs/swin/
# cascade_mask_rcnn_swin_tiny_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_1x_coco.py, its
# _base_/schedules/schedule_1x.py and _base_/datasets/coco_instance.py, written out literally.
SWIN_CASCADE_1X = dict(
    drop_path_rate=0.0,
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    no_decay_keys={"absolute_pos_embed", "relative_position_bias_table", "norm"},
    warmup=dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=500),
    milestones=[8, 11],
    epochs=12,
    images_per_gpu=2,
    gpus=8,
    flip_prob=0.5,
    multi_scale=[(480, 1333), (512, 1333), (544, 1333), (576, 1333), (608, 1333), (640, 1333),
                 (672, 1333), (704, 1333), (736, 1333), (768, 1333), (800, 1333)],
    crop_scales=[(400, 1333), (500, 1333), (600, 1333)],
    crop=dict(type="RandomCrop", crop_type="absolute_range", crop_size=(384, 600),
              allow_negative_crop=True),
    test_scale=(1333, 800),
    box_head=dict(type="ConvFCBBoxHead", num_shared_convs=4, num_shared_fcs=1,
                  norm_type="SyncBN", loss_bbox="GIoULoss", loss_weight=10.0),
)
CASCADE_1X = ["det_configs/cascade_tinyvit21m.py", "det_configs/cascade_tinyvit21m_in1k.py",
              "det_configs/cascade_swin-t_1x.py"]


def _check_swin_cascade(cfg, ref, drop_path_rate, milestones, epochs):
    assert cfg.model.backbone.drop_path_rate == drop_path_rate
    opt = cfg.optim_wrapper
    assert {k: opt.optimizer[k] for k in ref["optimizer"]} == ref["optimizer"]
    keys = opt.paramwise_cfg.custom_keys
    assert ref["no_decay_keys"] <= set(keys) and all(keys[k].decay_mult == 0.0 for k in keys)
    assert "norm_decay_mult" not in opt.paramwise_cfg  # Swin names `norm`, not all norm layers
    # mixed precision the mmdet way (Swin: apex O1, dynamic loss scale)
    assert opt.type == "AmpOptimWrapper" and opt.loss_scale == "dynamic"
    warmup, steps = cfg.param_scheduler
    assert {k: warmup[k] for k in ref["warmup"]} == ref["warmup"]
    assert steps.type == "MultiStepLR" and steps.milestones == milestones and steps.gamma == 0.1
    assert steps.by_epoch and steps.end == epochs and cfg.train_cfg.max_epochs == epochs
    assert cfg.train_dataloader.batch_size == ref["images_per_gpu"]
    assert cfg.auto_scale_lr.base_batch_size == ref["images_per_gpu"] * ref["gpus"]

    pipeline = cfg.train_dataloader.dataset.pipeline
    flip = next(t for t in pipeline if t.type == "RandomFlip")
    choice = next(t for t in pipeline if t.type == "RandomChoice")
    assert flip.prob == ref["flip_prob"] and pipeline.index(flip) < pipeline.index(choice)
    plain, cropped = choice.transforms
    assert [t.type for t in plain] == ["RandomChoiceResize"]
    assert [tuple(s) for s in plain[0].scales] == ref["multi_scale"] and plain[0].keep_ratio
    assert [t.type for t in cropped] == ["RandomChoiceResize", "RandomCrop", "RandomChoiceResize"]
    assert [tuple(s) for s in cropped[0].scales] == ref["crop_scales"]
    crop = dict(cropped[1], crop_size=tuple(cropped[1].crop_size))
    assert crop == ref["crop"]
    assert [tuple(s) for s in cropped[2].scales] == ref["multi_scale"]
    test_resize = next(t for t in cfg.test_dataloader.dataset.pipeline if t.type == "Resize")
    assert tuple(test_resize.scale) == ref["test_scale"] and test_resize.keep_ratio

    heads = cfg.model.roi_head.bbox_head
    spec = ref["box_head"]
    assert len(heads) == 3
    for head in heads:
        assert head.type == spec["type"] and head.num_shared_convs == spec["num_shared_convs"]
        assert head.num_shared_fcs == spec["num_shared_fcs"] and head.reg_decoded_bbox
        assert head.norm_cfg.type == spec["norm_type"]
        assert head.loss_bbox.type == spec["loss_bbox"]
        assert head.loss_bbox.loss_weight == spec["loss_weight"]


@pytest.mark.parametrize("path", CASCADE_1X)
def test_cascade_1x_configs_hold_swins_1x_setting(loaded, path):
    _check_swin_cascade(loaded[path], SWIN_CASCADE_1X, 0.0, [8, 11], 12)


def test_cascade_3x_holds_swins_3x_setting(loaded):
    # Swin's 3x config: drop path 0.2, steps 27 / 33 of 36, the same 500-iteration warmup.
    _check_swin_cascade(loaded["det_configs/cascade_tinyvit21m_3x.py"], SWIN_CASCADE_1X, 0.2,
                        [27, 33], 36)


def test_the_three_table6_rows_differ_only_in_backbone_or_weights(loaded):
    tiny, in1k, swin = (loaded[p] for p in CASCADE_1X)
    assert tiny.model.backbone.init_cfg.checkpoint == zoo.ZOO["tiny_vit_21m_22kto1k_distill"].official_url
    assert in1k.model.backbone.init_cfg.checkpoint == zoo.ZOO["tiny_vit_21m_1k"].official_url
    assert swin.model.backbone.type == "SwinTransformer"
    for other in (in1k, swin):
        for key in ("optim_wrapper", "param_scheduler", "train_cfg", "train_dataloader"):
            assert other[key] == tiny[key], key
    assert in1k.model.backbone == dict(tiny.model.backbone,
                                       init_cfg=in1k.model.backbone.init_cfg)
    assert tiny.custom_imports == dict(imports=["tinyvit_backbone"], allow_failed_imports=False)


def test_inferred_values_are_labelled_as_ours(loaded):
    base = (ROOT / "det_configs/_base_/cascade_mask_rcnn_tinyvit_fpn_giou_4conv1fc_ms_3x.py").read_text()
    assert "Our inference, not published" in base and "also Swin-T's" not in base
    # the two TinyViT choices Swin's config cannot make, each with its reason where it is set
    for line in ("out_norms=False,", "norm_eval=False,"):
        before = base[:base.index(line)].rsplit("\n\n", 1)[-1].split("drop_path_rate")[-1]
        assert "# Our inference:" in before, line
    readme = (ROOT / "det_configs/README.md").read_text()
    assert "| maps fed to FPN | as the backbone computes them, no LayerNorm (`out_norms=False`) " \
           "| our inference |" in readme
    assert "| TinyViT's BatchNorms | train mode, per-GPU statistics (`norm_eval=False`, no " \
           "SyncBN) | our inference |" in readme


@pytest.mark.parametrize("path", [p for p in CASCADE_1X if "swin" not in p]
                         + ["det_configs/cascade_tinyvit21m_3x.py"])
def test_tinyvit_feeds_fpn_unnormalised_maps_and_trains_per_gpu_batchnorms(loaded, path):
    from torch import nn

    from tinyvit_backbone.backbone import TinyViT

    cfg = loaded[path]
    backbone = cfg.model.backbone
    assert backbone.out_norms is False and backbone.norm_eval is False
    assert "sync_bn" not in cfg  # mmengine's Runner would convert every BatchNorm
    kwargs = {k: v for k, v in backbone.items() if k not in ("type", "init_cfg")}
    model = TinyViT(**kwargs).train()
    assert not [n for n, _ in model.named_children() if n.startswith("norm")]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is nn.BatchNorm2d and m.training for m in norms)


def _urls(node, found):
    if isinstance(node, str) and node.startswith(("http://", "https://")):
        found.add(node)
    elif isinstance(node, dict):
        for value in node.values():
            _urls(value, found)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _urls(value, found)
    return found


def test_no_config_carries_a_url_its_model_does_not_load(loaded):
    """What `mim run mmdet print_config` shows is what runs: no weights URL of an inherited
    config (mmdet's ConvNeXt, mmseg's Swin-T) or of another backbone lingers at the top level."""
    for path, cfg in loaded.items():
        used = set(_init_checkpoints(cfg.model, []))
        stray = {k: v for k, v in cfg.items() if k != "model" and _urls(v, set()) - used}
        assert not stray, (path, stray)
        assert "checkpoint_file" not in cfg, path
        assert "convnext" not in cfg.pretty_text.lower(), path
    swin = loaded["det_configs/cascade_swin-t_1x.py"]
    assert "pretrained" not in swin and "TinyViT-model-zoo" not in swin.pretty_text
    assert "TinyViT-model-zoo" not in loaded["det_configs/mask_rcnn_swin-t_1x.py"].pretty_text


@pytest.mark.requires_mmcv_ops
def test_no_decay_groups_follow_swins_keys(loaded):
    """The custom keys act as in Swin's config: TinyViT's attention biases and LayerNorms get no
    weight decay, its conv-BN weights and the linear layers keep 0.05."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    import tinyvit_backbone  # noqa: F401
    from tinyvit_backbone.config_overlay import apply_overlay

    cfg = apply_overlay(loaded["det_configs/cascade_tinyvit21m.py"], "unused", iters=1)
    assert cfg.optim_wrapper.type == "OptimWrapper"  # the CPU overlay's swap
    init_default_scope("mmdet")
    from mmdet.registry import MODELS
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g["weight_decay"] for g in wrapper.optimizer.param_groups for p in g["params"]}
    wd = {name: decay[id(p)] for name, p in model.named_parameters()}
    assert wd["backbone.stages.1.blocks.0.attn.attention_biases"] == 0.0
    assert wd["backbone.stages.1.blocks.0.attn.norm.weight"] == 0.0
    assert wd["backbone.stages.1.blocks.0.mlp.norm.bias"] == 0.0
    assert wd["backbone.stages.1.blocks.0.attn.qkv.weight"] == 0.05
    assert wd["backbone.stages.0.blocks.0.conv1.bn.weight"] == 0.05
    assert wd["roi_head.bbox_head.0.shared_convs.0.bn.weight"] == 0.05


# ----------------------------------------------------------------------------- weights by URL
def _init_checkpoints(node, found):
    if isinstance(node, dict):
        if node.get("type") == "Pretrained":
            found.append(node["checkpoint"])
        for value in node.values():
            _init_checkpoints(value, found)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _init_checkpoints(value, found)
    return found


def test_every_config_names_registry_weights_by_url(loaded):
    for path, cfg in loaded.items():
        urls = _init_checkpoints(cfg.model, [])
        assert len(urls) == 1, (path, urls)
        entry = zoo.by_url(urls[0])
        assert entry is not None and urls[0] == entry.official_url, (path, urls[0])
        backbone = cfg.model.backbone
        if backbone.type == "TinyViT":
            assert entry.arch == backbone.arch, path
        else:
            assert entry.family == "swin" and backbone.type == "SwinTransformer", path
        assert "checkpoints/" not in cfg.pretty_text.replace("/checkpoints/", ""), path


# ----------------------------------------------------------------------------- metafiles, READMEs
def _metafile(folder):
    with open(ROOT / folder / "metafile.yml") as f:
        return yaml.safe_load(f)


_LINK = re.compile(r"^\[([^\]]+)\]\(([^)]+)\)$")


def _readme_rows(folder) -> dict[str, dict]:
    """The 'Results and models' table of the folder's README, by config file name."""
    text = (ROOT / folder / "README.md").read_text()
    section = text.split("## Results and models", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        if not _LINK.match(cells["Config"]):
            break  # the next table
        name = _LINK.match(cells["Config"]).group(1)
        assert name not in rows, f"{folder}/README.md lists {name} twice"
        rows[name] = cells
    return rows


def _gpus(cfg_name: str, folder: str) -> int:
    if folder == "det_configs":
        return 8  # mmdet's convention, stated in the README
    return int(re.search(r"_(\d+)xb\d+_", cfg_name).group(1))


@pytest.mark.parametrize("folder", FOLDERS)
def test_metafile_readme_and_configs_agree(loaded, folder):
    import modelindex

    assert modelindex.load(str(ROOT / folder / "metafile.yml")).models  # OpenMMLab's own reader
    meta = _metafile(folder)
    collections = {c["Name"] for c in meta["Collections"]}
    models = {m["Name"]: m for m in meta["Models"]}
    rows = _readme_rows(folder)
    stems = {Path(p).stem for p in _configs(folder)}
    assert set(models) == stems, "every config has one metafile entry and no entry lacks a config"
    assert set(rows) == {f"{s}.py" for s in stems}, "every config has one README row"
    for name, model in models.items():
        cfg = loaded[f"{folder}/{name}.py"]
        row = rows[f"{name}.py"]
        md = model["Metadata"]
        assert model["Config"] == f"{folder}/{name}.py" and model["In Collection"] in collections
        assert _LINK.match(row["Config"]).group(2) == f"{name}.py"
        # weights: config == metafile == README link, and the link text is the registry name
        url = _init_checkpoints(cfg.model, [])[0]
        weights_text, weights_url = _LINK.match(row["Weights"]).groups()
        assert md["Pretrained"] == url == weights_url and weights_text == zoo.by_url(url).name
        # schedule and batch
        batch = cfg.train_dataloader.batch_size * _gpus(name, folder)
        assert md["Batch Size"] == batch
        if folder == "det_configs":
            epochs = cfg.train_cfg.max_epochs
            assert md["Epochs"] == epochs and row["Schedule"] == {12: "1x", 36: "3x"}[epochs]
            assert cfg.auto_scale_lr.base_batch_size == batch
        else:
            iters = cfg.train_cfg.max_iters
            assert md["Iterations"] == iters and row["Schedule"] == f"{iters // 1000}k"
        # results: ours only where a run exists (Results, Weights, log); published as listed
        has_run = "Results" in model
        assert has_run == ("Weights" in model) == ("Training log" in model)
        ours = [v for k, v in row.items() if k.endswith("(ours)")]
        assert ours and all((v != "—") == has_run for v in ours), (name, ours)
        assert (row["Log"] != "—") == has_run
        published = md.get("Published", {})
        for column, value in row.items():
            if column.endswith("(published)"):
                metric = column.removesuffix(" (published)")
                expected = published.get(metric)
                assert value == ("—" if expected is None else f"{expected}"), (name, metric)
        if published:
            assert published["Source"] and row["Published in"] != "—"
            log = published.get("Log")
            assert (log is None) or log in row["Published in"]


# The paper's Table 6 (arXiv 2207.10666v1), written out literally.
TABLE6 = {
    "cascade_swin-t_1x.py": (48.1, 67.1, 52.1, 31.1, 51.2, 63.5),
    "cascade_tinyvit21m_in1k.py": (49.6, 68.5, 54.2, 32.3, 53.2, 64.8),
    "cascade_tinyvit21m.py": (50.2, 69.4, 54.4, 32.9, 53.9, 65.2),
}


def test_table6_of_the_det_readme_and_metafile_match_the_paper():
    models = {m["Name"]: m for m in _metafile("det_configs")["Models"]}
    text = (ROOT / "det_configs/README.md").read_text()
    table = text.split("### Table 6", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("| [")]
    assert len(rows) == 3
    for cells in rows:
        name = _LINK.match(cells[0].strip()).group(1)
        assert tuple(float(c) for c in cells[2:]) == TABLE6[name]
        published = models[name.removesuffix(".py")]["Metadata"]["Published"]
        assert tuple(published[k] for k in ("box AP", "AP50", "AP75", "APS", "APM", "APL")) == \
            TABLE6[name]
