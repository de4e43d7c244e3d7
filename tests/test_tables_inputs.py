"""Readers and renderers of the table generator, one input problem at a time.

The work-dir reader is checked against folders written by a real mmengine ``Runner`` (a toy
model and a toy metric with prefix "coco"), so the layout it assumes is mmengine's own.
"""
import json
import os
import shutil
import time

import pytest
import torch
from torch import nn

from reproduction.bench_report import read_bench_report
from reproduction.probes import (
    canonical_dataset,
    kshot_stats,
    official_variant,
    parse_record,
    pretraining_of,
    read_results,
)
from reproduction.runs import STALE_MINUTES, find_work_dirs, read_run, read_runs
from tinyvit_backbone import tabular as render
from tinyvit_backbone.complexity import classifier_complexity
from tinyvit_backbone.files import atomic_write_text as atomic_write
from tinyvit_backbone.tabular import Cell, Column, Table

COCO_VALUES = dict(bbox_mAP=0.412, bbox_mAP_50=0.634, bbox_mAP_75=0.448, bbox_mAP_s=-1.0,
                   bbox_mAP_m=0.45, bbox_mAP_l=0.57)


# ------------------------------------------------------------------ a real mmengine Runner
def _runner(work_dir, loop: dict, name: str, load_from=None):
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel
    from mmengine.registry import METRICS
    from mmengine.runner import Runner

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1)

        def forward(self, x, y=None, mode="tensor"):
            out = self.fc(x).squeeze(-1)
            if mode == "loss":
                return dict(loss=((out - y) ** 2).mean())
            return list(out)

    @METRICS.register_module(name="ToyCocoMetric", force=True)
    class ToyCocoMetric(BaseMetric):
        default_prefix = "coco"

        def process(self, data_batch, data_samples):
            self.results.append(len(data_samples))

        def compute_metrics(self, results):
            return dict(COCO_VALUES)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return dict(x=torch.full((2,), float(i)), y=torch.tensor(float(i)))

    loader = dict(dataset=Data(), sampler=dict(type="DefaultSampler", shuffle=False),
                  batch_size=2, collate_fn=dict(type="default_collate"))
    # What the dumped config says (the tables read it); the objects above are what runs.
    cfg = dict(default_scope="mmdet", train_cfg=loop,
               model=dict(type="MaskRCNN", backbone=dict(type="TinyViT", arch="5m")),
               val_evaluator=dict(type="CocoMetric", metric="bbox"),
               default_hooks=dict(logger=dict(type="LoggerHook", interval=2)))
    return Runner(model=Toy(), work_dir=str(work_dir), experiment_name=name,
                  train_dataloader=loader, train_cfg=loop,
                  optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
                  val_dataloader=loader, val_cfg=dict(), val_evaluator=dict(type="ToyCocoMetric"),
                  test_dataloader=loader, test_cfg=dict(),
                  test_evaluator=dict(type="ToyCocoMetric"),
                  default_hooks=dict(logger=dict(type="LoggerHook", interval=2),
                                     checkpoint=dict(type="CheckpointHook", interval=1)),
                  load_from=load_from, cfg=cfg)


def _launches(work_dir):
    return sorted(d for d in os.listdir(work_dir)
                  if d[:8].isdigit() and os.path.isdir(os.path.join(work_dir, d)))


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Epoch- and iteration-based training, then a test launch, written by mmengine."""
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer

    from tinyvit_backbone.registration import install_run_hooks

    # A Runner leaves its default scope, logger, message hub and visualizer as the "current"
    # global instances; take them out again so later tests see mmengine as they found it.
    managers = (DefaultScope, MMLogger, MessageHub, Visualizer)
    before = {m: set(m._instance_dict) for m in managers}
    root = tmp_path_factory.mktemp("mmengine_runs")
    # as in a training process that imported the package: mmengine's checkpoint types are
    # allowed under weights_only loading (the test launch loads one); and mmengine's own
    # registries build the toy model, whatever scope an earlier test left current
    install_run_hooks()
    try:
        with DefaultScope.overwrite_default_scope("mmengine"):
            _runner(root / "epoch", dict(type="EpochBasedTrainLoop", max_epochs=2, val_interval=1),
                    "tables_epoch").train()
            _runner(root / "iter", dict(type="IterBasedTrainLoop", max_iters=7, val_interval=5),
                    "tables_iter").train()
            shutil.copytree(root / "epoch", root / "tested")
            time.sleep(1.1)  # a new launch folder needs a new second
            _runner(root / "tested", dict(type="EpochBasedTrainLoop", max_epochs=2,
                                          val_interval=1),
                    "tables_test", load_from=str(root / "tested" / "epoch_2.pth")).test()
            # Dies while building its training loop, as a run without its dataset does: mmengine
            # has written its log and config by then, and logs nothing of the exception.
            broken = _runner(root / "crashed", dict(type="EpochBasedTrainLoop", max_epochs=2,
                                                    val_interval=1), "tables_crashed")
            broken._train_dataloader = dict(dataset=dict(type="NoSuchDataset"))
            with pytest.raises(KeyError, match="NoSuchDataset"):
                broken.train()
    finally:
        for manager in managers:
            for name in [n for n in manager._instance_dict if n not in before[manager]]:
                instance = manager._instance_dict.pop(name)
                for handler in list(getattr(instance, "handlers", [])):
                    handler.close()
                    instance.removeHandler(handler)
    return root


def test_real_layout_is_what_the_reader_expects(real_runs):
    wd = real_runs / "epoch"
    (ts,) = _launches(wd)
    assert (wd / f"{ts}.py").exists() and (wd / "last_checkpoint").exists()
    assert (wd / ts / f"{ts}.log").exists() and (wd / ts / "vis_data" / "config.py").exists()
    lines = [json.loads(x) for x in (wd / ts / "vis_data" / "scalars.json").read_text().splitlines()]
    assert (wd / ts / "vis_data" / f"{ts}.json").read_text() == \
        (wd / ts / "vis_data" / "scalars.json").read_text()
    assert {"loss", "lr", "epoch", "iter", "step"} <= set(lines[0])
    evals = [x for x in lines if "coco/bbox_mAP" in x]
    assert [x["step"] for x in evals] == [1, 2]  # epoch-based: step = epoch
    it_lines = (real_runs / "iter" / _launches(real_runs / "iter")[0] / "vis_data" /
                "scalars.json").read_text().splitlines()
    # Iteration-based with mmengine's default log_metric_by_epoch=True: val step is 0.
    assert [json.loads(x)["step"] for x in it_lines if "coco/bbox_mAP" in x] == [0, 0]
    tested = _launches(real_runs / "tested")
    assert len(tested) == 2 and (real_runs / "tested" / tested[1] / f"{tested[1]}.json").exists()


@pytest.mark.parametrize("name,source", [("epoch", "final val, epoch 2"),
                                         ("iter", "final val, iter 7")])
def test_real_training_runs_are_complete(real_runs, name, source):
    run = read_run(str(real_runs / name))
    assert run.status == "complete", run.reason
    assert run.eval_source == source
    assert run.metrics == {f"coco/{k}": v for k, v in COCO_VALUES.items()}
    assert run.task == "det"
    assert run.config.backbone == "TinyViT-5M"
    assert run.config.backbone_params_m == pytest.approx(5.071124)
    assert run.config.model == "Mask R-CNN"


def test_real_test_launch_wins_and_config_found_among_two(real_runs):
    run = read_run(str(real_runs / "tested"))
    assert run.status == "complete", run.reason
    assert run.eval_source.startswith("test ")
    assert run.metrics["coco/bbox_mAP"] == pytest.approx(0.412)


def _scalars(wd):
    (ts,) = _launches(wd)
    return wd / ts / "vis_data" / "scalars.json"


def test_truncated_before_final_evaluation_is_in_progress(real_runs, tmp_path):
    wd = tmp_path / "epoch"
    shutil.copytree(real_runs / "epoch", wd)
    path = _scalars(wd)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # drop the final evaluation
    run = read_run(str(wd))
    assert run.status == "in progress" and "no evaluation line after it yet" in run.reason
    assert run.metrics == {}
    path.write_text("".join(lines[:2]))  # epoch 1 only
    assert read_run(str(wd)).reason == "epoch 1/2"
    path.write_text("".join(lines[:2]) + lines[2][:15])  # a line being written
    run = read_run(str(wd))
    assert run.status == "in progress" and "being written" in run.reason


def test_bad_lines_and_bad_metrics_are_malformed(real_runs, tmp_path):
    wd = tmp_path / "epoch"
    shutil.copytree(real_runs / "epoch", wd)
    path = _scalars(wd)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{oops\n" + "".join(lines[1:]))
    run = read_run(str(wd))
    assert run.status == "malformed" and "scalars.json:2 is not a JSON line" in run.reason
    final = json.loads(lines[-1])
    del final["coco/bbox_mAP_75"]
    path.write_text("".join(lines[:-1]) + json.dumps(final) + "\n")
    run = read_run(str(wd))
    assert run.status == "malformed" and "lacks coco/bbox_mAP_75" in run.reason
    final["coco/bbox_mAP_75"] = 44.8  # percent where CocoMetric writes a fraction
    path.write_text("".join(lines[:-1]) + json.dumps(final) + "\n")
    run = read_run(str(wd))
    assert run.status == "malformed" and "expected a fraction" in run.reason


def test_missing_config_is_malformed(real_runs, tmp_path):
    wd = tmp_path / "epoch"
    shutil.copytree(real_runs / "epoch", wd)
    for p in wd.glob("*.py"):
        p.unlink()
    for p in wd.glob("*/vis_data/config.py"):
        p.unlink()
    run = read_run(str(wd))
    assert run.status == "malformed" and "no dumped config" in run.reason


def test_find_work_dirs(real_runs, tmp_path):
    found = find_work_dirs([str(real_runs)])
    assert [os.path.basename(p) for p in found] == ["crashed", "epoch", "iter", "tested"]
    assert find_work_dirs([str(real_runs / "iter"), str(real_runs)]) == found
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an mmengine work dir"):
        find_work_dirs([str(tmp_path / "empty")])
    with pytest.raises(FileNotFoundError, match="work dir not found"):
        find_work_dirs([str(tmp_path / "absent")])


# ------------------------------------------------------------------ probe results
def _record(**kw):
    rec = dict(task="kshot", model="m", arch="21m", weights="tiny_vit_21m_22k_distill.pth",
               dataset="cifar10", metric="top1", metrics={"top1": 50.0}, k=5, seed=0)
    rec.update(kw)
    return rec


def test_parse_record_rejects_what_it_cannot_use():
    assert parse_record(_record(), "f:1").value == 50.0
    for bad, msg in [(_record(task="probe"), "task = 'probe'"),
                     (_record(metric="top1", metrics={"top5": 3.0}), "metrics has no 'top1'"),
                     (_record(metrics={"top1": 0.5e3}), "expected percent"),
                     (_record(seed=None), "missing field 'seed'"),
                     (_record(k=-1), "non-negative integer"),
                     (_record(dataset=""), "missing field 'dataset'")]:
        with pytest.raises(ValueError, match=msg):
            parse_record(bad, "f:1")


def test_read_results_reports_lines_and_keeps_the_later_duplicate(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([json.dumps(_record(seed=0)), json.dumps(_record(seed=1)),
                               "[1, 2]", json.dumps(_record(seed=0, metrics={"top1": 60.0})),
                               '{"task": "ks']))
    res = read_results([str(path)])
    assert [r.value for r in sorted(res.records, key=lambda r: r.seed)] == [60.0, 50.0]
    assert res.malformed == ["r.jsonl:3: a JSON list, expected an object"]
    assert res.in_progress == ["r.jsonl:5: last line unterminated (being written)"]
    assert res.warnings == ["duplicate result kshot / clip-lbfgs / m / CIFAR-10 / k=5 / seed=0: "
                            "r.jsonl:1 replaced by r.jsonl:4"]
    with pytest.raises(FileNotFoundError, match="results file not found"):
        read_results([str(tmp_path / "absent.jsonl")])


def test_kshot_mean_and_sample_std_over_seeds():
    recs = [parse_record(_record(seed=s, metrics={"top1": v}), "f") for s, v in
            [(0, 40.0), (1, 44.0), (2, 42.0)]]
    recs.append(parse_record(_record(k=1, seed=0, metrics={"top1": 30.0}), "f"))
    stats = kshot_stats(recs)[("m", "clip-lbfgs", "CIFAR-10")]
    assert stats[5].mean == pytest.approx(42.0) and stats[5].std == pytest.approx(2.0)
    assert stats[5].seeds == (0, 1, 2)
    assert stats[1].mean == 30.0 and stats[1].std is None


def test_names_arch_and_pretraining():
    assert canonical_dataset("stanford_cars") == "Stanford Cars"
    assert canonical_dataset("ISIC") == "ISIC2018"
    assert canonical_dataset("imagenet1k") == "ImageNet-1k"
    assert canonical_dataset("my_data") == "my_data"
    assert official_variant("21m") == official_variant("tiny_vit_21m_224.dist_in22k") == "21m"
    assert official_variant("swin_tiny_patch4_window7_224") is None
    assert pretraining_of("ckpt/tiny_vit_21m_22kto1k_distill.pth", "21m") == "in21k-distill"
    assert pretraining_of("tiny_vit_21m_224.in1k", "21m") == "in1k"
    assert pretraining_of("vit_base_patch16_224.augreg_in21k", "vit_base") == "in21k"
    assert pretraining_of(None) == "random"


# ------------------------------------------------------------------ benchmark report
def test_bench_report(tmp_path):
    path = tmp_path / "report.json"
    fig = dict(bench="backbone", name="x", value=1.0, unit="images/s", baseline="timm",
               baseline_value=1.0, extra=dict(model="tinyvit-21m", input_size=224,
                                              path="fast", images_per_s=12.5))
    path.write_text(json.dumps(dict(machine=dict(cpu_count=2), figures=[fig])))
    report = read_bench_report(str(path))
    assert report.throughput == {("21m", 224): {"fast": 12.5}} and not report.problems
    path.write_text("{")
    assert "not JSON" in read_bench_report(str(path)).problems[0]
    with pytest.raises(FileNotFoundError, match="bench/run_all.py"):
        read_bench_report(str(tmp_path / "absent.json"))
    assert read_bench_report(None).throughput == {}


# ------------------------------------------------------------------ rendering, writing
def test_renderers_agree_and_escape():
    table = Table("t", "A_b & c", [Column("name"), Column("acc", True, 1, with_err=True)])
    table.add_row([Cell(text="x|y_1"), Cell(value=50.25, err=0.349)])
    table.add_row([Cell(text="z"), Cell()])
    md = render.to_markdown(table)
    assert "| x\\|y_1 | 50.2 ± 0.3 |" in md and "| z | — |" in md
    assert render.to_csv(table) == "name,acc,acc ±\nx|y_1,50.2,0.3\nz,,\n"
    tex = render.to_latex(table)
    assert r"x\textbar{}y\_1 & 50.2 $\pm$ 0.3 \\" in tex and r"z & --- \\" in tex
    assert r"\caption{A\_b \& c}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    with pytest.raises(ValueError, match="row has 1 cells"):
        table.add_row([Cell()])


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "t.md"
    atomic_write(str(path), "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write(str(path), "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["t.md"]


def test_counted_complexity_is_close_to_the_paper():
    cx = classifier_complexity("21m", 224)
    assert cx.params_m == pytest.approx(21.198568)
    assert cx.gmacs == pytest.approx(4.3, rel=0.03)
    assert classifier_complexity("21m", 512).gmacs == pytest.approx(27.0, rel=0.03)


def test_coco_minus_one_is_na_and_percent_elsewhere(real_runs):
    from reproduction.tables import Notes, coco_table
    from tinyvit_backbone.tabular import to_markdown
    notes = Notes()
    md = to_markdown(coco_table([read_run(str(real_runs / "epoch"))], notes))
    assert "| 41.2 | 63.4 | 44.8 | n/a | 45.0 | 57.0 | — | epoch (final val, epoch 2) |" in md


def test_a_handled_traceback_in_the_log_is_not_a_failure(real_runs, tmp_path):
    wd = tmp_path / "epoch"
    shutil.copytree(real_runs / "epoch", wd)
    (ts,) = _launches(wd)
    log = wd / ts / f"{ts}.log"
    crash = "Traceback (most recent call last):\n  File \"x.py\"\nValueError: bad batch\n"
    log.write_text(log.read_text() + crash + "2024/01/01 - mmengine - INFO - retrying\n")
    assert read_run(str(wd)).status == "complete"
    log.write_text(log.read_text() + crash)
    run = read_run(str(wd))
    assert run.status == "failed" and run.reason.endswith("ValueError: bad batch")


def test_runner_globals_are_put_back(real_runs):
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer
    for manager in (DefaultScope, MMLogger, MessageHub, Visualizer):
        assert not [n for n in manager._instance_dict if n.startswith("tables_")], manager


def test_one_label_for_two_weights_becomes_two_rows(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_record(weights_digest="aaaaaaaa1111")) + "\n"
                    + json.dumps(_record(weights_digest="bbbbbbbb2222")) + "\n")
    res = read_results([str(path)])
    assert sorted(r.model for r in res.records) == ["m @aaaaaaaa", "m @bbbbbbbb"]
    assert "is used for 2 different weights" in res.warnings[0]


# ------------------------------------------------------------------ crashed, duplicate, config only
def test_a_run_that_died_while_building_is_crashed_once_silent(real_runs):
    wd = str(real_runs / "crashed")
    (ts,) = _launches(wd)
    assert (real_runs / "crashed" / ts / f"{ts}.log").exists()
    assert "Traceback" not in (real_runs / "crashed" / ts / f"{ts}.log").read_text()
    fresh = read_run(wd)
    assert fresh.status == "in progress" and "no results written yet" in fresh.reason
    later = time.time() + 60 * STALE_MINUTES + 60
    run = read_run(wd, now=later)
    assert run.status == "crashed" and run.reason.startswith("crashed while starting")
    assert "fix the cause and rerun" in run.reason
    assert read_run(wd, now=later, stale_minutes=24 * 60).status == "in progress"


def test_a_run_that_stopped_training_is_crashed_once_silent(real_runs, tmp_path):
    wd = tmp_path / "epoch"
    shutil.copytree(real_runs / "epoch", wd)
    path = _scalars(wd)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))  # epoch 1 only
    assert read_run(str(wd)).status == "in progress"
    old = time.time() - 60 * STALE_MINUTES - 60
    for folder, _, files in os.walk(wd):
        for f in files:
            os.utime(os.path.join(folder, f), (old, old))
    run = read_run(str(wd))
    assert run.status == "crashed" and run.reason.startswith("epoch 1/2; nothing was written")
    assert "--resume" in run.reason
    # a complete run stays complete, however old
    assert read_run(str(real_runs / "epoch"), now=time.time() + 10 ** 6).status == "complete"


def test_a_dumped_config_without_logs_is_listed_from_its_parent(real_runs, tmp_path):
    parent = tmp_path / "work_dirs"
    shutil.copytree(real_runs / "epoch", parent / "epoch")
    (parent / "waiting").mkdir()
    (ts,) = _launches(parent / "epoch")
    shutil.copy(parent / "epoch" / f"{ts}.py", parent / "waiting" / "waiting.py")
    (parent / "notes").mkdir()  # a folder of other files is no run
    (parent / "notes" / "plot.py").write_text("import matplotlib\n")
    found = find_work_dirs([str(parent)])
    assert [os.path.basename(p) for p in found] == ["epoch", "waiting"]
    run = read_run(found[1])
    assert run.status == "config only" and "never logged" in run.reason
    from reproduction.tables import Notes, coco_table, note_runs
    from tinyvit_backbone.tabular import to_markdown
    notes = Notes()
    runs = read_runs(found)
    note_runs(runs, notes)
    assert any(n.startswith("waiting: a dumped config") for n in notes.config_only)
    assert "| config only (duplicate) | TinyViT-5M |" in to_markdown(coco_table(runs, notes))


def test_same_names_and_same_configs_are_told_apart(real_runs, tmp_path):
    for parent in ("x", "y"):
        shutil.copytree(real_runs / "epoch", tmp_path / parent / "work_dirs" / "epoch")
    shutil.copytree(real_runs / "epoch", tmp_path / "x" / "work_dirs" / "epoch_again")
    shutil.copytree(real_runs / "iter", tmp_path / "x" / "work_dirs" / "iter")
    found = find_work_dirs([str(tmp_path / "x" / "work_dirs"), str(tmp_path / "y" / "work_dirs")])
    runs = {r.name: r for r in read_runs(found)}
    assert sorted(runs) == ["epoch_again", "iter", "x/work_dirs/epoch", "y/work_dirs/epoch"]
    assert runs["x/work_dirs/epoch"].duplicates == ["epoch_again", "y/work_dirs/epoch"]
    assert runs["iter"].duplicates == []  # another train_cfg: another config

    from reproduction.tables import Notes, coco_table, note_runs
    from tinyvit_backbone.tabular import to_markdown
    notes = Notes()
    note_runs(list(runs.values()), notes)
    md = to_markdown(coco_table(list(runs.values()), notes))
    rows = [line for line in md.splitlines() if "(final val" in line]
    assert len(rows) == 4 and len(set(rows)) == 4
    assert sum("| ours (duplicate) |" in r for r in rows) == 3
    assert any("y/work_dirs/epoch (final val, epoch 2); same config as epoch_again, "
               "x/work_dirs/epoch" in r for r in rows)
    assert any(w.startswith("epoch_again, x/work_dirs/epoch, y/work_dirs/epoch: runs of the "
                            "same config") for w in notes.warnings)
