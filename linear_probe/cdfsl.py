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

Fine-tuned episodes are trained together too: E at once, each with its own copy of the
backbone (parameters and batch-norm running statistics), its own head and its own optimiser
state, as stacked (E, ...) tensors run through ``torch.func.vmap`` over ``functional_call``
(:class:`EpisodeStack`). Each step is then one pass over E x 4 images instead of E passes
over 4, which a GPU (idle at batch 4) and a CPU (far below its GEMM peak) both run much
faster, while every episode gets exactly its own updates (tested against the episodes
trained alone: the same accuracies, weights within 1e-5). E comes from the free memory (GPU)
or the cores (CPU), see :func:`episodes_together`, or from ``--episodes-together``.

Reported, as cdfsl does: mean query accuracy over the episodes and 1.96 x std / sqrt(n).

Unlike cdfsl, whose episodes draw from one global random stream, every random choice here is
seeded per episode — the head's initial weights from (seed, episode), the support orders
likewise, the episodes themselves by :func:`linear_probe.fewshot.sample_episodes` — so any
episode reproduces on its own, whichever episodes it trained beside, and a fine-tuned run
interrupted after some episodes resumes with the rest (its per-episode accuracies are kept in
``<work-dir>/cdfsl/<key>/episodes.json``).

Precision: float32, as ``finetune.py``; ``--amp`` opts in to bfloat16 autocast of the
backbone, head and loss (recorded as ``amp``; its effect on the digits is in the README).

Cost: fine-tuning runs ``epochs x ceil(n_way k / 4)`` optimiser steps per episode (700 for
5-shot, 2,500 for 20-shot, 6,300 for 50-shot). The command times the first group of episodes
and states what the whole run will take; one progress bar over the run's steps gives its ETA
and the episodes per hour.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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
                    raise _bn_failure(err, len(pick)) from None
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


# --------------------------------------------------------------------------- fine-tuned, together
def drop_attention_bias_caches(module: nn.Module) -> None:
    """Forget the bias tables that timm's TinyViT attention caches in eval mode. The cache is
    filled from the module's own parameters, so under ``functional_call`` it would hand the
    evaluated weights' (or another vmap level's) biases to every episode; it must be empty
    whenever an episode's own weights are swapped in."""
    for m in module.modules():
        cache = getattr(m, "attention_bias_cache", None)
        if isinstance(cache, dict):
            cache.clear()


def _random_layers(module: nn.Module) -> list[str]:
    """Names of the train-mode layers that draw random numbers (dropout, stochastic depth):
    episodes trained together would draw them differently from episodes trained alone."""
    names = []
    for name, m in module.named_modules():
        p = getattr(m, "p", None) if isinstance(m, nn.modules.dropout._DropoutNd) else \
            getattr(m, "drop_prob", None)
        if p:
            names.append(name or type(m).__name__)
    return names


class EpisodeStack:
    """The backbones, heads and optimiser states of E episodes as stacked tensors.

    Every parameter and persistent buffer of ``extractor`` becomes an (E, ...) tensor that
    starts from ``initial_state``; ``features(images)`` runs the extractor once per episode
    through ``torch.func.vmap`` over ``functional_call``, so each episode's images meet only
    its own weights (convolutions become grouped ones, linear layers batched products) and
    each batch-norm layer normalises with its own episode's batch statistics and updates its
    own episode's running statistics. The heads are (E, n_way, d) and (E, n_way).

    The loss is the sum of the episodes' own mean losses: each stacked tensor's gradient is
    then, slice by slice, the gradient each episode would get alone, and torch's SGD updates
    element by element, so one optimiser over the stacked tensors makes every episode's own
    update (head: lr 0.01, momentum 0.9, dampening 0.9, weight decay 0.001, its momentum
    buffer per element; backbone: plain SGD at lr 0.01)."""

    def __init__(self, extractor: nn.Module, initial_state: dict, count: int, n_way: int,
                 dim: int, *, seed: int, episodes: Sequence[int], recipe: CdfslRecipe,
                 device):
        from torch.func import functional_call, vmap

        self.extractor, self.count, self.n_way = extractor, count, n_way
        params = dict(extractor.named_parameters())
        buffers = dict(extractor.named_buffers())

        def stack(name: str, like: torch.Tensor) -> torch.Tensor:
            value = initial_state[name].detach().to(device=device, dtype=like.dtype)
            return value.unsqueeze(0).expand(count, *value.shape).clone()

        self.params = {n: stack(n, p).requires_grad_(True) for n, p in params.items()}
        # buffers left out of the state (index tables) are the same for every episode: the
        # module's own are used, unbatched
        self.buffers = {n: stack(n, b) for n, b in buffers.items() if n in initial_state}
        inits = [init_head(dim, n_way, seed, e) for e in episodes]
        self.weight = torch.stack([w for w, _ in inits]).to(device).requires_grad_(True)
        self.bias = torch.stack([b for _, b in inits]).to(device).requires_grad_(True)
        self.optimizers = [head_optimizer([self.weight, self.bias], recipe),
                           torch.optim.SGD(list(self.params.values()), lr=recipe.backbone_lr)]

        def one(p, b, images):
            return functional_call(extractor, (p, b), (images,))

        self._features = vmap(one)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(E, m, 3, H, W) images -> (E, m, d) features, episode e through its own backbone."""
        import warnings

        with warnings.catch_warnings():
            # timm's global average pool reaches an op (as_strided_) that vmap runs episode by
            # episode: one small op per forward, under 1% of a step in the profile
            warnings.filterwarnings("ignore", message="There is a performance drop because we "
                                    "have not yet implemented the batching rule")
            return self._features(self.params, self.buffers, images)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias[:, None, :], features.float(), self.weight.transpose(1, 2))

    def step(self, images: torch.Tensor, labels: torch.Tensor, amp_dtype: torch.dtype | None = None,
             scaler=None) -> torch.Tensor:
        """One SGD step of every episode on its own mini-batch: ``images`` (E, m, 3, H, W),
        ``labels`` (E, m). Returns the summed loss (detached)."""
        from tinyvit_backbone.device import autocast

        with autocast(images.device, amp_dtype):
            try:
                features = self.features(images)
            except ValueError as err:  # batch-norm in train mode on one 1x1 feature map
                raise _bn_failure(err, images.shape[1]) from None
            losses = F.cross_entropy(self.logits(features).flatten(0, 1), labels.flatten(),
                                     reduction="none")
        # each episode's own mean loss, summed: its gradient is its own
        loss = losses.view(self.count, -1).mean(1).sum()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            for optimizer in self.optimizers:
                optimizer.step()
        else:
            scaler.scale(loss).backward()
            for optimizer in self.optimizers:
                scaler.step(optimizer)
            scaler.update()
        return loss.detach()

    def predict(self, images: torch.Tensor, amp_dtype: torch.dtype | None = None,
                batch: int = 16) -> torch.Tensor:
        """(E, n, 3, H, W) images -> (E, n) predicted classes, eval mode, ``batch`` images per
        episode at a time."""
        from tinyvit_backbone.device import autocast

        self.extractor.eval()
        preds = []
        try:
            with torch.no_grad(), autocast(images.device, amp_dtype):
                for j in range(0, images.shape[1], batch):
                    drop_attention_bias_caches(self.extractor)
                    preds.append(self.logits(self.features(images[:, j:j + batch])).argmax(-1))
        finally:
            drop_attention_bias_caches(self.extractor)
        return torch.cat(preds, 1)

    def state(self, e: int) -> dict:
        """Episode ``e``'s trained backbone state (the extractor's state-dict names) and head."""
        out = {n: t[e].detach().clone() for n, t in {**self.params, **self.buffers}.items()}
        return {"backbone": out, "head": {"weight": self.weight[e].detach().clone(),
                                          "bias": self.bias[e].detach().clone()}}


def _bn_failure(err: ValueError, size: int) -> ValueError:
    return ValueError(
        f"fine-tuning failed on a mini-batch of {size} image(s) ({err}): at this input size a "
        "batch-norm layer sees a 1x1 map, where train mode needs more than one image. Use a "
        "larger --image-size, or a support set (n_way x k) that leaves no single-image "
        "mini-batch")


def finetune_episodes(extractor: nn.Module, initial_state: dict, support: torch.Tensor,
                      query: torch.Tensor, n_way: int, *, seed: int, episodes: Sequence[int],
                      recipe: CdfslRecipe = CDFSL_RECIPE, amp_dtype: torch.dtype | None = None,
                      dim: int | None = None, query_batch: int = 16,
                      keep_states: bool = False):
    """Query accuracies (%) of E episodes fine-tuned together, shape (E,): each exactly as
    :func:`finetune_episode` trains it alone (see :class:`EpisodeStack`), up to float
    summation order.

    ``support`` (E, n_way k, 3, H, W) and ``query`` (E, n_way q, 3, H, W) are normalised images
    on the extractor's device, class-major; ``episodes`` their E episode numbers (the seeds of
    their heads and support orders). Every episode starts from ``initial_state``; mini-batch
    j of every episode is its own 4 images in its own order, and all E take that step at once.
    Queries are scored ``query_batch`` per episode at a time in eval mode. With
    ``keep_states`` the episodes' trained weights (:meth:`EpisodeStack.state`) come back too.

    Under float16 autocast one GradScaler serves all E episodes, so an overflow in one skips
    the step of all; bfloat16 and float32 (the default) need no scaler."""
    E, S = support.shape[:2]
    if len(episodes) != E or query.shape[0] != E:
        raise ValueError(f"{len(episodes)} episode numbers for {E} support and "
                         f"{query.shape[0]} query sets")
    device = support.device
    extractor.load_state_dict(initial_state)
    drop_attention_bias_caches(extractor)
    dim = dim or feature_dim(extractor, support[0])
    stack = EpisodeStack(extractor, initial_state, E, n_way, dim, seed=seed, episodes=episodes,
                         recipe=recipe, device=device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    y_support = _labels(n_way, S // n_way, device)
    orders = torch.from_numpy(np.stack([support_orders(seed, e, recipe.epochs, S)
                                        for e in episodes])).to(device)  # (E, epochs, S)
    rows = torch.arange(E, device=device)[:, None]
    extractor.train()
    for epoch in range(recipe.epochs):
        for j in range(0, S, recipe.batch_size):
            pick = orders[:, epoch, j:j + recipe.batch_size]  # (E, m)
            stack.step(support[rows, pick], y_support[pick], amp_dtype, scaler)
    pred = stack.predict(query, amp_dtype, query_batch)
    y_query = _labels(n_way, query.shape[1] // n_way, device)
    accs = (100.0 * (pred == y_query).float().mean(-1)).cpu().numpy()
    accs = accs.astype(np.float64)
    if keep_states:
        return accs, [stack.state(e) for e in range(E)]
    return accs


def _saved_bytes(extractor: nn.Module, images: torch.Tensor) -> int:
    """Bytes one train-mode step keeps for its backward pass on ``images`` (the activations,
    counted once per storage), measured with autograd's saved-tensor hooks."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        try:
            key = (t.untyped_storage().data_ptr(), t.device.type)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without storage (rare wrappers)
            seen[(id(t), "")] = t.numel() * t.element_size()
        return t

    state = {n: t.detach().clone() for n, t in extractor.state_dict().items()}
    params = {n: p.detach().clone().requires_grad_(True) for n, p in extractor.named_parameters()}
    extractor.train()
    try:
        from torch.func import functional_call
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            functional_call(extractor, params, (images,))
    finally:
        extractor.load_state_dict(state)  # the step moved batch-norm running statistics
        drop_attention_bias_caches(extractor)
    return int(sum(seen.values()))


def episode_bytes(extractor: nn.Module, support: torch.Tensor, query: torch.Tensor,
                  batch_size: int) -> int:
    """Memory one more episode trained together costs, in bytes: its copy of the weights,
    their gradients and the head's state (3 x the parameters), the activations a mini-batch
    keeps for backward (measured), and its support and query images."""
    param_bytes = sum(p.numel() * p.element_size() for p in extractor.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in extractor.buffers())
    images = support.numel() * support.element_size() + query.numel() * query.element_size()
    return 3 * param_bytes + buffer_bytes + _saved_bytes(extractor, support[:batch_size]) + images


# On a CPU, episodes together pay where a step's fixed cost (per-op dispatch, autograd, the
# optimisers) dominates, i.e. small backbones and inputs; where a step is already compute-bound
# (TinyViT-5M at 224 px measured 0.5-0.7x) the grouped convolutions and batched products that
# per-episode weights need run slower than E dense passes. So the CPU's E is measured.
CPU_EPISODES_PER_CORE = 8
MAX_EPISODES_TOGETHER = 64
CALIBRATION_GAIN = 0.9  # E > 1 is taken when it costs at most 90% per episode of one alone


def _seconds_per_episode_step(extractor: nn.Module, initial: dict, images: torch.Tensor,
                              count: int, repeats: int = 3) -> float:
    """Seconds per episode of one training step on ``images`` (m, 3, H, W): with ``count`` 1
    the extractor itself with its own SGD and a head (as :func:`finetune_episode`), else
    ``count`` episodes together (:class:`EpisodeStack`). The best of ``repeats`` after one
    warm-up step; the extractor is reset to ``initial`` after."""
    labels = torch.arange(len(images), device=images.device) % 2
    recipe = CdfslRecipe()
    params, grads = list(extractor.parameters()), [p.requires_grad for p in extractor.parameters()]
    try:
        extractor.load_state_dict(initial)
        drop_attention_bias_caches(extractor)
        dim = feature_dim(extractor, images)
        if count == 1:
            for p in params:
                p.requires_grad_(True)
            head = nn.Linear(dim, 2).to(images.device)
            optimizers = [head_optimizer(head.parameters(), recipe),
                          torch.optim.SGD(params, lr=recipe.backbone_lr)]

            def step():
                loss = F.cross_entropy(head(extractor(images)), labels)
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for optimizer in optimizers:
                    optimizer.step()
        else:
            stack = EpisodeStack(extractor, initial, count, 2, dim, seed=0,
                                 episodes=range(count), recipe=recipe, device=images.device)
            batch = images.unsqueeze(0).expand(count, *images.shape).contiguous()
            batch_labels = labels.unsqueeze(0).expand(count, -1)

            def step():
                stack.step(batch, batch_labels)
        extractor.train()
        step()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - start)
        return best / count
    finally:
        for p, g in zip(params, grads):
            p.requires_grad_(g)
        extractor.load_state_dict(initial)
        drop_attention_bias_caches(extractor)


def episodes_together(extractor: nn.Module, support: torch.Tensor, query: torch.Tensor,
                      batch_size: int, remaining: int, requested: int | None = None,
                      log: Callable[[str], None] | None = None, memo: dict | None = None) -> int:
    """How many episodes to train together: ``requested`` when given (at most ``remaining``);
    otherwise as many as 60% of the free memory holds (:func:`episode_bytes`; on CUDA the
    device's free memory, on CPU the system's available memory), at most
    :data:`MAX_EPISODES_TOGETHER`. On a CPU also at most ``CPU_EPISODES_PER_CORE`` per core,
    and measured: a step is timed one episode at a time, then on 4x the images with one set
    of weights (where that saves less than 10% per image, the step is compute-bound and E is
    1), then with 4, 8, 16, ... episodes together until E stops getting faster; the fastest E
    is taken if it saves at least 10% per episode.
    One when the backbone draws random numbers in train mode (dropout, stochastic depth).
    ``memo`` keeps a CPU's measured E per image size for the next call of a run."""
    from .device import available_memory

    if requested is not None:
        if requested < 1:
            raise ValueError(f"--episodes-together must be >= 1 (or left out for automatic), "
                             f"got {requested}")
        return max(1, min(int(requested), remaining))
    random_layers = _random_layers(extractor)
    if random_layers:
        if log is not None:
            log(f"cdfsl fine-tuned: one episode at a time: {', '.join(random_layers[:3])} draw "
                "random numbers in train mode, which episodes trained together would draw "
                "differently")
        return 1
    device = support.device
    per_episode = episode_bytes(extractor, support, query, batch_size)
    by_memory = int(0.6 * available_memory(device) // max(1, per_episode))
    cap = max(1, min(by_memory, MAX_EPISODES_TOGETHER, remaining))
    if device.type != "cpu" or cap == 1:
        return cap
    import os
    cap = min(cap, CPU_EPISODES_PER_CORE * (os.cpu_count() or 1))
    key = tuple(support.shape[1:])
    if memo is not None and key in memo:
        return max(1, min(memo[key], cap))
    initial = {n: t.detach().clone() for n, t in extractor.state_dict().items()}
    images = support[:batch_size]
    alone = _seconds_per_episode_step(extractor, initial, images, 1)
    # one set of weights on 4x the images: the most any batching can save; a step that is
    # already compute-bound (TinyViT-5M at 224 px) gains nothing, and E stays 1 untried
    shared = _seconds_per_episode_step(extractor, initial, images.repeat(4, 1, 1, 1), 1) / 4
    best_count, best = 1, alone
    if shared <= CALIBRATION_GAIN * alone:
        count, previous = min(4, cap), math.inf
        while count > 1:
            seconds = _seconds_per_episode_step(extractor, initial, images, count)
            if seconds < best:
                best_count, best = count, seconds
            if seconds > previous or count == cap:  # past the best E
                break
            previous, count = seconds, min(2 * count, cap)
    if best > CALIBRATION_GAIN * alone:
        best_count, best = 1, alone
    if memo is not None and cap == min(by_memory, MAX_EPISODES_TOGETHER,
                                       CPU_EPISODES_PER_CORE * (os.cpu_count() or 1)):
        memo[key] = best_count  # measured without the run's remaining episodes as a limit
    if log is not None:
        log(f"cdfsl fine-tuned: {best_count} episode(s) together on this CPU (a step per "
            f"episode measured: {best * 1e3:.3g} ms, {alone * 1e3:.3g} ms one at a time)")
    return best_count


class EpisodeLog:
    """Per-episode accuracies of one fine-tuned setting, kept as JSON
    (``{"key", "settings", "accuracies": {episode: percent}}``) and rewritten atomically
    after every group of episodes, so an interrupted run resumes after the last group it
    finished."""

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
        self.add_many({episode: accuracy})

    def add_many(self, accuracies: dict[int, float]) -> None:
        from tinyvit_backbone.files import atomic_write_json

        self.accuracies.update({int(e): float(a) for e, a in accuracies.items()})
        atomic_write_json(self.path, {"key": self.key, "settings": self.settings,
                                      "accuracies": {str(e): a for e, a in sorted(self.accuracies.items())}})


def finetuned_accuracies(extractor: nn.Module, images: Callable[[np.ndarray], torch.Tensor],
                         episodes: Episodes, *, seed: int = 0, recipe: CdfslRecipe = CDFSL_RECIPE,
                         freeze_backbone: bool = False, amp_dtype: torch.dtype | None = None,
                         log: EpisodeLog | None = None, first: int = 0,
                         on_episode: Callable[[int, float, float], None] | None = None,
                         progress: bool | None = False, together: int | None = 1,
                         tracker: EpisodeProgress | None = None,
                         message: Callable[[str], None] | None = None,
                         chosen: dict | None = None, memo: dict | None = None) -> np.ndarray:
    """Query accuracy (%) of every episode, fine-tuning from ``extractor``'s current weights.

    ``images(indices)`` returns the normalised images of those dataset rows on the
    extractor's device; the next group's images are decoded in a background thread while
    this one trains. ``together`` episodes train at once (:func:`finetune_episodes`; 1: one
    at a time, :func:`finetune_episode`; None: :func:`episodes_together` picks). Episodes
    already in ``log`` are skipped (and their accuracy reused); the log is written after each
    group. ``on_episode(episode, accuracy, seconds)`` is called for each episode that ran,
    ``seconds`` being its share of its group's time. ``tracker`` (else a bar of its own when
    ``progress``) counts the steps done; ``chosen['episodes_together']`` receives the E used;
    ``memo`` carries a CPU's measured E from one call to the next (:func:`episodes_together`)."""
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
    steps = recipe.steps(episodes.support.shape[1])
    own = tracker is None
    if own:
        tracker = EpisodeProgress(E * steps, initial=(E - len(todo)) * steps, enabled=progress,
                                  desc=f"cdfsl {'frozen' if freeze_backbone else 'fine-tuned'} "
                                       f"{episodes.n_way}-way {episodes.k}-shot")
    try:
        if not todo:
            return accs
        first_support = images(episodes.support[todo[0]])
        dim = feature_dim(extractor, first_support)
        if freeze_backbone:
            together = 1  # frozen episodes train together on cached features (frozen_accuracies)
        elif together is None:
            together = episodes_together(extractor, first_support, images(episodes.query[todo[0]]),
                                         recipe.batch_size, len(todo), log=message, memo=memo)
        else:
            together = episodes_together(extractor, first_support, first_support,
                                         recipe.batch_size, len(todo), requested=together)
        if chosen is not None:
            chosen["episodes_together"] = together
        extractor.load_state_dict(initial)
        groups = [todo[g:g + together] for g in range(0, len(todo), together)]

        def load():
            for group in groups:
                support = torch.stack([images(episodes.support[i]) for i in group])
                query = torch.stack([images(episodes.query[i]) for i in group])
                yield group, support, query

        for group, support, query in prefetched(load(), depth=1):
            start = time.perf_counter()
            if len(group) == 1 and together == 1:
                got = [finetune_episode(extractor, initial, support[0], query[0], episodes.n_way,
                                        seed=seed, episode=first + group[0], recipe=recipe,
                                        freeze_backbone=freeze_backbone, amp_dtype=amp_dtype,
                                        dim=dim)]
            else:
                got = finetune_episodes(extractor, initial, support, query, episodes.n_way,
                                        seed=seed, episodes=[first + i for i in group],
                                        recipe=recipe, amp_dtype=amp_dtype, dim=dim).tolist()
            seconds = (time.perf_counter() - start) / len(group)
            for i, accuracy in zip(group, got):
                accs[i] = accuracy
            if log is not None:
                log.add_many({first + i: accs[i] for i in group})
            tracker.update(len(group), len(group) * steps)
            if on_episode is not None:
                for i in group:
                    on_episode(first + i, float(accs[i]), seconds)
    finally:
        if own:
            tracker.close()
        extractor.load_state_dict(initial)
        drop_attention_bias_caches(extractor)
    return accs


def _rate(per_hour: float) -> str:
    return f"{per_hour:,.0f}" if per_hour >= 10 else f"{per_hour:.3g}"


class EpisodeProgress:
    """One progress bar over the optimiser steps of a whole run (every dataset and K it was
    asked for), so its ETA is the run's; the postfix gives episodes per hour at this run's
    pace and the episodes done. Steps, not episodes, are counted: a 50-shot episode costs
    nine times a 5-shot one."""

    def __init__(self, total_steps: int, *, initial: int = 0, enabled: bool | None = True,
                 desc: str = "cdfsl fine-tuned", episodes_total: int | None = None,
                 episodes_done: int = 0):
        from tinyvit_backbone.progress import progress_bar

        self.bar = progress_bar(total=total_steps, initial=initial, unit="step", desc=desc,
                                enabled=enabled)
        self.total, self.n = total_steps, initial
        self.start = time.perf_counter()
        self.ran = 0
        self.done = episodes_done
        self.episodes_total = episodes_total

    def update(self, episodes: int, steps: int) -> None:
        self.ran += episodes
        self.done += episodes
        hours = (time.perf_counter() - self.start) / 3600.0
        postfix = {"episodes/h": _rate(self.ran / hours) if hours > 0 else "-"}
        if self.episodes_total:
            postfix["episodes"] = f"{self.done}/{self.episodes_total}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(steps)
        self.n += steps

    def close(self) -> None:
        self.bar.close()


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
    dataset: str | Sequence[str],
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
    together: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """cdfsl episodes of ``model`` on ``dataset`` (a name, or several: the few-shot half of
    Table 5 is four), one record per dataset and K (see the module docstring).

    Frozen: features come from the feature cache (cdfsl preprocessing). Fine-tuned: every
    dataset and K is sampled first (an impossible one fails before hours of training), then
    ``together`` episodes train at once (None: as many as memory and cores allow, see
    :func:`episodes_together`; 1: one at a time). One progress bar covers the whole run; the
    first group's pace gives the run's cost in the log. Finished episodes are kept under
    ``work_dir`` so a rerun resumes; each dataset's records are appended to ``output`` when it
    is done."""
    from .registry import dataset_spec
    from .settings import FeatureSettings, as_model_spec

    settings = settings or FeatureSettings()
    spec = as_model_spec(model)
    infos, splits = [], []
    for name in ([dataset] if isinstance(dataset, str) else list(dataset)):
        info = dataset_spec(name)
        chosen = split or info.episodes_split
        if chosen is None:
            raise ValueError(f"{info.name} defines no split for episodes; pass --split")
        if info.multilabel:
            raise ValueError(f"{info.name} is multi-label; episodes need one class per image")
        infos.append(info)
        splits.append(chosen)
    log = log or _stderr
    if freeze_backbone:
        records = []
        for info, chosen in zip(infos, splits):
            done = _run_frozen(spec, info, chosen, list(ks), n_way, n_query, n_episodes, seed,
                               recipe, settings)
            _append(output, done)
            records += done
        return records
    return _run_finetuned(spec, infos, splits, list(ks), n_way, n_query, n_episodes, seed, recipe,
                          settings, work_dir, together, output, log)


def _append(output, records: list[dict]) -> None:
    if output and records:
        from .results import append_jsonl
        append_jsonl(output, records)


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


def _run_frozen(spec, info, split, ks, n_way, n_query, n_episodes, seed, recipe,
                settings) -> list[dict]:
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


@dataclass
class _Setting:
    """One dataset's planned fine-tuning: its images, sampled episodes and logs per K."""

    info: object
    split: str
    size: int
    prep: object
    images: Callable[[np.ndarray], torch.Tensor]
    plans: dict
    logs: dict
    common: dict


def _plan_dataset(info, split, ks, n_way, n_query, n_episodes, seed, recipe, settings, spec,
                  device, amp_name, work_dir) -> _Setting:
    from tinyvit_backbone.fingerprint import dataset_fingerprint

    from .extract import input_config
    from .loaders import class_names, dataset_labels, load_split
    from .preprocessing import Preprocessed, eval_preprocessing
    from .results import CDFSL
    from .settings import run_dir

    data_config = input_config(spec, info, settings.image_size)
    size = int(data_config["input_size"][-1])
    prep = eval_preprocessing("cdfsl", data_config)
    raw = load_split(info, split, settings.data_root, size)
    labels = dataset_labels(raw)
    plans = {k: sample_episodes(labels, n_way, k, n_query, n_episodes, seed, class_names(raw))
             for k in ks}
    data = Preprocessed(raw, prep.transform)

    def images(rows) -> torch.Tensor:
        batch = torch.stack([data[int(i)][0] for i in rows])
        return prep.normalise(batch.to(device, non_blocking=True))

    # the key holds what decides an episode's accuracy; how many train together does not
    common = {"model": spec.key_parts(), "dataset": info.name, "split": split,
              "dataset_fingerprint": dataset_fingerprint(raw), "preprocessing": prep.description,
              "feature_layer": settings.feature_layer, "n_way": n_way, "n_query": n_query,
              "episodes": n_episodes, "seed": seed, "recipe": asdict(recipe), "amp": amp_name}
    logs = {}
    for k in ks:
        folder, key = run_dir(work_dir, CDFSL, info.name, {**common, "k": k})
        logs[k] = EpisodeLog(folder / "episodes.json", key, {**common, "k": k})
    return _Setting(info, split, size, prep, images, plans, logs, common)


def _run_finetuned(spec, infos, splits, ks, n_way, n_query, n_episodes, seed, recipe, settings,
                   work_dir, together, output, log) -> list[dict]:
    from .backbones import FeatureExtractor, build_network
    from .device import autocast_dtype, select_device

    device = select_device(settings.device)
    amp = autocast_dtype(device, settings.amp)
    amp_name = str(amp).replace("torch.", "") if amp else "fp32"
    # every dataset and K is sampled first, so an impossible one fails before hours of training
    plan = [_plan_dataset(info, split, ks, n_way, n_query, n_episodes, seed, recipe, settings,
                          spec, device, amp_name, work_dir) for info, split in zip(infos, splits)]
    extractor = FeatureExtractor(build_network(spec), settings.feature_layer).to(device)
    steps = {k: recipe.steps(n_way * k) for k in ks}
    total = sum(n_episodes * steps[k] for _ in plan for k in ks)
    done = {(s.info.name, k): len(s.logs[k].accuracies) for s in plan for k in ks}
    done_steps = sum(n * steps[k] for (_, k), n in done.items())
    names = ", ".join(s.info.name for s in plan)
    log(f"cdfsl fine-tuned: {names}; {n_way}-way, K = {list(ks)}, {n_episodes} episodes each; "
        f"per episode {', '.join(f'{steps[k]:,} (K={k})' for k in ks)} backbone steps of batch "
        f"{recipe.batch_size} on {device} ({amp_name}); the first group of episodes is timed "
        "to state the run's cost")
    tracker = EpisodeProgress(total, initial=done_steps, enabled=settings.progress,
                              desc="cdfsl fine-tuned", episodes_total=n_episodes * len(ks) * len(plan),
                              episodes_done=sum(done.values()))
    cost: dict = {}
    calibrated: dict = {}
    records = []
    try:
        for setting in plan:
            finished = []
            for k in ks:
                chosen: dict = {}

                def on_episode(episode, accuracy, seconds, k=k, chosen=chosen):
                    if cost:
                        return
                    per_step = seconds / steps[k]
                    run_s = per_step * (total - done_steps)
                    left_s = per_step * (tracker.total - tracker.n)
                    cost.update(first_group_s=seconds * chosen["episodes_together"],
                                episodes_together=chosen["episodes_together"],
                                seconds_per_episode=seconds, episodes_per_hour=3600.0 / seconds,
                                at_k=k, estimated_run_s=run_s, device=str(device),
                                extrapolated=True)
                    log(f"cdfsl fine-tuned: first group of {chosen['episodes_together']} "
                        f"episode(s) together at K={k}: {seconds:.3g} s per episode "
                        f"({_rate(3600.0 / seconds)} episodes/h); this run's "
                        f"{sum(n_episodes - n for n in done.values())} episodes take about "
                        f"{format_seconds(run_s)} on {device}, {format_seconds(left_s)} of it "
                        "left (extrapolated per step)")

                start = time.perf_counter()
                accs = finetuned_accuracies(extractor, setting.images, setting.plans[k], seed=seed,
                                            recipe=recipe, amp_dtype=amp, log=setting.logs[k],
                                            on_episode=on_episode, together=together,
                                            tracker=tracker, message=log, chosen=chosen,
                                            memo=calibrated)
                fit_s = time.perf_counter() - start
                sample = setting.images(setting.plans[k].support[0][:1])
                inputs = {"dataset": setting.info.name, "image_size": setting.size,
                          "feature_dim": feature_dim(extractor, sample),
                          "preprocessing": setting.prep.description, "cache_hit": None}
                finished.append(_record(
                    spec, settings, inputs, accs, k, n_way, n_query, seed, recipe, False,
                    setting.split, {"extract_s": 0.0, "fit_s": fit_s, "total_s": fit_s},
                    cost=dict(cost) or None, amp=amp_name, device=str(device),
                    episodes_together=chosen.get("episodes_together"),
                    work_dir=str(setting.logs[k].path.parent)))
            _append(output, finished)
            records += finished
    finally:
        tracker.close()
    return records
