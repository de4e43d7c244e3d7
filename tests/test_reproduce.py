"""tools/reproduce.py: one command per paper table, on hand-made inputs."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures" / "tables"
sys.path.insert(0, str(ROOT / "tools"))

import reproduce as reproduce_cli  # noqa: E402

from reproduction.reproduce import parse_weights, reproduce_table6, train_command  # noqa: E402


def test_weights_rows_are_parsed_and_checked():
    assert parse_weights(["in21k_distill=tiny_vit_21m_22k_distill", "in1k=w.pth"]) == {
        "in21k-distill": "tiny_vit_21m_22k_distill", "in1k": "w.pth"}
    with pytest.raises(ValueError, match="must be one of"):
        parse_weights(["imagenet=w.pth"])
    with pytest.raises(ValueError, match="ROW=WEIGHTS"):
        parse_weights(["in1k"])


def test_table6_collects_the_runs_it_finds(tmp_path, capsys):
    out = tmp_path / "t6"
    code = reproduce_cli.main(["table6", "--work-dirs", str(FIX / "work_dirs"), "--out", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["runs"]["cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco"] == "complete"
    md = (out / "table6.md").read_text()
    assert "| ours | TinyViT-21M (IN-21k ⚗) |" in md and "| published | Swin-T |" in md
    assert any("cascade_swin-t_1x.py" in m for m in summary["missing"])
    assert (out / "table6.csv").is_file()


def test_table6_train_runs_only_the_missing_rows_then_collects(tmp_path):
    """--train launches one training per row without a complete run (here: a stand-in that
    copies a finished work dir into place), then the table holds them."""
    finished = FIX / "work_dirs" / "cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco"
    commands = []

    def runner(cmd):
        commands.append(cmd)
        wd = Path(cmd[cmd.index("--work-dir") + 1])
        shutil.copytree(finished, wd)
        return 0

    summary = reproduce_table6([str(tmp_path / "none")], str(tmp_path / "out"), train=True,
                               config_root=str(ROOT), gpus=2, work_root=str(tmp_path / "wd"),
                               runner=runner, log=lambda m: None)
    configs = [next(c for c in cmd if c.endswith(".py") and "configs" in c) for cmd in commands]
    assert [os.path.basename(c) for c in configs] == [
        "cascade_swin-t_1x.py", "cascade_tinyvit21m_in1k.py", "cascade_tinyvit21m.py"]
    assert all("--nproc-per-node=2" in cmd for cmd in commands)
    assert len(summary["trained"]) == 3 and set(summary["runs"].values()) == {"complete"}


def test_table6_train_failure_says_how_to_resume(tmp_path):
    with pytest.raises(RuntimeError, match="rerun the same command to resume"):
        reproduce_table6([], str(tmp_path / "out"), train=True, config_root=str(ROOT), gpus=1,
                         work_root=str(tmp_path / "wd"), runner=lambda cmd: 3, log=lambda m: None)


def test_train_command_uses_torchrun_for_several_gpus():
    cmd = train_command("det_configs/cascade_tinyvit21m.py", 8)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=8"]
    assert cmd[-2:] == ["--launcher", "pytorch"]
    single = train_command("det_configs/cascade_tinyvit21m.py", 1)
    assert single[1].endswith("tools/train.py") and "--launcher" not in single


# ----------------------------------------------------------------------------- Table 5
def _fake_runners(calls):
    """Stand-ins for linear_probe's two protocols: each checks that reproduce_table5 calls it
    the way the real function accepts, then appends the record the real one would."""
    import inspect

    from linear_probe.cdfsl import run_cdfsl
    from linear_probe.mocov3 import run_mocov3
    from linear_probe.results import append_jsonl, make_record

    def mocov3(model, dataset, **kw):
        inspect.signature(run_mocov3).bind(model, dataset, **kw)
        calls.append(("mocov3", model.pretraining, dataset, kw["recipe"].epochs))
        append_jsonl(kw["output"], [make_record(
            task="linear_probe", protocol="mocov3", model=model.display_label(), arch="21m",
            weights=model.weights, pretraining=model.pretraining, dataset=dataset,
            metric="top1", metrics={"top1": 91.25}, split_sizes={}, timings={})])

    def cdfsl(model, dataset, ks, **kw):
        inspect.signature(run_cdfsl).bind(model, dataset, ks, **kw)
        calls.append(("cdfsl", model.pretraining, dataset, tuple(ks)))
        append_jsonl(kw["output"], [make_record(
            task="episodes", protocol="cdfsl", model=model.display_label(), arch="21m",
            weights=model.weights, pretraining=model.pretraining, dataset=dataset, k=k,
            n_way=kw["n_way"], episodes=kw["n_episodes"], metric="top1",
            metrics={"top1": 60.0 + k / 10}, ci95=0.5, split_sizes={}, timings={},
            freeze_backbone=kw["freeze_backbone"]) for k in ks])

    return mocov3, cdfsl


def test_table5_runs_the_rows_it_can_lists_the_rest_and_resumes(tmp_path):
    """Weights for one row and data for one dataset of each half: exactly those cells run,
    land beside the published ones, and everything else is listed with what fills it."""
    from linear_probe.registry import dataset_spec
    from reproduction.reproduce import reproduce_table5

    data = tmp_path / "data"
    for name in ("cifar10", "eurosat"):
        spec = dataset_spec(name)
        for rel in spec.check:
            (spec.directory(data) / rel).mkdir(parents=True)
    weights = tmp_path / "tiny_vit_21m_22k_distill.pth"
    weights.write_bytes(b"weights")
    calls = []
    mocov3, cdfsl = _fake_runners(calls)
    kw = dict(data_root=str(data), episodes=20, mocov3_epochs=2, run_mocov3=mocov3,
              run_cdfsl=cdfsl, log=lambda m: None)
    out = tmp_path / "t5"
    summary = reproduce_table5({"in21k-distill": str(weights)}, str(out), **kw)
    assert calls == [("mocov3", "in21k-distill", "cifar10", 2),
                     ("cdfsl", "in21k-distill", "eurosat", (5, 20, 50))]
    linear = (out / "table5_linear.md").read_text()
    ours = next(line for line in linear.splitlines() if line.startswith("| ours"))
    assert "| IN-21k ⚗ | 91.2" in ours or "| IN-21k ⚗ | 91.3" in ours
    fewshot = (out / "table5_fewshot.md").read_text()
    assert "fine-tuned backbone" in fewshot and "| published | IN-1k |" in fewshot
    missing = "\n".join(summary["missing"])
    assert "data cifar100" in missing and "data chestx" in missing
    assert "row IN-1k: no weights" in missing and "tools/reproduce.py table5" in missing
    assert any("20 episodes, the paper uses 600" in w for w in summary["warnings"])

    calls.clear()
    again = reproduce_table5({"in21k-distill": str(weights)}, str(out), **kw)
    assert calls == [] and again["ran"] == [] and again["records"] == summary["records"]
    # The frozen variant is a different cell: it runs, beside the fine-tuned one.
    reproduce_table5({"in21k-distill": str(weights)}, str(out), freeze_backbone=True,
                     linear=False, **kw)
    assert calls == [("cdfsl", "in21k-distill", "eurosat", (5, 20, 50))]
    assert "frozen backbone" in (out / "table5_fewshot.md").read_text()
