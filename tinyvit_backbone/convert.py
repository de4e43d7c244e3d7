"""Convert TinyViT checkpoints between layouts.

    tinyvit-convert tiny_vit_21m_22kto1k_distill.pth tinyvit21m_timm.safetensors
    tinyvit-convert tiny_vit_21m_22kto1k_distill.pth tinyvit21m_mm.pth --to openmmlab

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
    load_checkpoint_file,
    official_to_timm,
    unwrap_state_dict,
)
from .files import atomic_torch_save, atomic_write_bytes


def convert(src: str, dst: str, to: str = "timm") -> dict[str, torch.Tensor]:
    """Convert ``src`` (official, timm or OpenMMLab layout) to ``dst``; return what was written."""
    if to not in ("timm", "openmmlab"):
        raise ValueError(f"--to must be 'timm' or 'openmmlab', got {to!r}")
    sd = unwrap_state_dict(load_checkpoint_file(src), src)
    layout = "official" if is_official_layout(sd) else "timm"
    if layout == "official":
        sd = official_to_timm(sd)
    if not any(k.startswith("stages.") for k in sd):
        raise CheckpointError(f"{src}: no TinyViT weights found (no 'layers.*' or 'stages.*' keys)")
    sd = {k: v.contiguous() for k, v in sd.items()}
    if to == "openmmlab":
        sd = {f"backbone.{k}": v for k, v in sd.items() if not k.startswith(CLASSIFIER_PREFIXES)}
        payload = dict(state_dict=sd, meta=dict(source=os.path.basename(src), layout=layout))
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
    parser.add_argument("src", help="checkpoint to read (.pth / .safetensors, any layout)")
    parser.add_argument("dst", help="file to write (.safetensors or .pth)")
    parser.add_argument("--to", default="timm", choices=["timm", "openmmlab"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        sd = convert(args.src, args.dst, args.to)
    except CheckpointError as err:
        print(f"tinyvit-convert: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: {len(sd)} tensors in {args.to} layout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
