"""The model zoo: every official TinyViT checkpoint (and the Swin-T baseline's), as data.

The official files (microsoft/Cream's TinyViT model zoo) are ``{TINYVIT_BASE_URL}/{name}.pth``
in Cream's layout (``torch.load(f)['model']``); timm hosts the very same weights in its own
layout on the Hugging Face hub, ``timm/tiny_vit_{5m,11m,21m}_{224,384,512}.<tag>``. Each entry
records what a loader must know before fetching 80 MB: the architecture, the attention
windows it was trained with, the classifier size and the pretraining.

``TINYVIT_ZOO_MIRROR`` (an http(s) base URL) points every registry URL at a mirror that holds
the same files under the same names: an internal server or proxy cache, or a test's local
server. Hub tags follow huggingface_hub's own ``HF_ENDPOINT`` instead.

Nothing here touches the network or imports torch: :mod:`tinyvit_backbone.weights` resolves
and fetches, :mod:`tinyvit_backbone.checkpoint` loads.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

MIRROR_ENV = "TINYVIT_ZOO_MIRROR"
TINYVIT_BASE_URL = "https://github.com/wkcn/TinyViT-model-zoo/releases/download/checkpoints"
SWIN_BASE_URL = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0"
OFFICIAL_BASE_URLS = (TINYVIT_BASE_URL, SWIN_BASE_URL)

# timm's pretrained tags, used as the registry's pretraining vocabulary.
PRETRAINING = {
    "dist_in22k": "ImageNet-21k, fast distillation (CLIP-ViT-L/14 teacher); 21,841-class head",
    "dist_in22k_ft_in1k": "ImageNet-21k fast distillation, then fine-tuned on ImageNet-1k",
    "in1k": "ImageNet-1k only (supervised, from scratch)",
}
WINDOWS = {224: (7, 7, 14, 7), 384: (12, 12, 24, 12), 512: (16, 16, 32, 16)}


@dataclass(frozen=True)
class ZooEntry:
    """One released checkpoint.

    ``arch`` is a TinyViT variant ('5m' | '11m' | '21m', see
    :data:`tinyvit_backbone.backbone.ARCH_SETTINGS`) or 'swin-t'; ``window_sizes`` are the
    attention windows per stage it was trained with (resolution 224 -> 7, 7, 14, 7);
    ``in1k_top1`` is the published ImageNet-1k top-1 (%) of a 1000-class checkpoint.
    """

    name: str
    arch: str
    resolution: int
    num_classes: int
    pretraining: str
    hub_tag: str | None
    in1k_top1: float | None
    base_url: str = TINYVIT_BASE_URL
    family: str = "tinyvit"

    @property
    def window_sizes(self) -> tuple[int, ...]:
        return WINDOWS[self.resolution] if self.family == "tinyvit" else (7, 7, 7, 7)

    @property
    def filename(self) -> str:
        return f"{self.name}.pth"

    @property
    def official_url(self) -> str:
        return f"{self.base_url}/{self.filename}"

    @property
    def url(self) -> str:
        """Where it is fetched from: the mirror when ``TINYVIT_ZOO_MIRROR`` is set."""
        return mirrored(self.official_url)


def _tinyvit(size: str, resolution: int, pretraining: str, top1: float | None) -> ZooEntry:
    stem = {"dist_in22k": "22k_distill", "dist_in22k_ft_in1k": "22kto1k_distill",
            "in1k": "1k"}[pretraining]
    name = f"tiny_vit_{size}_{stem}" if resolution == 224 else \
        f"tiny_vit_{size}_22kto1k_{resolution}_distill"
    return ZooEntry(name=name, arch=size, resolution=resolution,
                    num_classes=21841 if pretraining == "dist_in22k" else 1000,
                    pretraining=pretraining, hub_tag=f"timm/tiny_vit_{size}_{resolution}.{pretraining}",
                    in1k_top1=top1)


# The 11 checkpoints of the official model zoo (top-1: Wu et al. 2022, Table 1 / Cream README).
ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    _tinyvit("5m", 224, "dist_in22k", None),
    _tinyvit("5m", 224, "dist_in22k_ft_in1k", 80.7),
    _tinyvit("5m", 224, "in1k", 79.1),
    _tinyvit("11m", 224, "dist_in22k", None),
    _tinyvit("11m", 224, "dist_in22k_ft_in1k", 83.2),
    _tinyvit("11m", 224, "in1k", 81.5),
    _tinyvit("21m", 224, "dist_in22k", None),
    _tinyvit("21m", 224, "dist_in22k_ft_in1k", 84.8),
    _tinyvit("21m", 224, "in1k", 83.1),
    _tinyvit("21m", 384, "dist_in22k_ft_in1k", 86.2),
    _tinyvit("21m", 512, "dist_in22k_ft_in1k", 86.5),
]}

# Backbones of the baselines the configs compare with (Swin-T: Liu et al. 2021, IN-1k 81.2).
BASELINES: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry(name="swin_tiny_patch4_window7_224", arch="swin-t", resolution=224,
             num_classes=1000, pretraining="in1k", hub_tag=None, in1k_top1=81.2,
             base_url=SWIN_BASE_URL, family="swin"),
]}

_ALL = {**ZOO, **BASELINES}


def mirror_base() -> str | None:
    """The mirror base URL from ``TINYVIT_ZOO_MIRROR`` (no trailing slash), or None."""
    value = os.environ.get(MIRROR_ENV, "").strip().rstrip("/")
    if value and not value.startswith(("http://", "https://")):
        raise ValueError(f"{MIRROR_ENV}={value!r} is not an http(s) URL: set it to the base URL "
                         "that holds the checkpoint files, e.g. https://mirror.example/tinyvit")
    return value or None


def mirrored(url: str) -> str:
    """``url`` with an official base replaced by the mirror's (other URLs unchanged)."""
    base = mirror_base()
    if base:
        for official in OFFICIAL_BASE_URLS:
            if url.startswith(official + "/"):
                return base + url[len(official):]
    return url


def get(name: str) -> ZooEntry | None:
    """The entry named ``name`` (with or without ``.pth``), or None."""
    return _ALL.get(name.removesuffix(".pth"))


def by_url(url: str) -> ZooEntry | None:
    """The entry an official or mirrored URL points at, or None."""
    for entry in _ALL.values():
        if url in (entry.official_url, entry.url):
            return entry
    return None


def by_hub_tag(tag: str) -> ZooEntry | None:
    """The entry of a timm hub tag (``timm/tiny_vit_21m_224.in1k``, ``hf-hub:`` allowed)."""
    tag = tag.removeprefix("hf-hub:")
    return next((e for e in _ALL.values() if e.hub_tag == tag), None)


def names() -> list[str]:
    return list(_ALL)


def entries() -> list[ZooEntry]:
    return list(_ALL.values())


def suggest(arch: str, like: ZooEntry | None = None) -> ZooEntry | None:
    """The official checkpoint of ``arch`` with the same pretraining and resolution as ``like``
    (for error messages), else its distilled 224 one."""
    for entry in ZOO.values():
        if entry.arch == arch and like is not None and (entry.pretraining, entry.resolution) == \
                (like.pretraining, like.resolution):
            return entry
    return ZOO.get(f"tiny_vit_{arch}_22kto1k_distill")
