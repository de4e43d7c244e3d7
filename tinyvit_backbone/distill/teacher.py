"""The teacher: any timm model, by name, with weights from a file, registry name, URL or hub tag.

The teacher may expect other input statistics than the data pipeline produces (e.g. CLIP's
mean / std while the student uses ImageNet's): :class:`Teacher` re-normalises its input, so the
teacher and the student always receive the very same augmented pixels.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..files import sha256_file
from .errors import DistillError


class Teacher(nn.Module):
    """A frozen classifier in eval mode that maps images normalised with ``data_mean/std`` to
    logits, re-normalising them to ``mean/std`` first."""

    def __init__(self, model: nn.Module, data_mean: Sequence[float], data_std: Sequence[float],
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        dm, ds = torch.tensor(data_mean).view(1, -1, 1, 1), torch.tensor(data_std).view(1, -1, 1, 1)
        tm, ts = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        # x_teacher = (x * ds + dm - tm) / ts  =  x * scale + shift
        self.register_buffer("scale", ds / ts, persistent=False)
        self.register_buffer("shift", (dm - tm) / ts, persistent=False)
        self.identity = bool(torch.equal(dm, tm) and torch.equal(ds, ts))

    def train(self, mode: bool = True) -> Teacher:
        # Always eval: batch statistics / dropout would make outputs depend on the batch.
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.identity:
            x = x * self.scale + self.shift
        return self.model(x)


def parse_model_kwargs(text: str | dict | None) -> dict:
    """``--teacher-kwargs`` JSON text (e.g. '{"img_size": 32}') -> dict."""
    if text is None or isinstance(text, dict):
        return dict(text or {})
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DistillError(f"--teacher-kwargs must be a JSON object such as "
                           f"'{{\"img_size\": 32}}', got {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise DistillError(f"--teacher-kwargs must be a JSON object, got {text!r}")
    return value


def create_timm_model(name: str, num_classes: int, kwargs: dict | None = None) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=..., **kwargs)`` with clear errors."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise DistillError(f"unknown timm model {name!r}" + (f"; similar: {close}" if close else ""))
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **(kwargs or {}))
    except TypeError as err:
        raise DistillError(f"timm model {name!r} rejects --teacher-kwargs {kwargs}: {err}") from None


def load_teacher(name: str, checkpoint: str, num_classes: int, *, model_kwargs: dict | None = None,
                 data_mean: Sequence[float], data_std: Sequence[float],
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 expected_sha256: str | None = None) -> tuple[Teacher, dict]:
    """Build timm model ``name``, load ``checkpoint`` strictly, wrap it as a :class:`Teacher`.

    Returns the teacher and its manifest entry (model, kwargs, checkpoint path and SHA-256,
    mean / std, number of classes). ``expected_sha256`` refuses a checkpoint whose bytes changed.
    """
    from ..checkpoint import CheckpointError, load_pretrained
    from ..weights import WeightsNotFoundError, resolve_weights

    try:  # a registry name, URL or hub tag becomes its verified file in the caches
        weights = resolve_weights(checkpoint)
    except WeightsNotFoundError:
        raise DistillError(f"teacher checkpoint {checkpoint!r} not found: pass the teacher's "
                           "weights file (.pth / .pt / .safetensors), a registry name, an "
                           "http(s) URL or a timm/... hub tag") from None
    except CheckpointError as err:
        raise DistillError(f"teacher checkpoint: {err}") from None
    checkpoint = weights.path
    digest = weights.sha256 or sha256_file(checkpoint)
    if expected_sha256 is not None and digest != expected_sha256:
        raise DistillError(f"teacher checkpoint {checkpoint!r} has SHA-256 {digest[:16]}..., the "
                           f"store was written with {expected_sha256[:16]}...: pass the checkpoint "
                           "the store was written with")
    model = create_timm_model(name, num_classes, model_kwargs)
    try:
        load_pretrained(model, weights, classifier="strict")
    except CheckpointError as err:
        first = str(err).strip().splitlines()[0][:300]
        raise DistillError(f"teacher checkpoint {checkpoint!r} does not fit timm model {name!r} "
                           f"with {num_classes} classes ({first}); pass the architecture and "
                           "--teacher-kwargs it was trained with, and the matching --num-classes"
                           ) from None
    mean = tuple(mean) if mean is not None else tuple(data_mean)
    std = tuple(std) if std is not None else tuple(data_std)
    info = dict(model=name, model_kwargs=dict(model_kwargs or {}), checkpoint=os.path.abspath(checkpoint),
                checkpoint_sha256=digest, num_classes=num_classes, mean=list(mean), std=list(std))
    return Teacher(model, data_mean, data_std, mean, std), info


__all__ = ["Teacher", "create_timm_model", "load_teacher", "parse_model_kwargs"]
