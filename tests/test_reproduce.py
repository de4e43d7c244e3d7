"""tools/reproduce.py: one command per paper table, on hand-made inputs."""
import json
import os
import shlex
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
    # the fixture's _rerun is the same config: both rows say so, as tools/make_tables.py does
    assert summary["duplicates"]["cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco"] == [
        "cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco_rerun"]
    md = (out / "table6.md").read_text()
    assert "| ours (duplicate) | TinyViT-21M (IN-21k ⚗) |" in md and "| published | Swin-T |" in md
    assert any("cascade_swin-t_1x.py" in m for m in summary["missing"])
    assert (out / "table6.csv").is_file()


def test_table6_tells_same_named_runs_apart_and_marks_duplicates(tmp_path):
    """Two work dirs of one name under different folders (e.g. two clusters' work_dirs) are two
    rows with told-apart names, each marked as a duplicate of the other, as in the table maker."""
    finished = FIX / "work_dirs" / "cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco"
    for site in ("a", "b"):
        shutil.copytree(finished, tmp_path / site / "work_dirs" / finished.name)
    out = tmp_path / "t6"
    summary = reproduce_table6([str(tmp_path / site / "work_dirs") for site in ("a", "b")],
                               str(out))
    names = [f"{site}/work_dirs/{finished.name}" for site in ("a", "b")]
    assert summary["runs"] == {n: "complete" for n in names}
    assert summary["duplicates"] == {names[0]: [names[1]], names[1]: [names[0]]}
    md = (out / "table6.md").read_text()
    assert md.count("| ours (duplicate) | TinyViT-21M (IN-21k ⚗) |") == 2
    assert f"same config as {names[1]}" in md


def _fake_coco(root: Path) -> None:
    """The files the Cascade configs' dataloaders open (empty: nothing reads them here)."""
    for rel in ("annotations/instances_train2017.json", "annotations/instances_val2017.json"):
        (root / "data/coco" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "data/coco" / rel).write_text("{}")
    for rel in ("train2017", "val2017"):
        (root / "data/coco" / rel).mkdir(parents=True, exist_ok=True)


def test_table6_train_runs_only_the_missing_rows_then_collects(tmp_path, monkeypatch):
    """--train launches one training per row without a complete run (here: a stand-in that
    copies a finished work dir into place), then the table holds them."""
    finished = FIX / "work_dirs" / "cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco"
    commands = []
    monkeypatch.chdir(tmp_path)
    _fake_coco(tmp_path)

    def runner(cmd):
        commands.append(cmd)
        wd = Path(cmd[cmd.index("--work-dir") + 1])
        shutil.copytree(finished, wd)
        return 0

    summary = reproduce_table6([str(tmp_path / "none")], str(tmp_path / "out"), train=True,
                               config_root=str(ROOT), gpus=2, work_root=str(tmp_path / "wd"),
                               runner=runner, gpu_count=2, log=lambda m: None)
    configs = [next(c for c in cmd if c.endswith(".py") and "configs" in c) for cmd in commands]
    assert [os.path.basename(c) for c in configs] == [
        "cascade_swin-t_1x.py", "cascade_tinyvit21m_in1k.py", "cascade_tinyvit21m.py"]
    assert all("--nproc-per-node=2" in cmd for cmd in commands)
    assert len(summary["trained"]) == 3 and set(summary["runs"].values()) == {"complete"}


def test_table6_train_failure_says_how_to_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_coco(tmp_path)
    with pytest.raises(RuntimeError, match="rerun the same command: it starts this run again"):
        reproduce_table6([], str(tmp_path / "out"), train=True, config_root=str(ROOT), gpus=1,
                         work_root=str(tmp_path / "wd"), runner=lambda cmd: 3, gpu_count=1,
                         log=lambda m: None)


def test_table6_train_checks_gpus_and_coco_before_starting_anything(tmp_path, monkeypatch,
                                                                   capsys):
    """No GPU, no COCO: one message naming both, with what fixes each, and nothing launched
    (it used to start 8 processes that each died in a SyncBN traceback)."""
    import reproduction.reproduce as rr
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rr, "_gpu_count", lambda: 0)
    monkeypatch.setattr(rr.subprocess, "run", lambda *a, **k: pytest.fail("a training started"))
    code = reproduce_cli.main(["table6", "--work-dirs", "work_dirs", "--train", "--gpus", "8"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --train: 3 run(s) to train, none started:")
    assert "--gpus 8: torch sees no GPU on this machine" in err
    assert "tools/train.py det_configs/cascade_tinyvit21m.py --embedded" in err
    assert "data/coco/annotations/instances_train2017.json" in err
    assert err.count("python -m linear_probe download --dataset coco --data-root data") == 1
    assert ("the dataset of cascade_swin-t_1x.py, cascade_tinyvit21m_in1k.py, "
            "cascade_tinyvit21m.py is not in place") in err
    assert "Traceback" not in err and not (tmp_path / "work_dirs").exists()

    monkeypatch.setattr(rr, "_gpu_count", lambda: 2)
    _fake_coco(tmp_path)
    assert reproduce_cli.main(["table6", "--train", "--gpus", "8"]) == 2
    err = capsys.readouterr().err
    assert "torch sees 2 GPU(s) here. Give --gpus 2" in err and "coco" not in err


def test_table6_work_dir_that_does_not_exist(tmp_path, monkeypatch, capsys):
    """Without --train a missing --work-dirs is an error; with --train it is created for the
    runs (and said so)."""
    monkeypatch.chdir(tmp_path)
    assert reproduce_cli.main(["table6", "--out", "t6"]) == 0  # the default need not exist
    assert "missing" in json.loads(capsys.readouterr().out)
    assert reproduce_cli.main(["table6", "--work-dirs", "nowhere", "--out", "t6"]) == 2
    err = capsys.readouterr().err
    assert "error: --work-dirs: nowhere not found" in err and "add --train" in err
    _fake_coco(tmp_path)
    finished = FIX / "work_dirs" / "cascade-mask-rcnn_tinyvit-21m_fpn_1x_coco"

    def runner(cmd):
        shutil.copytree(finished, cmd[cmd.index("--work-dir") + 1])
        return 0
    lines = []
    summary = reproduce_table6(["nowhere"], "t6", train=True, config_root=str(ROOT), gpus=1,
                               runner=runner, gpu_count=1, log=lines.append)
    assert lines[0] == "[table6] created nowhere/ for the training runs"
    trainings = [line for line in lines if "training:" in line]
    assert len(trainings) == 3 and all(
        line.split()[-1].startswith(os.path.join("nowhere", "cascade_")) for line in trainings)
    assert len(summary["trained"]) == 3


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


def test_table5_weights_unreachable_still_writes_the_table(tmp_path, monkeypatch, capsys):
    """No network: the row whose weights cannot be fetched is listed with the URL, the path a
    manual download is picked up from and the command to rerun; the table and summary.json are
    written all the same (it used to stop at the download with nothing written)."""
    from linear_probe.registry import dataset_spec
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    data = tmp_path / "data"
    spec = dataset_spec("cifar10")
    for rel in spec.check:
        (spec.directory(data) / rel).mkdir(parents=True)
    url = "http://127.0.0.1:9/tiny_vit_21m_22k_distill.pth"  # the discard port: nobody listens
    out = tmp_path / "t5"
    argv = ["table5", "--data-root", str(data), "--weights", f"in21k-distill={url}",
            "--out", str(out), "--only", "linear"]
    assert reproduce_cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    (row,) = [m for m in summary["missing"] if m.startswith("row IN-21k ⚗")]
    assert "weights not downloadable now: could not download " + url in row
    from tinyvit_backbone.weights import cache_path  # where a manual download is picked up
    assert cache_path(url).startswith(str(tmp_path / "torch" / "hub" / "checkpoints"))
    assert f"put the file at {cache_path(url)}:" in row
    assert row.endswith("Then rerun python tools/reproduce.py " + shlex.join(argv) + ".")
    assert summary["ran"] == [] and (out / "summary.json").is_file()
    assert (out / "table5_linear.md").is_file() and (out / "table5_fewshot.md").is_file()


def test_table5_a_weights_typo_is_an_error_before_any_work(tmp_path, capsys):
    argv = ["table5", "--weights", "in1k=tiny_vit_21m_1kk", "--out", str(tmp_path / "t5")]
    assert reproduce_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--weights in1k=tiny_vit_21m_1kk" in err and "Did you mean tiny_vit_21m_1k" in err


def test_table5_takes_download_as_its_hint_says(tmp_path, monkeypatch, capsys):
    """The missing-data hint says 'Rerun with --download': table5 accepts it and tries the
    downloads (a dead mirror here), listing each failure with the URL and the place for a
    manually downloaded file, and still writes the table."""
    monkeypatch.setenv("TINYVIT_DATA_MIRROR", "http://127.0.0.1:9")
    out = tmp_path / "t5"
    argv = ["table5", "--data-root", str(tmp_path / "data"), "--out", str(out), "--only", "linear"]
    assert reproduce_cli.main(argv) == 0
    hint = next(m for m in json.loads(capsys.readouterr().out)["missing"]
                if m.startswith("data cifar10"))
    assert "Rerun with --download" in hint
    assert reproduce_cli.main([*argv, "--download"]) == 0
    summary = json.loads(capsys.readouterr().out)
    failed = next(m for m in summary["missing"] if m.startswith("data cifar10"))
    assert "downloading CIFAR-10 (cifar10) (through $TINYVIT_DATA_MIRROR=" in failed
    assert "could not be reached" in failed
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in failed
    assert str(tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz") in failed
    assert (out / "summary.json").is_file()


def test_every_option_has_help():
    parser = reproduce_cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"table {name}: {action.option_strings or action.dest} has no help"


def test_readme_table_command_reads_what_the_probes_write(tmp_path, monkeypatch):
    """The README's make_tables command names the probes' default results file and runs as
    written (it named results/probe/*.jsonl, which nothing writes)."""
    import re

    from linear_probe.__main__ import DEFAULT_OUTPUT
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"    (python tools/make_tables\.py .*?)\n\n", readme, re.S).group(1)
    argv = shlex.split(block.replace("\\\n", " "))[2:]
    assert argv[argv.index("--results") + 1] == DEFAULT_OUTPUT
    monkeypatch.chdir(tmp_path)
    shutil.copytree(FIX / "work_dirs", "work_dirs")
    Path(DEFAULT_OUTPUT).parent.mkdir(parents=True)
    shutil.copy(FIX / "results" / "probe.jsonl", DEFAULT_OUTPUT)
    if "--bench" in argv:
        Path(argv[argv.index("--bench") + 1]).parent.mkdir(parents=True)
        shutil.copy(FIX / "bench" / "report.json", argv[argv.index("--bench") + 1])
    sys.path.insert(0, str(ROOT / "tools"))
    import make_tables
    assert make_tables.main([*argv, "--no-plots"]) == 0
    assert (tmp_path / argv[argv.index("--out") + 1] / "tables.md").is_file()
