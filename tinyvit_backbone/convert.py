"""Convert TinyViT checkpoints between layouts.

    tinyvit-convert tiny_vit_21m_22kto1k_distill tinyvit21m_timm.safetensors
    tinyvit-convert tiny_vit_21m_22kto1k_distill.pth tinyvit21m_mm.pth --to openmmlab
    tinyvit-convert timm/tiny_vit_5m_224.in1k tinyvit5m_mm.pth --to openmmlab

The source is any weights spec (:mod:`tinyvit_backbone.weights`): a registry name or URL
(downloaded once into torch.hub's cache), a ``timm/...`` hub tag, or a local file.

``--to timm`` (default) writes timm's names with the classifier kept, loadable by
``timm.create_model('tiny_vit_21m_224', pretrained=True,
pretrained_cfg_overlay=dict(file=OUT))``. ``--to openmmlab`` writes
``{'state_dict': {'backbone.' + name: tensor}, 'meta': ...}`` without the classifier, loadable by
mmengine's ``load_checkpoint`` into any detector/segmenter using this backbone. ``.safetensors``
outputs are written with safetensors, everything else with ``torch.save``. Writes go to a temp
file that is renamed at the end, so an interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from .checkpoint import (
    CLASSIFIER_PREFIXES,
    CheckpointError,
    is_official_layout,
    read_weights,
    to_timm_names,
)
from .cli import emit_json, error
from .files import atomic_torch_save, atomic_write_bytes


def convert(src: str, dst: str, to: str = "timm", progress: bool | None = None
            ) -> dict[str, torch.Tensor]:
    """Convert ``src`` (any spec, official / timm / OpenMMLab layout) to ``dst``; return what
    was written."""
    if to not in ("timm", "openmmlab"):
        raise ValueError(f"--to must be 'timm' or 'openmmlab', got {to!r}")
    log = logging.getLogger(__name__).info
    sd, weights = read_weights(src, progress=progress, log=log)
    layout = "official" if is_official_layout(sd) else "timm"
    sd = to_timm_names(sd, weights.describe(), log)
    if not any(k.startswith("stages.") for k in sd):
        raise CheckpointError(f"{src}: no TinyViT weights found (no 'layers.*' or 'stages.*' keys)")
    sd = {k: v.contiguous() for k, v in sd.items()}
    if to == "openmmlab":
        sd = {f"backbone.{k}": v for k, v in sd.items() if not k.startswith(CLASSIFIER_PREFIXES)}
        payload = dict(state_dict=sd, meta=dict(source=os.path.basename(weights.source),
                                                layout=layout, sha256=weights.sha256))
    else:
        payload = sd
    _atomic_save(payload, dst)
    return sd


def _atomic_save(payload, dst: str) -> None:
    if dst.endswith(".safetensors"):
        from safetensors.torch import save
        tensors = payload["state_dict"] if "state_dict" in payload else payload
        atomic_write_bytes(dst, save(tensors))
    else:
        atomic_torch_save(dst, payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tinyvit-convert", description=__doc__.split("\n")[0])
    parser.add_argument("src", help="weights to read: a registry name, an http(s) URL, a "
                                    "timm/... hub tag or a file (.pth / .safetensors, any layout)")
    parser.add_argument("dst", help="file to write (.safetensors or .pth)")
    parser.add_argument("--to", default="timm", choices=["timm", "openmmlab"],
                        help="timm: timm's names, classifier kept (timm.create_model loads it); "
                             "openmmlab: backbone.* names under state_dict, no classifier "
                             "(mmengine's load_checkpoint loads it into a detector / segmenter); "
                             "default %(default)s")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="download progress bar (default on)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        sd = convert(args.src, args.dst, args.to, progress=args.progress)
    except CheckpointError as err:
        return error(str(err))
    emit_json(dict(wrote=args.dst, tensors=len(sd), layout=args.to, source=args.src))
    return 0


if __name__ == "__main__":
    sys.exit(main())
