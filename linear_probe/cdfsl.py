"""The cdfsl few-shot protocol (IBM/cdfsl-benchmark ``finetune.py``, the paper's Table 5), seeded.

Per episode (``n_way`` classes, ``k`` support and 15 query images per class, images resized to
1.15 x 224 and centre-cropped, ImageNet mean / std):

* a fresh ``nn.Linear(feat_dim, n_way)`` with torch's default initialisation;
* SGD on it: lr 0.01, momentum 0.9, dampening 0.9, weight decay 0.001;
* 100 epochs over the n_way x k support images in mini-batches of 4, in a new random order
  every epoch (the last mini-batch holds the remainder);
* **fine-tuned** (the default, as in cdfsl): the backbone starts every episode from the
  evaluated weights, runs in train mode (batch-norm layers use and update batch statistics,
  as cdfsl's ResNets do) and is updated by its own SGD (lr 0.01, no momentum, no weight
  decay) on the same mini-batches; the queries are then scored in eval mode;
* **frozen** (``--freeze-backbone``): the backbone stays in eval mode and is not updated.
  Its features then never change, so they come from the feature cache, and many episodes
  are trained at once: the head weights of E episodes form one (E, n_way, d) tensor and the
  loss is the sum of the episodes' own mean losses, so each episode's gradient is its own,
  and torch's SGD (element-wise) makes exactly the updates it would make episode by episode.

Reported, as cdfsl does: mean query accuracy over the episodes and 1.96 x std / sqrt(n).

Unlike cdfsl, whose episodes draw from one global random stream, every random choice here is
seeded per episode — the head's initial weights from (seed, episode), the support orders
likewise, the episodes themselves by :func:`linear_probe.fewshot.sample_episodes` — so any
episode reproduces on its own, and a fine-tuned run interrupted after some episodes resumes
with the rest (its per-episode accuracies are kept in ``<work-dir>/cdfsl/<key>/episodes.json``).

Cost: fine-tuning runs ``epochs x ceil(n_way k / 4)`` backbone forward + backward passes per
episode (700 for 5-shot, 2,500 for 20-shot, 6,300 for 50-shot): hours on a GPU for 600
episodes. The command measures the first episode and states what the whole run will take.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .fewshot import Episodes, confidence95, sample_episodes
from .recipes import CDFSL_EPISODES, CDFSL_QUERIES, CDFSL_RECIPE, CdfslRecipe


def head_optimizer(params, recipe: CdfslRecipe) -> torch.optim.SGD:
    """The head's SGD: lr 0.01, momentum 0.9, dampening 0.9, weight decay 0.001."""
    return torch.optim.SGD(params, lr=recipe.head_lr, momentum=recipe.momentum,
                           dampening=recipe.dampening, weight_decay=recipe.weight_decay)


def _episode_seed(seed: int, episode: int) -> int:
    # 32 bits: all that torch's CPU generator keeps of a seed
    return int(np.random.SeedSequence([int(seed), int(episode)]).generate_state(1)[0])


def init_head(dim: int, n_way: int, seed: int, episode: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial (weight (n_way, dim), bias (n_way,)) of an episode's head: ``nn.Linear``'s own
    default initialisation, drawn from the episode's generator."""
    generator = torch.Generator().manual_seed(_episode_seed(seed, episode))
    weight = torch.empty(n_way, dim)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(dim)
    bias = torch.empty(n_way).uniform_(-bound, bound, generator=generator)
    return weight, bias


def support_orders(seed: int, episode: int, epochs: int, support_size: int) -> np.ndarray:
    """(epochs, support_size): the episode's random order of its support images per epoch."""
    rng = np.random.default_rng([int(seed), int(episode), 1])
    return np.stack([rng.permutation(support_size) for _ in range(epochs)])


def _labels(n: int, per_class: int, device) -> torch.Tensor:
    return torch.arange(n, device=device).repeat_interleave(per_class)


# --------------------------------------------------------------------------- frozen
def train_frozen_heads(support: torch.Tensor, n_way: int, episode_ids: Sequence[int], *,
                       seed: int = 0, recipe: CdfslRecipe = CDFSL_RECIPE
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Heads of several episodes trained together on their support features.

    ``support`` (b, n_way k, d): episode ``episode_ids[i]``'s support features, class-major.
    Returns weight (b, n_way, d) and bias (b, n_way), each episode's exactly as its own
    ``nn.Linear`` trained alone by the recipe's SGD would be (see the module docstring)."""
    b, S, d = support.shape
    device = support.device
    y_support = _labels(n_way, S // n_way, device)
    inits = [init_head(d, n_way, seed, e) for e in episode_ids]
    weight = torch.stack([w for w, _ in inits]).to(device).requires_grad_(True)
    bias = torch.stack([c for _, c in inits]).to(device).requires_grad_(True)
    orders = torch.from_numpy(np.stack([support_orders(seed, e, recipe.epochs, S)
                                        for e in episode_ids])).to(device)  # (b, epochs, S)
    rows = torch.arange(b, device=device)[:, None]
    optimizer = head_optimizer([weight, bias], recipe)
    for epoch in range(recipe.epochs):
        for j in range(0, S, recipe.batch_size):
            pick = orders[:, epoch, j:j + recipe.batch_size]  # (b, m)
            logits = torch.baddbmm(bias[:, None, :], support[rows, pick], weight.transpose(1, 2))
            losses = F.cross_entropy(logits.flatten(0, 1), y_support[pick].flatten(),
                                     reduction="none")
            optimizer.zero_grad(set_to_none=True)
            # each episode's own mean loss, summed: its gradient is its own
            losses.view(b, -1).mean(1).sum().backward()
            optimizer.step()
    return weight.detach(), bias.detach()


def frozen_accuracies(features, episodes: Episodes, *, seed: int = 0,
                      recipe: CdfslRecipe = CDFSL_RECIPE, device=None, chunk: int = 100,
                      first: int = 0, progress: bool | None = False) -> np.ndarray:
    """Query accuracy (%) of each episode with a frozen backbone, shape (E,).

    ``features`` (n, d) are the cached features of the sampled split; episode ``i`` of
    ``episodes`` is episode number ``first + i`` for the seeds. ``chunk`` episodes train
    together (:func:`train_frozen_heads`)."""
    from tinyvit_backbone.progress import progress_bar

    from .device import cpu_threads, threads_for

    device = torch.device(device or "cpu")
    X = torch.from_numpy(np.array(features, dtype=np.float32)).to(device)
    E, n_way, q = len(episodes.support), episodes.n_way, episodes.n_query
    y_query = _labels(n_way, q, device)
    accs = np.empty(E, np.float64)
    bar = progress_bar(total=E, desc=f"cdfsl frozen {n_way}-way {episodes.k}-shot",
                       enabled=progress, unit="episode", leave=False)
    with cpu_threads(threads_for(device, chunk * recipe.batch_size * X.shape[1] * n_way * 3)):
        for start in range(0, E, chunk):
            stop = min(E, start + chunk)
            support = X[torch.from_numpy(episodes.support[start:stop]).to(device)]  # (b, S, d)
            query = X[torch.from_numpy(episodes.query[start:stop]).to(device)]
            weight, bias = train_frozen_heads(support, n_way, range(first + start, first + stop),
                                              seed=seed, recipe=recipe)
            with torch.no_grad():
                pred = torch.baddbmm(bias[:, None, :], query, weight.transpose(1, 2)).argmax(-1)
            accs[start:stop] = (100.0 * (pred == y_query).float().mean(-1)).cpu().numpy()
            bar.update(stop - start)
    bar.close()
    return accs


# --------------------------------------------------------------------------- fine-tuned
def finetune_episode(extractor: nn.Module, initial_state: dict, support: torch.Tensor,
                     query: torch.Tensor, n_way: int, *, seed: int, episode: int,
                     recipe: CdfslRecipe = CDFSL_RECIPE, freeze_backbone: bool = False,
                     amp_dtype: torch.dtype | None = None, dim: int | None = None) -> float:
    """Query accuracy (%) of one episode, training the head on the support images and (unless
    ``freeze_backbone``) fine-tuning ``extractor`` with it.

    ``support`` (n_way k, 3, H, W) and ``query`` (n_way q, 3, H, W) are normalised images on
    the extractor's device, class-major (image j belongs to class j // k). ``extractor`` maps
    images to (B, ``dim``) features; its weights and buffers are reset to ``initial_state``
    first."""
    from tinyvit_backbone.device import autocast

    device = support.device
    extractor.load_state_dict(initial_state)
    k, q = len(support) // n_way, len(query) // n_way
    head = nn.Linear(dim or feature_dim(extractor, support), n_way).to(device)
    weight, bias = init_head(head.in_features, n_way, seed, episode)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    optimizers = [head_optimizer(head.parameters(), recipe)]
    for p in extractor.parameters():
        p.requires_grad_(not freeze_backbone)
    if freeze_backbone:
        extractor.eval()
    else:
        extractor.train()
        optimizers.append(torch.optim.SGD([p for p in extractor.parameters()], lr=recipe.backbone_lr))
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    y_support = _labels(n_way, k, device)
    orders = torch.from_numpy(support_orders(seed, episode, recipe.epochs, len(support))).to(device)
    for epoch in range(recipe.epochs):
        for j in range(0, len(support), recipe.batch_size):
            pick = orders[epoch, j:j + recipe.batch_size]
            with autocast(device, amp_dtype):
                try:
                    features = extractor(support[pick])
                except ValueError as err:  # batch-norm in train mode on one 1x1 feature map
                    raise ValueError(
                        f"fine-tuning failed on a mini-batch of {len(pick)} image(s) ({err}): at "
                        "this input size a batch-norm layer sees a 1x1 map, where train mode "
                        "needs more than one image. Use a larger --image-size, or a support set "
                        "(n_way x k) that leaves no single-image mini-batch") from None
                loss = F.cross_entropy(head(features.float()), y_support[pick])
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
            else:
                scaler.scale(loss).backward()
                for optimizer in optimizers:
                    scaler.step(optimizer)
                scaler.update()
    extractor.eval()
    with torch.no_grad(), autocast(device, amp_dtype):
        pred = head(extractor(query).float()).argmax(-1)
    return float(100.0 * (pred == _labels(n_way, q, device)).float().mean())


def feature_dim(extractor: nn.Module, images: torch.Tensor) -> int:
    """Width of ``extractor``'s features (one image through it in eval mode)."""
    extractor.eval()
    with torch.no_grad():
        return int(extractor(images[:1]).shape[1])


class EpisodeLog:
    """Per-episode accuracies of one fine-tuned setting, kept as JSON
    (``{"key", "settings", "accuracies": {episode: percent}}``) and rewritten atomically
    after every episode, so an interrupted run resumes after its last finished episode."""

    def __init__(self, path: Path, key: str, settings: dict):
        from tinyvit_backbone.files import read_json

        self.path, self.key, self.settings = Path(path), key, settings
        self.accuracies: dict[int, float] = {}
        if self.path.exists():
            saved = read_json(self.path, "cdfsl episode log")
            if saved.get("key") != key:
                raise ValueError(f"{self.path} belongs to other settings (key {saved.get('key')!r}, "
                                 f"expected {key!r}); delete it or use another --work-dir")
            self.accuracies = {int(e): float(a) for e, a in saved["accuracies"].items()}

    def add(self, episode: int, accuracy: float) -> None:
        from tinyvit_backbone.files import atomic_write_json

        self.accuracies[int(episode)] = float(accuracy)
        atomic_write_json(self.path, {"key": self.key, "settings": self.settings,
                                      "accuracies": {str(e): a for e, a in sorted(self.accuracies.items())}})


def finetuned_accuracies(extractor: nn.Module, images: Callable[[np.ndarray], torch.Tensor],
                         episodes: Episodes, *, seed: int = 0, recipe: CdfslRecipe = CDFSL_RECIPE,
                         freeze_backbone: bool = False, amp_dtype: torch.dtype | None = None,
                         log: EpisodeLog | None = None, first: int = 0,
                         on_episode: Callable[[int, float, float], None] | None = None,
                         progress: bool | None = False) -> np.ndarray:
    """Query accuracy (%) of every episode, fine-tuning from ``extractor``'s current weights.

    ``images(indices)`` returns the normalised images of those dataset rows on the
    extractor's device; the next episode's images are decoded in a background thread while
    this one trains. Episodes already in ``log`` are skipped (and their accuracy reused);
    ``on_episode(episode, accuracy, seconds)`` is called after each one that ran."""
    from tinyvit_backbone.progress import progress_bar

    from .extract import prefetched

    initial = {name: t.detach().clone() for name, t in extractor.state_dict().items()}
    E = len(episodes.support)
    accs = np.full(E, np.nan)
    todo = []
    for i in range(E):
        if log is not None and first + i in log.accuracies:
            accs[i] = log.accuracies[first + i]
        else:
            todo.append(i)
    bar = progress_bar(total=E, initial=E - len(todo), unit="episode", enabled=progress,
                       desc=f"cdfsl {'frozen' if freeze_backbone else 'fine-tuned'} "
                            f"{episodes.n_way}-way {episodes.k}-shot")

    def load():
        for i in todo:
            yield i, images(episodes.support[i]), images(episodes.query[i])

    dim = None
    try:
        for i, support, query in prefetched(load(), depth=1):
            start = time.perf_counter()
            dim = dim or feature_dim(extractor, support)
            accs[i] = finetune_episode(extractor, initial, support, query, episodes.n_way,
                                       seed=seed, episode=first + i, recipe=recipe,
                                       freeze_backbone=freeze_backbone, amp_dtype=amp_dtype,
                                       dim=dim)
            if log is not None:
                log.add(first + i, accs[i])
            if on_episode is not None:
                on_episode(first + i, float(accs[i]), time.perf_counter() - start)
            bar.update(1)
    finally:
        bar.close()
        extractor.load_state_dict(initial)
    return accs


def estimate_seconds(first_episode_s: float, first_support: int, settings: Sequence[tuple[int, int]],
                     recipe: CdfslRecipe) -> float:
    """Seconds for ``settings`` [(support size, episodes), ...] at the first episode's pace
    per optimiser step (the steps dominate: decoding runs beside them)."""
    per_step = first_episode_s / recipe.steps(first_support)
    return sum(per_step * recipe.steps(size) * count for size, count in settings)


def summary_fields(accs: np.ndarray) -> dict:
    mean = float(np.mean(accs))
    return {"metrics": {"top1": mean, "mean_per_class": mean}, "ci95": confidence95(accs),
            "std": float(np.std(accs))}




# --------------------------------------------------------------------------- runs
def format_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _stderr(line: str) -> None:
    import sys
    print(line, file=sys.stderr, flush=True)


def run_cdfsl(
    model,
    dataset: str,
    ks: Sequence[int] = (5, 20, 50),
    *,
    n_way: int = 5,
    n_query: int = CDFSL_QUERIES,
    n_episodes: int = CDFSL_EPISODES,
    seed: int = 0,
    freeze_backbone: bool = False,
    recipe: CdfslRecipe = CDFSL_RECIPE,
    split: str | None = None,
    settings=None,
    work_dir=None,
    output=None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """cdfsl episodes of ``model`` on ``dataset``, one record per K (see the module docstring).

    Frozen: features come from the feature cache (cdfsl preprocessing). Fine-tuned: the
    images are decoded per episode, the per-step cost is measured on the first episode and the
    whole run's time is logged before the rest runs; finished episodes are kept under
    ``work_dir`` so a rerun resumes."""
    from .registry import dataset_spec
    from .settings import FeatureSettings, as_model_spec

    settings = settings or FeatureSettings()
    spec = as_model_spec(model)
    info = dataset_spec(dataset)
    split = split or info.episodes_split
    if split is None:
        raise ValueError(f"{info.name} defines no split for episodes; pass --split")
    if info.multilabel:
        raise ValueError(f"{info.name} is multi-label; episodes need one class per image")
    run = _run_frozen if freeze_backbone else _run_finetuned
    records = run(spec, info, split, list(ks), n_way, n_query, n_episodes, seed, recipe, settings,
                  work_dir, log or _stderr)
    if output:
        from .results import append_jsonl
        append_jsonl(output, records)
    return records


def _record(spec, settings, inputs: dict, accs: np.ndarray, k: int, n_way: int, n_query: int,
            seed: int, recipe: CdfslRecipe, freeze_backbone: bool, split: str, timings: dict,
            **extra) -> dict:
    from .results import CDFSL, make_record
    from .settings import base_fields

    return make_record(
        **base_fields("episodes", CDFSL, spec, settings, "top1", **inputs),
        split_sizes={"train": n_way * k, "val": 0, "test": n_way * n_query}, k=int(k),
        seed=int(seed), n_way=int(n_way), episodes=int(len(accs)),
        weight_decay=recipe.weight_decay, timings=timings, **summary_fields(accs),
        freeze_backbone=freeze_backbone, recipe=asdict(recipe), split=split,
        n_query=int(n_query), **extra)


def _run_frozen(spec, info, split, ks, n_way, n_query, n_episodes, seed, recipe, settings,
                work_dir, log) -> list[dict]:
    from .device import select_device
    from .settings import extraction_fields

    device = select_device(settings.device)
    ex = settings.extract(spec, info.name, [split], preprocessing="cdfsl")
    entry = ex.splits[split]
    records = []
    for k in ks:
        start = time.perf_counter()
        episodes = sample_episodes(entry.labels, n_way, k, n_query, n_episodes, seed, entry.classes)
        accs = frozen_accuracies(entry.features, episodes, seed=seed, recipe=recipe, device=device,
                                 progress=settings.progress)
        fit_s = time.perf_counter() - start
        records.append(_record(spec, settings, extraction_fields(ex), accs, k, n_way, n_query,
                               seed, recipe, True, split,
                               {"extract_s": ex.extract_s, "fit_s": fit_s, "total_s": fit_s},
                               episodes_per_s=len(accs) / fit_s if fit_s else None))
    return records


def _run_finetuned(spec, info, split, ks, n_way, n_query, n_episodes, seed, recipe, settings,
                   work_dir, log) -> list[dict]:
    from tinyvit_backbone.fingerprint import dataset_fingerprint

    from .backbones import FeatureExtractor, build_network
    from .device import autocast_dtype, select_device
    from .extract import input_config
    from .loaders import class_names, dataset_labels, load_split
    from .preprocessing import Preprocessed, eval_preprocessing
    from .results import CDFSL
    from .settings import run_dir

    device = select_device(settings.device)
    amp = autocast_dtype(device, settings.amp)
    data_config = input_config(spec, info, settings.image_size)
    size = int(data_config["input_size"][-1])
    prep = eval_preprocessing("cdfsl", data_config)
    raw = load_split(info, split, settings.data_root, size)
    labels = dataset_labels(raw)
    # every K is sampled first, so an impossible one fails before hours of fine-tuning
    plans = {k: sample_episodes(labels, n_way, k, n_query, n_episodes, seed, class_names(raw))
             for k in ks}
    extractor = FeatureExtractor(build_network(spec), settings.feature_layer).to(device)
    data = Preprocessed(raw, prep.transform)

    def images(rows) -> torch.Tensor:
        batch = torch.stack([data[int(i)][0] for i in rows])
        return prep.normalise(batch.to(device, non_blocking=True))

    steps = {k: recipe.steps(n_way * k) for k in ks}
    log(f"cdfsl fine-tuned: {info.name} {n_way}-way, K = {list(ks)}, {n_episodes} episodes each; "
        f"per episode {', '.join(f'{steps[k]:,} (K={k})' for k in ks)} backbone steps of batch "
        f"{recipe.batch_size} on {device}; the first episode is timed to state the run's cost")
    common = {"model": spec.key_parts(), "dataset": info.name, "split": split,
              "dataset_fingerprint": dataset_fingerprint(raw), "preprocessing": prep.description,
              "feature_layer": settings.feature_layer, "n_way": n_way, "n_query": n_query,
              "episodes": n_episodes, "seed": seed, "recipe": asdict(recipe),
              "amp": str(amp).replace("torch.", "") if amp else "fp32"}
    logs = {}
    for k in ks:
        folder, key = run_dir(work_dir, CDFSL, info.name, {**common, "k": k})
        logs[k] = EpisodeLog(folder / "episodes.json", key, {**common, "k": k})
    cost: dict = {}
    records = []
    for position, k in enumerate(ks):
        def on_episode(episode, accuracy, seconds, k=k, position=position):
            if cost:
                return
            left = [(n_way * kk, n_episodes - len(logs[kk].accuracies)) for kk in ks[position:]]
            total = estimate_seconds(seconds, n_way * k, left, recipe)
            cost.update(first_episode_s=seconds, episodes_per_s=1.0 / seconds,
                        estimated_run_s=total, device=str(device), extrapolated=True)
            log(f"cdfsl fine-tuned: first episode {seconds:.1f} s ({1.0 / seconds:.3g} episodes/s "
                f"at K={k}); the rest of this run, {sum(n for _, n in left)} episodes, will take "
                f"about {format_seconds(total)} on {device} (extrapolated per step)")

        start = time.perf_counter()
        accs = finetuned_accuracies(extractor, images, plans[k], seed=seed, recipe=recipe,
                                    amp_dtype=amp, log=logs[k], on_episode=on_episode,
                                    progress=settings.progress)
        fit_s = time.perf_counter() - start
        inputs = {"dataset": info.name, "image_size": size,
                  "feature_dim": feature_dim(extractor, images(plans[k].support[0][:1])),
                  "preprocessing": prep.description, "cache_hit": None}
        records.append(_record(spec, settings, inputs, accs, k, n_way, n_query, seed, recipe,
                               False, split, {"extract_s": 0.0, "fit_s": fit_s, "total_s": fit_s},
                               cost=dict(cost) or None, amp=common["amp"], device=str(device),
                               work_dir=str(logs[k].path.parent)))
    return records
