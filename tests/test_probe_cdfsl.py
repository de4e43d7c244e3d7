"""The cdfsl protocol (cdfsl's finetune.py), frozen and fine-tuned, at demo scale on the digits."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import linear_probe.cdfsl as cdfsl
from linear_probe.__main__ import main
from linear_probe.backbones import FeatureExtractor, ModelSpec, build_network
from linear_probe.fewshot import Episodes, sample_episodes
from linear_probe.recipes import CdfslRecipe
from linear_probe.results import read_jsonl
from linear_probe.settings import FeatureSettings

TINY = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
        "window_sizes": [7, 4, 2, 1]}
SHORT = CdfslRecipe(epochs=4)  # finetune.py's recipe with 4 epochs instead of 100


def test_recipe_is_finetune_py():
    r = CdfslRecipe()
    assert (r.epochs, r.batch_size, r.head_lr, r.momentum, r.dampening, r.weight_decay,
            r.backbone_lr) == (100, 4, 0.01, 0.9, 0.9, 0.001, 0.01)
    assert [r.steps(5 * k) for k in (5, 20, 50)] == [700, 2500, 6300]
    assert r.with_epochs(4) == SHORT and r.epochs == 100
    optimizer = cdfsl.head_optimizer([nn.Parameter(torch.zeros(2))], r)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["dampening"], group["weight_decay"]) == \
        (0.01, 0.9, 0.9, 0.001)


def test_heads_start_like_nn_linear_and_are_seeded_per_episode():
    w, b = cdfsl.init_head(400, 5, seed=0, episode=3)
    assert w.shape == (5, 400) and b.shape == (5,)
    bound = 1 / math.sqrt(400)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.equal(w, cdfsl.init_head(400, 5, seed=0, episode=3)[0])
    assert not torch.equal(w, cdfsl.init_head(400, 5, seed=0, episode=4)[0])
    orders = cdfsl.support_orders(0, 3, epochs=6, support_size=25)
    assert orders.shape == (6, 25) and all(sorted(o) == list(range(25)) for o in orders)
    assert np.array_equal(orders, cdfsl.support_orders(0, 3, 6, 25))


def _reference_head(support, n_way, seed, episode, recipe):
    """One episode the way finetune.py trains it: an nn.Linear and torch's SGD, alone."""
    head = nn.Linear(support.shape[1], n_way)
    w, b = cdfsl.init_head(support.shape[1], n_way, seed, episode)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    opt = torch.optim.SGD(head.parameters(), lr=recipe.head_lr, momentum=recipe.momentum,
                          dampening=recipe.dampening, weight_decay=recipe.weight_decay)
    y = torch.arange(n_way).repeat_interleave(len(support) // n_way)
    for order in cdfsl.support_orders(seed, episode, recipe.epochs, len(support)):
        for j in range(0, len(support), recipe.batch_size):
            pick = torch.from_numpy(order[j:j + recipe.batch_size])
            loss = F.cross_entropy(head(support[pick]), y[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.weight.detach(), head.bias.detach()


def test_episodes_trained_together_equal_each_trained_alone():
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.standard_normal((6, 15, 12)).astype(np.float32))  # 5-way 3-shot
    recipe = CdfslRecipe(epochs=7)
    weight, bias = cdfsl.train_frozen_heads(features, 5, range(10, 16), seed=2, recipe=recipe)
    for i in range(6):
        ref_w, ref_b = _reference_head(features[i], 5, 2, 10 + i, recipe)
        torch.testing.assert_close(weight[i], ref_w, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(bias[i], ref_b, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(weight[0], cdfsl.init_head(12, 5, 2, 10)[0])  # it did train


@pytest.fixture(scope="module")
def digits_images():
    """The fine-tuned path's inputs: an unfused tiny TinyViT and normalised digits test images."""
    from linear_probe.loaders import load_split
    from linear_probe.preprocessing import Preprocessed, eval_preprocessing
    from linear_probe.registry import dataset_spec
    spec = ModelSpec("tinyvit", arch=TINY)
    prep = eval_preprocessing("cdfsl", spec.data_config(32))
    raw = load_split(dataset_spec("digits"), "test", image_size=32)
    data = Preprocessed(raw, prep.transform)

    def images(rows):
        return prep.normalise(torch.stack([data[int(i)][0] for i in rows]))

    labels = np.asarray(raw.targets)
    return spec, images, labels


def test_frozen_fine_tuning_path_equals_the_batched_one(digits_images):
    spec, images, labels = digits_images
    extractor = FeatureExtractor(build_network(spec)).eval()
    episodes = sample_episodes(labels, 5, 2, 3, episodes=2, seed=0)
    initial = {k: v.clone() for k, v in extractor.state_dict().items()}
    alone = [cdfsl.finetune_episode(extractor, initial, images(episodes.support[e]),
                                    images(episodes.query[e]), 5, seed=0, episode=e, recipe=SHORT,
                                    freeze_backbone=True) for e in range(2)]
    with torch.no_grad():
        features = extractor(images(np.arange(len(labels)))).numpy()
    batched = cdfsl.frozen_accuracies(features, episodes, seed=0, recipe=SHORT)
    assert batched.tolist() == alone


def test_fine_tuning_starts_every_episode_from_the_weights(digits_images):
    spec, images, labels = digits_images
    extractor = FeatureExtractor(build_network(spec))
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    # 5-way 2-shot: mini-batches of 4, 4, 2 (at 32 px the last stage's maps are 1x1, and
    # batch-norm in train mode cannot take a single image there)
    episodes = sample_episodes(labels, 5, 2, 3, episodes=2, seed=1)
    both = cdfsl.finetuned_accuracies(extractor, images, episodes, seed=1, recipe=SHORT)
    assert all(torch.equal(before[k], v) for k, v in extractor.state_dict().items())  # restored
    second = Episodes(episodes.support[1:], episodes.query[1:], episodes.classes[1:], 5, 2, 3)
    alone = cdfsl.finetuned_accuracies(extractor, images, second, seed=1, recipe=SHORT, first=1)
    assert alone.tolist() == both[1:].tolist()  # episode 1 does not depend on episode 0
    moved = []
    real_step = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        moved.append(len(self.param_groups[0]["params"]))
        return real_step(self, *args, **kwargs)

    torch.optim.SGD.step = spy
    try:
        cdfsl.finetuned_accuracies(extractor, images, second, seed=1, recipe=CdfslRecipe(epochs=1))
    finally:
        torch.optim.SGD.step = real_step
    # per step: the head's SGD (weight, bias) and the backbone's, over all its parameters
    assert sorted(set(moved)) == [2, len(list(extractor.parameters()))]


def _reference_finetune(extractor, initial, support, query, n_way, seed, episode, recipe):
    """One fine-tuned episode the way finetune.py trains it, alone: the backbone in train mode
    with its own plain SGD, a fresh nn.Linear with SGD (momentum, dampening, weight decay),
    mini-batches of 4 in the episode's order, then the queries in eval mode. Returns the
    accuracy, the backbone's state and the head's weights."""
    extractor.load_state_dict(initial)
    extractor.train()
    for p in extractor.parameters():
        p.requires_grad_(True)
    dim = extractor.eval()(support[:1]).shape[1]
    extractor.train()
    head = nn.Linear(dim, n_way)
    w, b = cdfsl.init_head(dim, n_way, seed, episode)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    head_opt = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9, dampening=0.9,
                               weight_decay=0.001)
    body_opt = torch.optim.SGD(extractor.parameters(), lr=0.01)
    y = torch.arange(n_way).repeat_interleave(len(support) // n_way)
    for order in cdfsl.support_orders(seed, episode, recipe.epochs, len(support)):
        for j in range(0, len(support), 4):
            pick = torch.from_numpy(order[j:j + 4])
            loss = F.cross_entropy(head(extractor(support[pick])), y[pick])
            head_opt.zero_grad()
            body_opt.zero_grad()
            loss.backward()
            head_opt.step()
            body_opt.step()
    extractor.eval()
    with torch.no_grad():
        pred = head(extractor(query)).argmax(-1)
    accuracy = float(100.0 * (pred == torch.arange(n_way).repeat_interleave(len(query) // n_way))
                     .float().mean())
    state = {k: v.detach().clone() for k, v in extractor.state_dict().items()}
    return accuracy, state, (head.weight.detach().clone(), head.bias.detach().clone())


def test_fine_tuned_episodes_trained_together_equal_each_trained_alone(digits_images):
    """3 episodes x 2 epochs of a tiny TinyViT (batch-norm in train mode, running statistics
    per episode): E = 1 and E = 3 give every episode the accuracy and, within 1e-5, the
    backbone, running statistics and head it gets trained alone.

    The weights are compared with the backbone in float64: fine-tuning a randomly initialised
    backbone at lr 0.01 on batches of 4 amplifies float32 rounding (a grouped convolution sums
    in another order than E single ones) about tenfold per step, so float32 trajectories
    part after a few steps however exact the updates are (at 32 px, where the last stage's
    batch-norm sees 2 values, by 1.45 in 6 steps; at 48 px by 5e-6). float64 shows that the
    updates are the same; the float32 loop below that the accuracies are."""
    from linear_probe.loaders import load_split
    from linear_probe.preprocessing import Preprocessed, eval_preprocessing
    from linear_probe.registry import dataset_spec

    spec, _, labels = digits_images
    prep = eval_preprocessing("cdfsl", spec.data_config(48))
    data = Preprocessed(load_split(dataset_spec("digits"), "test", image_size=48), prep.transform)

    def images(rows):
        return prep.normalise(torch.stack([data[int(i)][0] for i in rows]))

    episodes = sample_episodes(labels, 5, 2, 3, episodes=3, seed=4)  # mini-batches of 4, 4, 2
    recipe = CdfslRecipe(epochs=2)
    extractor = FeatureExtractor(build_network(spec)).double()
    initial = {k: v.clone() for k, v in extractor.state_dict().items()}
    support = torch.stack([images(episodes.support[e]) for e in range(3)]).double()
    query = torch.stack([images(episodes.query[e]) for e in range(3)]).double()
    alone = [_reference_finetune(extractor, initial, support[e], query[e], 5, 4, e, recipe)
             for e in range(3)]
    one_at_a_time = [cdfsl.finetune_episodes(extractor, initial, support[e:e + 1],
                                             query[e:e + 1], 5, seed=4, episodes=[e],
                                             recipe=recipe, keep_states=True) for e in range(3)]
    accs_1 = [float(a[0]) for a, _ in one_at_a_time]
    states_1 = [s[0] for _, s in one_at_a_time]
    accs_3, states_3 = cdfsl.finetune_episodes(extractor, initial, support, query, 5, seed=4,
                                               episodes=[0, 1, 2], recipe=recipe,
                                               keep_states=True)
    bn = [k for k in initial if k.endswith("running_var")]
    assert bn and any(not torch.equal(alone[0][1][k], initial[k]) for k in bn)  # statistics moved
    for e, (acc, state, (w, b)) in enumerate(alone):
        assert accs_1[e] == acc and float(accs_3[e]) == acc
        for states in (states_1[e], states_3[e]):
            assert states["backbone"].keys() == state.keys()
            for name, value in state.items():
                torch.testing.assert_close(states["backbone"][name], value, atol=1e-5, rtol=0,
                                           msg=f"episode {e}: {name}")
            torch.testing.assert_close(states["head"]["weight"], w, atol=1e-5, rtol=0)
            torch.testing.assert_close(states["head"]["bias"], b, atol=1e-5, rtol=0)
    # the episodes differ from each other, and the backbones did train
    assert not torch.equal(states_3[0]["head"]["weight"], states_3[1]["head"]["weight"])
    moved = max(float((states_3[0]["backbone"][k] - initial[k]).abs().max())
                for k, _ in extractor.named_parameters())
    assert moved > 1e-3
    # the evaluated weights are untouched
    assert all(torch.equal(initial[k], v) for k, v in extractor.state_dict().items())
    # in float32, the loop over groups gives every episode the same accuracy whatever E
    extractor = FeatureExtractor(build_network(spec))
    float32 = {k: v.float() if v.is_floating_point() else v for k, v in initial.items()}
    reference = [_reference_finetune(extractor, float32, images(episodes.support[e]),
                                     images(episodes.query[e]), 5, 4, e, recipe)[0]
                 for e in range(3)]
    for together in (1, 2, 3):
        got = cdfsl.finetuned_accuracies(extractor, images, episodes, seed=4, recipe=recipe,
                                         together=together)
        assert got.tolist() == reference


def test_episodes_together_follows_the_flag_memory_and_cores(digits_images, monkeypatch):
    import linear_probe.device as device
    spec, images, labels = digits_images
    extractor = FeatureExtractor(build_network(spec))
    support, query = images(np.arange(10)), images(np.arange(10, 25))
    assert cdfsl.episodes_together(extractor, support, query, 4, remaining=600, requested=7) == 7
    assert cdfsl.episodes_together(extractor, support, query, 4, remaining=3, requested=7) == 3
    with pytest.raises(ValueError, match="--episodes-together must be >= 1"):
        cdfsl.episodes_together(extractor, support, query, 4, remaining=3, requested=0)
    per_episode = cdfsl.episode_bytes(extractor, support, query, 4)
    params = sum(p.numel() * 4 for p in extractor.parameters())
    assert per_episode > 3 * params + support.numel() * 4  # activations counted too
    monkeypatch.setattr(device, "available_memory", lambda d: int(10.5 * per_episode / 0.6))
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    # a CPU measures its E: alone, 4x the images with shared weights, then 4, 8, ... together
    timed = []

    def overhead_bound(extractor, initial, images, count, repeats=3):
        timed.append(count if count > 1 else len(images))
        return 1.0 / count  # all of a step is overhead, shared by the episodes (or images)

    monkeypatch.setattr(cdfsl, "_seconds_per_episode_step", overhead_bound)
    memo = {}
    assert cdfsl.episodes_together(extractor, support, query, 4, remaining=600, memo=memo) == 10
    assert timed == [4, 16, 4, 8, 10]  # up to what the memory holds
    assert cdfsl.episodes_together(extractor, support, query, 4, remaining=3, memo=memo) == 3
    assert timed == [4, 16, 4, 8, 10]  # measured once per run and image size
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert cdfsl.episodes_together(extractor, support, query, 4, remaining=600) == \
        cdfsl.CPU_EPISODES_PER_CORE
    timed.clear()

    def compute_bound(extractor, initial, images, count, repeats=3):
        timed.append(count if count > 1 else len(images))
        return 1.0 * len(images) / 4 * count  # every image costs the same, however batched

    monkeypatch.setattr(cdfsl, "_seconds_per_episode_step", compute_bound)
    lines = []
    assert cdfsl.episodes_together(extractor, support, query, 4, remaining=600,
                                   log=lines.append) == 1  # compute-bound: one at a time
    assert timed == [4, 16] and "1 episode(s) together on this CPU" in lines[0]

    def past_the_best(extractor, initial, images, count, repeats=3):
        return {1: 1.0, 4: 0.5, 8: 0.4}.get(count, 0.45) if len(images) == 4 else 0.3

    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr(cdfsl, "_seconds_per_episode_step", past_the_best)
    assert cdfsl.episodes_together(extractor, support, query, 4, remaining=600) == 8
    monkeypatch.undo()
    # measured for real, the extractor is left as it was
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    assert cdfsl.episodes_together(extractor, support, query, 4, remaining=4) in (1, 2, 4)
    assert all(torch.equal(before[k], v) for k, v in extractor.state_dict().items())
    # a backbone that draws random numbers in train mode trains one episode at a time
    dropout = nn.Sequential(extractor, nn.Dropout(0.1))
    lines = []
    assert cdfsl.episodes_together(dropout, support, query, 4, remaining=600, log=lines.append) == 1
    assert "random numbers" in lines[0]


def _settings(tmp_path):
    return FeatureSettings(cache_dir=str(tmp_path / "cache"), progress=False)


def test_cdfsl_frozen_on_digits_is_reproducible(tmp_path):
    spec = ModelSpec("tinyvit", arch=TINY)
    run = dict(n_episodes=6, seed=3, freeze_backbone=True, recipe=SHORT, settings=_settings(tmp_path))
    first = cdfsl.run_cdfsl(spec, "digits", (1, 5), output=str(tmp_path / "r.jsonl"), **run)
    again = cdfsl.run_cdfsl(spec, "digits", (1, 5), **run)
    assert [r["metrics"] for r in again] == [r["metrics"] for r in first]
    assert again[0]["cache_hit"] and not first[0]["cache_hit"]
    one = first[0]
    assert one["protocol"] == "cdfsl" and one["task"] == "episodes" and one["freeze_backbone"]
    assert one["preprocessing"]["style"] == "cdfsl" and one["recipe"]["epochs"] == 4
    assert one["split_sizes"] == {"train": 5, "val": 0, "test": 75} and one["episodes"] == 6
    assert one["weight_decay"] == 0.001 and 0 < one["ci95"] and one["metric"] == "top1"
    assert len(read_jsonl(tmp_path / "r.jsonl")) == 2
    other = cdfsl.run_cdfsl(spec, "digits", (1,), **{**run, "seed": 4})
    assert other[0]["metrics"] != first[0]["metrics"]


def test_cdfsl_fine_tuned_on_digits_states_its_cost_and_resumes(tmp_path, monkeypatch, capsys):
    spec = ModelSpec("tinyvit", arch=TINY)
    lines = []
    run = dict(n_episodes=3, seed=0, recipe=SHORT, log=lines.append)
    settings = FeatureSettings(cache_dir=str(tmp_path / "cache"), progress=True)
    (record,) = cdfsl.run_cdfsl(spec, "digits", (2,), work_dir=str(tmp_path / "a"),
                                settings=settings, together=1, **run)
    assert not record["freeze_backbone"] and record["episodes"] == 3
    assert record["episodes_together"] == 1
    cost = record["cost"]
    assert cost["first_group_s"] > 0 and cost["extrapolated"] and cost["episodes_together"] == 1
    assert cost["estimated_run_s"] == pytest.approx(3 * cost["seconds_per_episode"])
    assert "12 (K=2) backbone steps" in lines[0]  # 4 epochs x ceil(10 / 4) steps
    assert "first group of 1 episode(s)" in lines[1] and "take about" in lines[1]
    # one bar over the run's steps: its ETA is the run's; episodes per hour beside it
    err = capsys.readouterr().err
    assert "episodes/h=" in err and "episodes=3/3" in err and "36/36" in err

    # one at a time: interrupted in the second episode, the rerun runs the rest only
    real = cdfsl.finetune_episode
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(kwargs["episode"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    run["settings"] = _settings(tmp_path)
    monkeypatch.setattr(cdfsl, "finetune_episode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cdfsl.run_cdfsl(spec, "digits", (2,), work_dir=str(tmp_path / "b"), together=1, **run)
    (saved,) = (tmp_path / "b").glob("cdfsl/digits/*/episodes.json")
    assert list(json.loads(saved.read_text())["accuracies"]) == ["0"]
    monkeypatch.setattr(cdfsl, "finetune_episode", real)
    (resumed,) = cdfsl.run_cdfsl(spec, "digits", (2,), work_dir=str(tmp_path / "b"), together=1,
                                 **run)
    assert resumed["metrics"] == record["metrics"] and resumed["ci95"] == record["ci95"]

    # two together: interrupted in the second group, the first group's episodes are kept,
    # and a rerun (here one at a time: the key does not hold E) gives the same numbers
    real_together = cdfsl.finetune_episodes
    groups = []

    def interrupted_group(*args, **kwargs):
        groups.append(list(kwargs["episodes"]))
        if len(groups) == 2:
            raise KeyboardInterrupt
        return real_together(*args, **kwargs)

    monkeypatch.setattr(cdfsl, "finetune_episodes", interrupted_group)
    with pytest.raises(KeyboardInterrupt):
        cdfsl.run_cdfsl(spec, "digits", (2,), work_dir=str(tmp_path / "c"), together=2, **run)
    assert groups == [[0, 1], [2]]
    (saved,) = (tmp_path / "c").glob("cdfsl/digits/*/episodes.json")
    assert list(json.loads(saved.read_text())["accuracies"]) == ["0", "1"]
    monkeypatch.setattr(cdfsl, "finetune_episodes", real_together)
    (resumed,) = cdfsl.run_cdfsl(spec, "digits", (2,), work_dir=str(tmp_path / "c"), together=1,
                                 **run)
    assert resumed["metrics"] == record["metrics"] and resumed["ci95"] == record["ci95"]


def test_single_image_batch_norm_failure_is_explained(digits_images):
    spec, images, labels = digits_images
    extractor = FeatureExtractor(build_network(spec))
    episodes = sample_episodes(labels, 5, 1, 3, episodes=1, seed=0)  # batches of 4 and 1
    with pytest.raises(ValueError, match="mini-batch of 1 image.*larger --image-size"):
        cdfsl.finetuned_accuracies(extractor, images, episodes, recipe=SHORT)


def test_episodes_cli_runs_cdfsl_frozen_and_refuses_impossible_shots(tmp_path, capsys):
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(TINY))
    base = ["episodes", "--arch", str(arch), "--dataset", "digits", "--cache-dir",
            str(tmp_path / "c"), "--output", str(tmp_path / "r.jsonl"), "--no-progress",
            "--work-dir", str(tmp_path / "w"), "--episodes", "4", "--epochs", "2"]
    assert main([*base, "--k", "1", "--freeze-backbone"]) == 0
    (record,) = json.loads(capsys.readouterr().out)["records"]
    assert record["protocol"] == "cdfsl" and record["freeze_backbone"]
    assert main([*base, "--k", "1", "50"]) == 2  # 50 + 15 queries > 54 test digits per class
    err = capsys.readouterr().err
    assert err.startswith("error: 50-shot episodes with 15 queries need 65 images per class")
    assert "backbone steps" not in err  # refused before any fine-tuning
