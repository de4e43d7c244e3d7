"""Exact augmentation replay: seeds, generator scopes, pair mixing, workers and processes."""
import random

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from tinyvit_backbone.distill.datasets import DatasetInfo, open_dataset
from tinyvit_backbone.distill.errors import DistillError
from tinyvit_backbone.distill.replay import (
    AugConfig,
    ReplayDataset,
    build_train_transform,
    epoch_batches,
    epoch_order,
    mix_pairs,
    mixed_label_targets,
    rank_batches,
    replay_loader,
    rng_scope,
    sample_seed,
)
from tinyvit_backbone.distill.save_logits import SaveSettings, save_logits
from tinyvit_backbone.distill.soft_label import rebuild_soft_labels
from tinyvit_backbone.distill.store import LogitStore
from tinyvit_backbone.distill.teacher import create_timm_model, load_teacher

# Every random transform of the official recipe, color jitter forced on so it is replayed too.
FULL_AUG = AugConfig(image_size=32, force_color_jitter=True)


def small_digits(n=24):
    ds, info = open_dataset("digits", "train", 32)
    sub = Subset(ds, range(n))
    return sub, DatasetInfo("digits", "digits", "train", n, info.classes, f"first{n}")


def test_rng_scope_is_seeded_and_restores_outer_generators():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    with rng_scope(7):
        inner = (random.random(), np.random.rand(), torch.rand(1).item())
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    with rng_scope(7):
        assert (random.random(), np.random.rand(), torch.rand(1).item()) == inner


def test_seeds_and_order_are_pure_functions():
    assert sample_seed(0, 3, 17) == sample_seed(0, 3, 17)
    seeds = {sample_seed(0, e, i) for e in range(3) for i in range(200)}
    assert len(seeds) == 600 and all(0 <= s < 2**31 for s in seeds)
    np.testing.assert_array_equal(epoch_order(50, 0, 2), epoch_order(50, 0, 2))
    assert not np.array_equal(epoch_order(50, 0, 2), epoch_order(50, 0, 3))
    batches = epoch_batches(11, 0, 0, 4)
    assert [len(b) for b in batches] == [4, 4, 3]
    assert sorted(np.concatenate(batches).tolist()) == list(range(11))
    assert rank_batches(batches, 1, 2) == [batches[1]]
    assert len(rank_batches(batches, 0, 2, equal=True)) == 1
    with pytest.raises(DistillError, match="even"):
        epoch_batches(11, 0, 0, 3)


def test_same_seed_same_pixels_every_transform():
    ds, _ = small_digits(4)
    tf = build_train_transform(FULL_AUG)
    img = ds[0][0]
    with rng_scope(123):
        a = tf(img)
    torch.manual_seed(99)  # outer state must not matter
    with rng_scope(123):
        b = tf(img)
    with rng_scope(124):
        c = tf(img)
    assert torch.equal(a, b) and not torch.equal(a, c)
    names = [type(t).__name__ for t in tf.transforms]
    assert {"RandomResizedCropAndInterpolation", "RandAugment", "ColorJitter",
            "RandomErasing"} <= set(names)


def test_posterize_at_full_magnitude_does_not_crash():
    # timm's PosterizeIncreasing asks for 0 bits at magnitude 10; Pillow 13 refuses that.
    tf = build_train_transform(AugConfig(image_size=32, auto_augment="rand-m10-n6-mstd0-inc1"))
    ds, _ = small_digits(2)
    for seed in range(20):
        with rng_scope(seed):
            tf(ds[0][0])


def test_mix_pairs_mixup_and_cutmix_by_hand():
    x = torch.rand(5, 3, 8, 8)
    orig = x.clone()
    seeds = [11, 22, 33, 44, 55]
    mixup_only = AugConfig(image_size=8, mixup=0.8, cutmix=0.0)
    out, lam = mix_pairs(x.clone(), seeds, mixup_only)
    for a in (0, 2):
        w = float(lam[a])
        assert w == float(lam[a + 1]) and 0 < w < 1
        torch.testing.assert_close(out[a], w * orig[a] + (1 - w) * orig[a + 1])
        torch.testing.assert_close(out[a + 1], w * orig[a + 1] + (1 - w) * orig[a])
    assert lam[4] == 1 and torch.equal(out[4], orig[4])  # odd one out: untouched
    again, lam2 = mix_pairs(x.clone(), seeds, mixup_only)
    assert torch.equal(again, out) and torch.equal(lam, lam2)

    cutmix_only = AugConfig(image_size=8, mixup=0.0, cutmix=1.0)
    out, lam = mix_pairs(x.clone(), seeds, cutmix_only)
    for a in (0, 2):
        from_partner = (out[a] == orig[a + 1]) & (out[a] != orig[a])
        swapped = from_partner.all(0).float().mean()
        # lam is the share of own pixels; the partner's box is 1 - lam of the image
        assert abs(float(1 - lam[a]) - float(swapped)) < 1e-6
        torch.testing.assert_close(out[a + 1][from_partner], orig[a][from_partner])


def test_mixed_label_targets():
    labels = torch.tensor([0, 2, 1])
    lam = torch.tensor([0.7, 0.7, 1.0])
    t = mixed_label_targets(labels, lam, 3)
    torch.testing.assert_close(t, torch.tensor([[0.7, 0, 0.3], [0.3, 0, 0.7], [0, 1.0, 0]]))
    smooth = mixed_label_targets(labels, torch.ones(3), 3, smoothing=0.3)
    torch.testing.assert_close(smooth[0], torch.tensor([0.8, 0.1, 0.1]))


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    ds, info = small_digits(24)
    torch.manual_seed(0)
    torch.save(create_timm_model("test_resnet", 10).state_dict(), root / "t.pth")
    teacher, tinfo = load_teacher("test_resnet", str(root / "t.pth"), 10,
                                  data_mean=FULL_AUG.mean, data_std=FULL_AUG.std)
    save_logits(str(root / "store"), teacher, tinfo, ds, info, FULL_AUG,
                SaveSettings(topk=4, epochs=1, batch_size=8), device=torch.device("cpu"),
                progress=False, log=lambda _: None)
    return ds, LogitStore.open(root / "store")


def _by_sample(batches):
    out = {}
    for batch in batches:
        target = rebuild_soft_labels(batch["topk_indices"], batch["topk_values"], 10)
        for row, i in enumerate(batch["index"].tolist()):
            out[i] = (batch["image"][row], batch["lam"][row], target[row])
    return out


def test_replay_equal_across_workers_and_processes(small_store):
    ds, store = small_store
    replay = ReplayDataset(ds, FULL_AUG, 0, store)
    batches = epoch_batches(24, 0, 0, 8)
    one = _by_sample(replay_loader(replay, 0, batches, workers=0))
    two_workers = _by_sample(replay_loader(replay, 0, batches, workers=2))
    # Two processes (torchrun ranks) each replay their share of the batches.
    ranks = {}
    for rank in range(2):
        ranks.update(_by_sample(replay_loader(replay, 0, rank_batches(batches, rank, 2))))
    assert sorted(one) == sorted(two_workers) == sorted(ranks) == list(range(24))
    for i in range(24):
        for other in (two_workers, ranks):
            assert torch.equal(one[i][0], other[i][0])  # pixels
            assert torch.equal(one[i][1], other[i][1])  # pair weight
            assert torch.equal(one[i][2], other[i][2])  # rebuilt soft label
    assert any(float(v[1]) < 1 for v in one.values())  # pairs were really mixed


def test_student_replays_the_teachers_pixels(small_store):
    # The teacher's stored top-1 is what the teacher says about the replayed pixels.
    ds, store = small_store
    t = store.manifest["teacher"]
    teacher, _ = load_teacher(t["model"], t["checkpoint"], 10, data_mean=FULL_AUG.mean,
                              data_std=FULL_AUG.std)
    replay = ReplayDataset(ds, FULL_AUG, 0, store)
    for batch in replay_loader(replay, 0, epoch_batches(24, 0, 0, 8)):
        probs = torch.softmax(teacher(batch["image"]), -1)
        torch.testing.assert_close(probs.gather(1, batch["topk_indices"]).half().float(),
                                   batch["topk_values"], atol=1e-3, rtol=0)
