"""The mocov3 protocol (MoCo v3's main_lincls.py) at demo scale on the embedded digits."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import linear_probe.mocov3 as mocov3
from bench.common import subprocess_env
from linear_probe.__main__ import main
from linear_probe.backbones import ModelSpec
from linear_probe.loaders import load_split
from linear_probe.preprocessing import (
    SeededAugmentation,
    augmentation_seed,
    mocov3_train_preprocessing,
)
from linear_probe.recipes import MoCoV3Recipe
from linear_probe.registry import dataset_spec
from linear_probe.results import read_jsonl
from linear_probe.settings import FeatureSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
        "window_sizes": [7, 4, 2, 1]}
# main_lincls.py's recipe, shortened: 3 epochs, batch 256; a larger base lr so that a
# randomly initialised backbone's features visibly learn in 3 epochs
DEMO = MoCoV3Recipe(epochs=3, batch_size=256, base_lr=1.0)


def test_recipe_is_main_lincls():
    recipe = MoCoV3Recipe()
    assert (recipe.epochs, recipe.batch_size, recipe.momentum, recipe.weight_decay) == (90, 1024, 0.9, 0.0)
    assert recipe.lr == pytest.approx(0.4)  # 0.1 x 1024 / 256
    assert recipe.lr_at(0) == pytest.approx(0.4) and recipe.lr_at(45) == pytest.approx(0.2)
    assert 0 < recipe.lr_at(89) < 0.001
    short = recipe.with_epochs(3)
    assert short.epochs == 3 and short.lr == recipe.lr and recipe.epochs == 90
    head = mocov3.init_head(256, 100, seed=0)
    assert float(head.weight.detach().std()) == pytest.approx(0.01, rel=0.02) and not head.bias.any()
    assert torch.equal(head.weight, mocov3.init_head(256, 100, seed=0).weight)


def test_epoch_batches_split_each_global_batch_across_processes():
    one = mocov3.epoch_batches(10, 4, epoch=0, seed=0)
    assert [g for _, g in one] == [4, 4, 2] and sorted(sum((b for b, _ in one), [])) == list(range(10))
    assert one == mocov3.epoch_batches(10, 4, epoch=0, seed=0)
    assert one != mocov3.epoch_batches(10, 4, epoch=1, seed=0)  # a new order every epoch
    ranks = [mocov3.epoch_batches(10, 4, epoch=0, seed=0, rank=r, world=2) for r in (0, 1)]
    for step, (rows, size) in enumerate(one):
        assert sorted(ranks[0][step][0] + ranks[1][step][0]) == sorted(rows)
        assert ranks[0][step][1] == ranks[1][step][1] == size
    # a last global batch smaller than the number of processes is dropped
    assert [g for _, g in mocov3.epoch_batches(9, 4, epoch=0, seed=0, world=2)] == [4, 4]


def test_augmentation_is_drawn_per_image_and_epoch():
    spec = ModelSpec("tinyvit", arch=TINY)
    prep = mocov3_train_preprocessing(spec.data_config(32))
    data = SeededAugmentation(load_split(dataset_spec("digits"), "train", image_size=32),
                              prep.transform, seed=0)
    first = [data[i][0] for i in range(20)]
    assert all(torch.equal(data[i][0], first[i]) for i in reversed(range(20)))  # any order
    data.set_epoch(1)
    assert sum(not torch.equal(data[i][0], first[i]) for i in range(20)) >= 15
    assert first[0].dtype == torch.uint8 and first[0].shape == (3, 32, 32)
    seeds = {augmentation_seed(s, e, i) for s in range(3) for e in range(90) for i in range(300)}
    # 32-bit seeds (all torch's CPU generator keeps): a rare collision repeats one crop, no more
    assert len(seeds) > 0.9999 * 3 * 90 * 300 and max(seeds) < 2 ** 32


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("mocov3_cache"))


def _run(work_dir, cache_dir, **kwargs):
    settings = FeatureSettings(cache_dir=cache_dir, progress=False)
    return mocov3.run_mocov3(ModelSpec("tinyvit", arch=TINY, label="tiny"), "digits",
                             recipe=DEMO, settings=settings, work_dir=str(work_dir),
                             log=lambda line: None, **kwargs)


def test_mocov3_on_digits_learns_keeps_the_backbone_and_resumes(tmp_path, cache_dir, monkeypatch):
    import linear_probe.backbones as backbones
    built, real_build = [], backbones.build_extractor

    def spy(*args, **kwargs):
        extractor = real_build(*args, **kwargs)
        built.append((extractor, {k: v.clone() for k, v in extractor.state_dict().items()}))
        return extractor

    monkeypatch.setattr(backbones, "build_extractor", spy)
    record = _run(tmp_path / "full", cache_dir, output=str(tmp_path / "r.jsonl"))
    assert read_jsonl(tmp_path / "r.jsonl")[0]["metrics"] == record["metrics"]
    assert record["protocol"] == "mocov3" and record["task"] == "linear_probe"
    assert record["metric"] == "top1" and record["split_sizes"] == {"train": 1257, "val": 0, "test": 540}
    assert [h["lr"] for h in record["history"]] == [DEMO.lr_at(e) for e in range(3)]
    losses = [h["train_loss"] for h in record["history"]]
    assert losses[0] > losses[1] > losses[2]
    assert record["metrics"]["top1"] > 20.0  # 10 classes: chance is 10%
    assert record["best"]["top1"] == max(h["top1"] for h in record["history"])
    # what main_lincls.py reports: best_acc1, the last epoch's top-1 beside it
    assert record["metrics"]["top1"] == record["best"]["top1"]
    assert record["last"]["top1"] == record["history"][-1]["top1"] and record["last"]["epoch"] == 3
    assert record["amp"] == "fp32"
    assert record["preprocessing"]["style"] == "mocov3-eval" and record["preprocessing"]["resize"] == 37
    assert record["train_preprocessing"]["style"] == "mocov3-train"
    assert record["resumed_from_epoch"] == 0 and record["world_size"] == 1
    # the backbone never moved (main_lincls.py's sanity check)
    extractor, before = built[0]
    assert not any(module.training for module in extractor.modules())
    assert all(torch.equal(before[k], v) for k, v in extractor.state_dict().items())

    # interrupted during epoch 3: the checkpoint of epoch 2 is kept; a rerun finishes the same run
    real_epoch = mocov3.train_epoch
    calls = []

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(mocov3, "train_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", cache_dir)
    (checkpoint,) = (tmp_path / "cut").glob("mocov3/digits/*/checkpoint.pth")
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    monkeypatch.setattr(mocov3, "train_epoch", real_epoch)
    resumed = _run(tmp_path / "cut", cache_dir)
    assert resumed["resumed_from_epoch"] == 2
    assert resumed["history"] == record["history"] and resumed["metrics"] == record["metrics"]
    full = torch.load(next((tmp_path / "full").glob("mocov3/digits/*/checkpoint.pth")), weights_only=True)
    assert torch.equal(torch.load(checkpoint, weights_only=True)["head"]["weight"], full["head"]["weight"])


def test_the_record_reports_best_acc1_and_keeps_model_best(tmp_path, cache_dir, monkeypatch):
    """main_lincls.py reports best_acc1 and saves model_best: with epochs scoring 50, 70, 60
    the record's top-1 is 70 (epoch 2), the last epoch's 60 stands beside it, and
    model_best.pth holds epoch 2's head."""
    scores = iter([50.0, 70.0, 60.0])
    heads = []
    real = mocov3.evaluate_head

    def scripted(head, features, labels):
        metrics = real(head, features, labels)
        heads.append({k: v.detach().clone() for k, v in head.state_dict().items()})
        return {**metrics, "top1": next(scores)}

    monkeypatch.setattr(mocov3, "evaluate_head", scripted)
    record = _run(tmp_path, cache_dir)
    assert record["metrics"]["top1"] == 70.0 and record["best"] == {"top1": 70.0, "epoch": 2}
    assert record["last"]["top1"] == 60.0 and record["last"]["epoch"] == 3
    assert record["last"]["metrics"]["top1"] == 60.0 and "best_acc1" in record["reported"]
    best = torch.load(record["model_best"], weights_only=True)
    assert best["epoch"] == 2 and best["top1"] == 70.0
    assert all(torch.equal(best["head"][k], heads[1][k]) for k in heads[1])
    assert not torch.equal(best["head"]["weight"], heads[2]["weight"])


def test_amp_is_an_opt_in_and_recorded(tmp_path, cache_dir):
    """float32 by default on every device, as both originals; --amp gives bfloat16, on CPU
    too (where it is how its effect on the numbers is measured)."""
    from linear_probe.device import autocast_dtype
    assert autocast_dtype(torch.device("cuda")) is None
    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype(torch.device("cpu"), amp=True) is torch.bfloat16
    one = MoCoV3Recipe(epochs=1, batch_size=512, base_lr=1.0)
    runs = {}
    for amp in (False, True):
        settings = FeatureSettings(cache_dir=cache_dir, progress=False, amp=amp)
        runs[amp] = mocov3.run_mocov3(ModelSpec("tinyvit", arch=TINY), "digits", recipe=one,
                                      settings=settings, work_dir=str(tmp_path / str(amp)),
                                      log=lambda line: None)
    assert runs[False]["amp"] == "fp32" and runs[True]["amp"] == "bfloat16"
    assert runs[False]["history"][0]["train_loss"] != runs[True]["history"][0]["train_loss"]


def test_loader_workers_feed_a_gpu_whatever_the_set_size(monkeypatch):
    """On a GPU the persistent workers take every core of this process but one, shared among
    a torchrun node's processes, even for a set small enough to load in a thread on a CPU."""
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert mocov3.loader_workers(2040, cuda) == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert mocov3.loader_workers(2040, cuda) == 7
    assert mocov3.loader_workers(2040, cpu) == 0  # a prefetch thread, as the extraction
    assert mocov3.loader_workers(2040, cuda, requested=3) == 3


def test_device_augmentation_crops_and_flips_as_the_pil_pipeline(tmp_path, cache_dir):
    """--augment device draws the PIL pipeline's boxes and flips and resizes with its
    interpolation: on the CPU the digits get the very same pixels (torchvision's uint8
    antialiased bilinear resize matches PIL's), JPEG files nearly (the decoders round apart),
    and the probe's top-1 on the digits does not move."""
    from PIL import Image

    spec = ModelSpec("tinyvit", arch=TINY)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(2):
            (tmp_path / "jpegs" / split / f"c{c}").mkdir(parents=True)
            for i in range(4):
                small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
                Image.fromarray(small).resize((160, 120), Image.BICUBIC).save(
                    tmp_path / "jpegs" / split / f"c{c}" / f"{i}.jpg", quality=90)
    cpu = torch.device("cpu")
    for dataset, size, tolerance in (("digits", 32, 0.0), (f"imagefolder:{tmp_path / 'jpegs'}", 64, 0.05)):
        prep = mocov3_train_preprocessing(spec.data_config(size))
        raw = load_split(dataset_spec(dataset), "train", image_size=size)
        pil = SeededAugmentation(raw, prep.transform, seed=0)
        drawn = mocov3.DrawnAugmentation(raw, 0, (0.08, 1.0), (3 / 4, 4 / 3))
        keys = [(e, i) for e in range(2) for i in range(8)]
        images, labels = mocov3.augment_on_device([drawn[k] for k in keys], size, cpu)
        expected = torch.stack([pil[k][0] for k in keys])
        assert labels.tolist() == [pil[k][1] for k in keys]
        diff = (images.float() - expected.float()).abs()
        assert float(diff.mean()) <= tolerance
        if tolerance:  # JPEGs: decoded from their bytes; the same flips (nearer than mirrored)
            assert mocov3.image_file(raw, 0).endswith(".jpg") and drawn[(0, 0)][0].dim() == 1
            mirrored = (images.flip(-1).float() - expected.float()).abs().mean((1, 2, 3))
            assert bool((diff.mean((1, 2, 3)) < mirrored).all())
    one = MoCoV3Recipe(epochs=2, batch_size=512, base_lr=1.0)
    runs = {}
    for augment in ("pil", "device"):
        runs[augment] = mocov3.run_mocov3(spec, "digits", recipe=one, augment=augment,
                                          settings=FeatureSettings(cache_dir=cache_dir, progress=False),
                                          work_dir=str(tmp_path / "w"), log=lambda line: None)
    assert runs["device"]["augment"] == "device" and runs["pil"]["augment"] == "pil"
    assert runs["device"]["checkpoint"] != runs["pil"]["checkpoint"]  # another run key
    assert runs["device"]["history"] == runs["pil"]["history"]
    with pytest.raises(ValueError, match="--augment must be one of pil, device"):
        mocov3.run_mocov3(spec, "digits", recipe=one, augment="gpu",
                          settings=FeatureSettings(cache_dir=cache_dir, progress=False),
                          work_dir=str(tmp_path / "w"), log=lambda line: None)


def test_loader_workers_do_not_change_the_result(tmp_path, cache_dir):
    """Crops and flips are seeded per image and epoch, so persistent workers reproduce the
    in-process (prefetch thread) run exactly."""
    one_epoch = MoCoV3Recipe(epochs=2, batch_size=512, base_lr=1.0)
    runs = []
    for workers in (0, 2):
        settings = FeatureSettings(cache_dir=cache_dir, progress=False, workers=workers)
        runs.append(mocov3.run_mocov3(ModelSpec("tinyvit", arch=TINY), "digits", recipe=one_epoch,
                                      settings=settings, work_dir=str(tmp_path / str(workers)),
                                      log=lambda line: None))
    assert runs[1]["workers"] == 2 and runs[0]["workers"] == 0
    assert runs[0]["history"] == runs[1]["history"]


def test_mocov3_cli_prints_one_json_and_refuses_other_settings_checkpoint(tmp_path, cache_dir, capsys):
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(TINY))
    args = ["mocov3", "--arch", str(arch), "--dataset", "digits", "--cache-dir", cache_dir,
            "--work-dir", str(tmp_path / "w"), "--output", str(tmp_path / "r.jsonl"),
            "--epochs", "1", "--batch-size", "512", "--no-progress"]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["command"] == "mocov3" and len(result["records"]) == 1
    assert "epoch 1/1" in captured.err and "[mocov3] linear probe: top1" in captured.err
    (checkpoint,) = (tmp_path / "w").glob("mocov3/digits/*/checkpoint.pth")
    state = torch.load(checkpoint, weights_only=True)
    torch.save({**state, "key": "other"}, checkpoint)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "belongs to other settings" in err and "delete it" in err


@pytest.mark.slow
def test_two_processes_train_the_same_head_as_one(tmp_path, cache_dir):
    """torchrun with 2 CPU processes (gloo, DDP on the head) = one process, up to summation order."""
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(TINY))
    common = ["mocov3", "--arch", str(arch), "--dataset", "digits", "--cache-dir", cache_dir,
              "--epochs", "2", "--batch-size", "256", "--lr", "1.0", "--no-progress",
              "--output", str(tmp_path / "r.jsonl")]
    assert main([*common, "--work-dir", str(tmp_path / "one")]) == 0
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = subprocess_env(REPO, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([exe, "--standalone", "--nproc-per-node", "2", "-m", "linear_probe",
                           *common, "--work-dir", str(tmp_path / "two")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # printed once, by rank 0
    assert result["records"][0]["world_size"] == 2
    one, two = (torch.load(next((tmp_path / name).glob("mocov3/digits/*/checkpoint.pth")),
                           weights_only=True) for name in ("one", "two"))
    for name in ("weight", "bias"):
        torch.testing.assert_close(two["head"][name], one["head"][name], atol=1e-5, rtol=1e-4)
    assert np.allclose([h["top1"] for h in two["history"]], [h["top1"] for h in one["history"]],
                       atol=0.2)
