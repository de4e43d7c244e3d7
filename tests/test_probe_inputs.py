"""Bad inputs to the probes end in the right number or in one clear error line: a split with
other classes, images swapped for others of the same size, a torn results file, NaN weights,
a single class, a truncated image, and strict JSON wherever records go."""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bench.common import subprocess_env
from linear_probe.__main__ import main
from linear_probe.results import append_jsonl, make_record, read_jsonl
from tests.helpers import COLOURS, write_colour_folder, write_colour_image

TINY = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
        "window_sizes": [7, 4, 2, 1]}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    path = tmp_path_factory.mktemp("arch") / "student.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def _run(capsys, command, arch, data, tmp_path, *extra, cache=None):
    """Run a probe command on ``data``; returns (exit status, stdout, stderr, records file)."""
    out = tmp_path / f"{command}.jsonl"
    output = [] if command == "extract" else ["--output", str(out)]
    code = main([command, "--arch", arch, "--dataset", data, "--cache-dir",
                 str(cache or tmp_path / "cache"), *output, "--image-size", "32",
                 "--no-progress", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- classes per split
def test_a_test_split_missing_a_class_is_refused_not_shifted(arch, tmp_path, capsys):
    """torchvision numbers each split's class folders on its own: without c1, test/c2 got label
    1 and the sweep recorded 50.00 (intact: 100.00)."""
    root = write_colour_folder(tmp_path / "data")
    code, out, err, _ = _run(capsys, "sweep", arch, f"imagefolder:{root}", tmp_path)
    assert code == 0, err
    assert _strict_json(out)["records"][0]["metrics"]["top1"] == 100.0

    for f in (root / "test" / "c1").iterdir():
        f.unlink()
    (root / "test" / "c1").rmdir()
    code, out, err, results = _run(capsys, "sweep", arch, f"imagefolder:{root}", tmp_path)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith(f"error: {root}/test has other classes than {root}/train")
    assert "missing 1 of the training classes: 'c1'" in err
    assert f"give {root}/test one folder per class of {root}/train" in err
    assert len(read_jsonl(results)) == 1  # nothing recorded for the refused run

    (root / "test" / "c9").mkdir()
    write_colour_image(root / "test" / "c9" / "0.bmp", COLOURS["c0"])
    code, _, err, _ = _run(capsys, "kshot", arch, f"imagefolder:{root}", tmp_path, "--k", "2")
    assert code == 2 and "missing 1 of the training classes: 'c1'" in err
    assert "1 classes training does not have: 'c9'" in err


def test_splits_whose_readers_name_classes_per_split_are_checked_too(tmp_path, monkeypatch):
    """Readers that take a split's classes from that split's own file (DTD, Food-101) and joined
    splits (train + val) are held to the training split's classes as well."""
    from torch.utils.data import Dataset

    import linear_probe.extract as extract
    from linear_probe.backbones import ModelSpec
    from linear_probe.loaders import DatasetClassesError, concat
    from linear_probe.registry import DatasetSpec

    class Listed(Dataset):
        def __init__(self, classes):
            self.classes, self.targets = list(classes), list(range(len(classes)))

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            raise AssertionError("nothing is read before the classes are checked")

    with pytest.raises(DatasetClassesError, match=r"missing 1 of the training classes: 'b'"):
        concat([Listed("abc"), Listed("ac")])
    per_split = {"train": "abc", "test": "acd"}
    spec = DatasetSpec("listed", str(tmp_path), (), ("train", "test"),
                       lambda d, split, size: Listed(per_split[split]))
    monkeypatch.setattr(extract, "dataset_spec", lambda name: spec)
    with pytest.raises(DatasetClassesError, match=r"listed/test has other classes than "
                                                  r"listed/train \(missing 1 .*'b'; 1 classes "
                                                  r"training does not have: 'd'\)"):
        extract.extract_splits(ModelSpec("tinyvit", arch=TINY), "listed", ["train", "test"],
                               cache_dir=tmp_path / "cache", progress=False)


# --------------------------------------------------------------------------- changed files
def test_images_swapped_for_same_size_ones_are_extracted_again(arch, tmp_path, capsys):
    """The cache key used file sizes only: swapping images for others of the same byte size
    reused the old features (100.00 where a fresh cache gives 66.67)."""
    from torchvision.datasets import ImageFolder

    from tinyvit_backbone.fingerprint import folder_fingerprints

    root = write_colour_folder(tmp_path / "data")
    past = time.time() - 3600  # the files were made earlier, as a dataset's are
    for path in root.rglob("*.bmp"):
        os.utime(path, (past, past))
    code, out, err, _ = _run(capsys, "sweep", arch, f"imagefolder:{root}", tmp_path)
    assert code == 0, err
    assert _strict_json(out)["records"][0]["metrics"]["top1"] == 100.0
    test = ImageFolder(str(root / "test"))
    before = folder_fingerprints(str(root / "test"), test.classes, test.samples)

    rng = np.random.default_rng(7)
    for path in (root / "test" / "c0").iterdir():  # c0's test images now look like c1's
        size = path.stat().st_size
        write_colour_image(path, COLOURS["c1"], rng=rng)
        assert path.stat().st_size == size
    after = folder_fingerprints(str(root / "test"), test.classes, test.samples)
    assert after[1] == before[1] and after[0] != before[0]  # same sizes, other files

    code, out, err, _ = _run(capsys, "sweep", arch, f"imagefolder:{root}", tmp_path)
    rerun = _strict_json(out)["records"][0]
    code, out, err, _ = _run(capsys, "sweep", arch, f"imagefolder:{root}", tmp_path,
                             cache=tmp_path / "fresh")
    fresh = _strict_json(out)["records"][0]
    assert fresh["metrics"]["top1"] == pytest.approx(200 / 3)
    assert rerun["metrics"] == fresh["metrics"] and not rerun["cache_hit"]


def test_listed_files_of_other_datasets_are_stamped_too(tmp_path):
    """Datasets that keep a file list (torchvision's, the CSV readers) hashed the names only."""
    from linear_probe.loaders import CsvImages
    from tinyvit_backbone.fingerprint import dataset_fingerprint

    path = tmp_path / "a.bmp"
    write_colour_image(path, COLOURS["c0"])
    os.utime(path, (1e9, 1e9))
    ds = CsvImages([str(path)], [0], ["a"])
    before = dataset_fingerprint(ds)
    write_colour_image(path, COLOURS["c1"])
    assert dataset_fingerprint(ds) != before


# --------------------------------------------------------------------------- results file
def _record(seed=0, **extra):
    return make_record(task="kshot", protocol="clip-lbfgs", model="m", dataset="d",
                       metric="top1", metrics={"top1": 50.0}, split_sizes={}, timings={},
                       seed=seed, **extra)


def test_a_torn_last_line_is_moved_aside_before_the_next_append(tmp_path):
    """A full disk left a torn line; the next run's first record was glued onto it and the file
    then read as malformed, losing that record."""
    out = tmp_path / "r.jsonl"
    append_jsonl(out, [_record(0)])
    torn = json.dumps(_record(1)).encode()[:40]
    with open(out, "ab") as f:
        f.write(torn)
    with pytest.raises(ValueError, match=r"r\.jsonl:2: the last line is cut short .* The next "
                                         r"run that appends to this file moves it aside"):
        read_jsonl(out)
    said = []
    append_jsonl(out, [_record(2)], log=said.append)
    assert [r["seed"] for r in read_jsonl(out)] == [0, 2]
    assert len(said) == 1 and "removed a torn last line (40 bytes" in said[0]
    assert f"kept its bytes in {out}.torn" in said[0]
    assert (tmp_path / "r.jsonl.torn").read_bytes() == torn + b"\n"

    # a complete record that only lacks its line end is kept
    with open(out, "ab") as f:
        f.write(json.dumps(_record(3)).encode())
    said.clear()
    append_jsonl(out, [_record(4)], log=said.append)
    assert [r["seed"] for r in read_jsonl(out)] == [0, 2, 3, 4]
    assert "had no line end" in said[0]


FULL_DISK = """
import resource, signal, sys
from linear_probe.results import append_jsonl, make_record
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
record = make_record(task="kshot", protocol="clip-lbfgs", model="m", dataset="d", metric="top1",
                     metrics={"top1": 50.0}, split_sizes={}, timings={}, seed=9,
                     padding="x" * 20000)
try:
    append_jsonl(sys.argv[1], [record])
except OSError as err:
    print(err)
"""


def test_an_append_cut_short_by_a_full_disk_leaves_no_torn_line(tmp_path):
    """The file-size limit stands in for a full disk: the write stops short (as in 'wrote 2455
    of 23078 bytes'); the partial line is removed and the next append is whole."""
    out = tmp_path / "r.jsonl"
    append_jsonl(out, [_record(0)])
    size = out.stat().st_size
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(out), str(size + 2455)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=subprocess_env(REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 2455 of " in proc.stdout and "the file is unchanged" in proc.stdout
    assert "Free disk space and rerun the command" in proc.stdout
    assert out.stat().st_size == size
    append_jsonl(out, [_record(1)])  # space freed: the rerun's record lands whole
    assert [r["seed"] for r in read_jsonl(out)] == [0, 1]


# --------------------------------------------------------------------------- NaN weights
@pytest.fixture(scope="module")
def nan_weights(tmp_path_factory):
    from tinyvit_backbone.backbone import build_timm_tinyvit
    model = build_timm_tinyvit(TINY, num_classes=10)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "diverged.pth"
    torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("command, extra", [
    ("sweep", ()), ("kshot", ("--k", "2")),
    ("episodes", ("--protocol", "lbfgs-fast", "--k", "5", "--episodes", "5"))])
def test_nan_weights_are_refused_and_never_cached(arch, nan_weights, tmp_path, capsys, command,
                                                  extra):
    """NaN features used to be cached as complete, then every fit died with a raw
    'RuntimeError: value cannot be converted to type float without overflow'."""
    code, out, err, results = _run(capsys, command, arch, "digits", tmp_path, "--weights",
                                   nan_weights, *extra)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith(f"error: tinyvit-student (weights {nan_weights}) gives non-finite "
                          "features on digits/")
    assert "64 of images 0...63 (first: image 0) have NaN or Inf values (" in err
    assert "The weights are broken" in err and "Nothing was cached as complete" in err
    assert not list((tmp_path / "cache").rglob("meta.json")) and not results.exists()


def test_the_cache_never_completes_nor_serves_non_finite_features(tmp_path):
    from linear_probe.cache import FeatureCache, NonFiniteFeaturesError, write_json_atomic
    cache = FeatureCache(tmp_path)
    parts = {"model": {"kind": "tinyvit"}, "dataset": "d", "split": "train"}
    writer = cache.writer(parts, 4)
    writer.write(0, np.array([[1.0, 2.0], [np.nan, 0.0], [0.0, np.inf], [3.0, 4.0]],
                             np.float32), np.arange(4))
    with pytest.raises(NonFiniteFeaturesError, match="2 of 4 feature rows .* are NaN or Inf"):
        writer.finish({})
    assert cache.load(parts) is None
    # an entry an older version completed with NaN rows is treated as absent
    writer = cache.writer(parts, 2)
    writer.write(0, np.ones((2, 2), np.float32), np.arange(2))
    entry = writer.finish({})
    assert entry.meta["finite"] and cache.load(parts) is not None
    features = np.load(entry.path / "features.npy", mmap_mode="r+")
    features[1, 0] = np.nan
    features.flush()
    del features
    assert cache.load(parts) is not None  # "finite" was checked when it was written
    meta = dict(entry.meta)
    del meta["finite"]
    write_json_atomic(entry.path / "meta.json", meta)
    assert cache.load(parts) is None


# --------------------------------------------------------------------------- degenerate data
def test_a_single_class_is_refused(arch, tmp_path, capsys):
    """One class folder used to record top-1 100.00 with no warning."""
    root = write_colour_folder(tmp_path / "data", classes=("c0",))
    code, out, err, results = _run(capsys, "sweep", arch, f"imagefolder:{root}", tmp_path)
    assert code == 2 and out == "" and not results.exists()
    assert err.startswith(f"error: imagefolder:{root} train split has a single class ('c0', "
                          "6 images)")
    assert f"give {root}/train one folder per class" in err
    root2 = write_colour_folder(tmp_path / "two", classes=("c0", "c1"),
                                splits=(("train", 2), ("test", 20)))
    code, _, err, _ = _run(capsys, "episodes", arch, f"imagefolder:{root2}", tmp_path,
                           "--protocol", "lbfgs-fast", "--n-way", "1", "--k", "1")
    assert code == 2 and "1-way episodes are degenerate" in err and "--n-way 2 or more" in err


@pytest.mark.parametrize("workers", [0, 1])
def test_a_truncated_image_is_named_with_the_fix(arch, tmp_path, capsys, workers):
    from PIL import Image
    root = write_colour_folder(tmp_path / "data", classes=("c0", "c1"))
    bad = root / "train" / "c1" / "3.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:300])
    code, out, err, _ = _run(capsys, "extract", arch, f"imagefolder:{root}", tmp_path,
                             "--workers", str(workers))
    assert code == 2 and out == "" and "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith(f"error: cannot read image {bad}: ")
    assert "The file is damaged or cut short" in err and "or delete it, then rerun" in err
    bad.unlink()  # the remedy the message gives
    code, out, err, _ = _run(capsys, "extract", arch, f"imagefolder:{root}", tmp_path,
                             "--workers", str(workers))
    assert code == 0, err


# --------------------------------------------------------------------------- statistics, JSON
def test_kshot_prints_the_sample_std_and_strict_json(arch, tmp_path, capsys):
    """kshot printed the population std (38.33 ± 5.77) where the tables print the sample std
    (38.3 ± 7.1), and its JSON held NaN (1-shot fits search no weight decay)."""
    code, out, err, results = _run(capsys, "kshot", arch, "digits", tmp_path, "--k", "1",
                                   "--seeds", "0", "1", "2")
    assert code == 0, err
    records = _strict_json(out)["records"]
    assert [r["val_score"] for r in records] == [None] * 3
    top1 = [r["metrics"]["top1"] for r in records]
    assert len(set(top1)) > 1
    assert (f"1-shot: top1 {statistics.fmean(top1):.2f} ± {statistics.stdev(top1):.2f} "
            "(sample std over 3 seeds)") in err
    for line in results.read_text().splitlines():
        _strict_json(line)


def test_records_and_results_never_hold_nan(tmp_path, capsys):
    from tinyvit_backbone.cli import emit_json
    from tinyvit_backbone.files import atomic_write_json
    value = {"a": float("nan"), "b": [np.float32("inf"), np.float64(1.5)], "c": np.int64(3),
             "d": (float("-inf"),), "e": np.array([1.0, np.nan])}
    emit_json(value)
    expected = {"a": None, "b": [None, 1.5], "c": 3, "d": [None], "e": [1.0, None]}
    assert _strict_json(capsys.readouterr().out) == expected
    atomic_write_json(tmp_path / "x.json", value)
    assert _strict_json((tmp_path / "x.json").read_text()) == expected
    append_jsonl(tmp_path / "r.jsonl", [_record(0, ci95=float("nan"))])
    assert _strict_json((tmp_path / "r.jsonl").read_text())["ci95"] is None
