"""Feature cache: keys, invalidation, atomic entries, resume after an interruption."""
import json

import numpy as np
import pytest
import torch

import linear_probe.cache as cache_mod
from linear_probe.backbones import ModelSpec
from linear_probe.cache import FeatureCache, cache_key
from linear_probe.extract import extract_splits

TINY = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
        "window_sizes": [7, 4, 2, 1]}
PARTS = {"model": {"kind": "tinyvit", "arch": TINY, "weights_digest": "random", "init_seed": 0},
         "dataset": "digits", "dataset_fingerprint": "abc", "split": "train",
         "transform": {"style": "native", "size": 32}, "feature_layer": "pooled", "amp": "fp32"}


@pytest.mark.parametrize("path, value", [
    (("model", "arch"), {**TINY, "depths": [1, 1, 2, 1]}),
    (("model", "weights_digest"), "0123456789abcdef"),
    (("model", "init_seed"), 1),
    (("dataset",), "cifar10"),
    (("dataset_fingerprint",), "abd"),
    (("split",), "test"),
    (("transform",), {"style": "native", "size": 64}),
    (("feature_layer",), "stage2"),
    (("amp",), "bfloat16"),
])
def test_every_key_part_changes_the_key(path, value):
    changed = json.loads(json.dumps(PARTS))
    target = changed
    for name in path[:-1]:
        target = target[name]
    target[path[-1]] = value
    assert cache_key(changed) != cache_key(PARTS)
    assert cache_key(json.loads(json.dumps(PARTS))) == cache_key(PARTS)


def test_extractor_version_is_part_of_the_key(monkeypatch):
    before = cache_key(PARTS)
    monkeypatch.setattr(cache_mod, "EXTRACTOR_VERSION", cache_mod.EXTRACTOR_VERSION + 1)
    assert cache_key(PARTS) != before


def _fill(cache, parts, n=10, dim=4, stop=None):
    writer = cache.writer(parts, n)
    rows = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    for start in range(writer.done, stop if stop is not None else n, 2):
        writer.write(start, rows[start:start + 2], np.arange(start, start + 2))
    return writer, rows


def test_entry_is_visible_only_when_complete_and_resumes(tmp_path):
    cache = FeatureCache(tmp_path)
    writer, rows = _fill(cache, PARTS, stop=6)
    writer.checkpoint()
    assert cache.load(PARTS) is None  # partial entries are never read
    resumed = cache.writer(PARTS, 10)
    assert resumed.done == 6
    for start in range(6, 10, 2):
        resumed.write(start, rows[start:start + 2], np.arange(start, start + 2))
    entry = resumed.finish({"classes": None})
    assert not entry.hit and not (tmp_path / "digits" / "train" / (entry.path.name + ".partial")).exists()
    loaded = cache.load(PARTS)
    assert loaded.hit and np.array_equal(loaded.features, rows)
    assert np.array_equal(loaded.labels, np.arange(10))
    with pytest.raises(RuntimeError, match="expected row 0, got 10"):
        cache.writer({**PARTS, "split": "x"}, 10).write(10, rows[:2], np.arange(2))


def test_mismatching_meta_is_never_used(tmp_path):
    cache = FeatureCache(tmp_path)
    writer, _ = _fill(cache, PARTS)
    entry = writer.finish({})
    meta = json.loads((entry.path / "meta.json").read_text())
    meta["key"] = "0" * 64  # e.g. a prefix collision or a hand-copied folder
    (entry.path / "meta.json").write_text(json.dumps(meta))
    assert cache.load(PARTS) is None
    # a progress file from another key is not resumed either
    other = cache.writer({**PARTS, "split": "val"}, 10)
    other.write(0, np.zeros((2, 4), np.float32), np.zeros(2))
    other.checkpoint()
    (other.partial / "progress.json").write_text(json.dumps({"key": "x", "n": 10, "done": 2}))
    assert cache.writer({**PARTS, "split": "val"}, 10).done == 0


# --------------------------------------------------------------------------- end to end
@pytest.fixture
def folder(tmp_path):
    """A tiny ImageFolder dataset: 3 classes x 4 train / 2 test PNGs."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for c in range(3):
            d = tmp_path / "data" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return tmp_path / "data"


def _extract(folder, cache_dir, spec=None, **kw):
    spec = spec or ModelSpec("tinyvit", arch=TINY)
    ex = extract_splits(spec, f"imagefolder:{folder}", ["train"], cache_dir=cache_dir,
                        image_size=32, progress=False, **kw)
    return ex.splits["train"]


def test_cache_hits_and_invalidation_end_to_end(folder, tmp_path):
    cache_dir = tmp_path / "cache"
    first = _extract(folder, cache_dir)
    assert not first.hit and first.features.shape == (12, 64)
    assert np.bincount(first.labels).tolist() == [4, 4, 4]
    again = _extract(folder, cache_dir)
    assert again.hit and again.path == first.path
    np.testing.assert_array_equal(again.features, first.features)

    assert not _extract(folder, cache_dir, feature_layer="stage2").hit
    # new weights file -> new digest -> new entry, and different features
    from tinyvit_backbone.backbone import build_timm_tinyvit
    torch.manual_seed(5)
    weights = tmp_path / "w.pth"
    torch.save(build_timm_tinyvit(TINY, num_classes=0).state_dict(), weights)
    trained = _extract(folder, cache_dir, spec=ModelSpec("tinyvit", arch=TINY, weights=str(weights)))
    assert not trained.hit and not np.allclose(trained.features, first.features)
    # a changed image folder (one more image) -> new fingerprint -> new entry
    from PIL import Image
    Image.new("RGB", (40, 40)).save(folder / "train" / "class0" / "extra.png")
    grown = _extract(folder, cache_dir)
    assert not grown.hit and grown.features.shape[0] == 13


def test_interrupted_extraction_resumes(folder, tmp_path, monkeypatch):
    import linear_probe.extract as extract

    clean = _extract(folder, tmp_path / "clean", batch_size=4)
    real_build = extract.build_extractor
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        model = real_build(*args, **kwargs)
        forward = model.forward

        def dies_on_third_batch(x):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return forward(x)

        model.forward = dies_on_third_batch
        return model

    monkeypatch.setattr(extract, "build_extractor", flaky)
    with pytest.raises(KeyboardInterrupt):
        _extract(folder, tmp_path / "cache", batch_size=4)
    assert not list((tmp_path / "cache").rglob("meta.json"))  # no entry became visible
    assert list((tmp_path / "cache").rglob("progress.json"))  # checkpointed on the way out
    monkeypatch.setattr(extract, "build_extractor", real_build)
    resumed = _extract(folder, tmp_path / "cache", batch_size=4)
    assert resumed.meta["resumed_from"] == 8
    np.testing.assert_allclose(resumed.features, clean.features, atol=1e-5)
    np.testing.assert_array_equal(resumed.labels, clean.labels)


def test_writer_checkpoints_periodically(tmp_path, monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(cache_mod.time, "monotonic", lambda: clock["t"])
    writer = FeatureCache(tmp_path).writer(PARTS, 10)
    writer.write(0, np.ones((2, 4), np.float32), np.arange(2))
    assert not (writer.partial / "progress.json").exists()
    clock["t"] = 31.0  # past the 30 s checkpoint interval
    writer.write(2, np.ones((2, 4), np.float32), np.arange(2))
    progress = json.loads((writer.partial / "progress.json").read_text())
    assert progress["done"] == 4 and progress["key"] == cache_key(PARTS)


def test_prefetch_thread_keeps_order_raises_errors_and_stops_on_break():
    import threading

    from linear_probe.extract import prefetched

    assert list(prefetched(iter(range(7)), depth=2)) == list(range(7))

    def broken():
        yield 1
        raise OSError("truncated image file")

    got = []
    with pytest.raises(OSError, match="truncated"):
        for item in prefetched(broken()):
            got.append(item)
    assert got == [1]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    for item in prefetched(endless(), depth=2):
        if item == 3:
            break
    assert not any(t.name == "extract-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 1 + 2 + 1  # at most `depth` batches (plus one in hand) ahead


def test_prefetch_thread_prepares_on_one_intra_op_thread():
    """The producer's torch ops run on one thread: an OpenMP team of its own beside the
    consumer's took the cores from it (fine-tuned episodes 2.5x slower on 2 cores); the
    consumer keeps its threads."""
    from linear_probe.extract import prefetched

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)

        def threads_seen():
            for _ in range(3):
                yield torch.get_num_threads()

        assert list(prefetched(threads_seen())) == [1, 1, 1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_interrupted_extraction_leaves_no_prefetch_thread(folder, tmp_path, monkeypatch):
    import threading

    import linear_probe.extract as extract

    real_build = extract.build_extractor

    def dies(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.forward = lambda x: (_ for _ in ()).throw(KeyboardInterrupt)
        return model

    monkeypatch.setattr(extract, "build_extractor", dies)
    with pytest.raises(KeyboardInterrupt) as info:
        _extract(folder, tmp_path / "cache", batch_size=2)
    assert not any(t.name == "extract-prefetch" and t.is_alive() for t in threading.enumerate())
    del info
