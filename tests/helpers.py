"""Data the tests share: an ImageFolder of real digit scans, one of coloured squares, a tiny
teacher, and a recorder of every byte range a store writer writes.

``python -m tests.helpers trace-writes LOG_DIR -- <distill arguments>`` runs the distillation
CLI (also under torchrun) with every ``pwrite`` into an epoch file logged to
``LOG_DIR/rank<r>.jsonl`` as ``{"file", "offset", "length"}`` lines.
"""
import json
import os
import signal
import sys
from pathlib import Path

import torch

from tinyvit_backbone.distill.datasets import open_dataset
from tinyvit_backbone.distill.teacher import create_timm_model


def write_digit_folder(root: Path, count: int) -> Path:
    """The first ``count`` digits of the train split as ``root/<label>/<index>.png``."""
    ds, _ = open_dataset("digits", "train", 32)
    for i in range(count):
        img, label = ds[i]
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        img.save(root / str(label) / f"{i:04d}.png")
    return root


COLOURS = {"c0": (200, 40, 40), "c1": (40, 200, 40), "c2": (40, 40, 200)}


def write_colour_folder(root: Path, splits=(("train", 6), ("test", 2)), classes=tuple(COLOURS),
                        size: int = 16, seed: int = 0) -> Path:
    """``root/<split>/<class>/<i>.bmp``: squares of the class's colour with a little seeded
    noise, which even a random network's features tell apart. BMP files of one size all have
    the same byte size, so an image can be swapped for another of the same size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for split, count in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                write_colour_image(root / split / name / f"{i}.bmp", COLOURS[name], size, rng)
    return root


def write_colour_image(path: Path, colour, size: int = 16, rng=None) -> None:
    import numpy as np
    from PIL import Image

    rng = rng if rng is not None else np.random.default_rng(0)
    pixels = np.clip(np.array(colour)[None, None] + rng.integers(-15, 16, (size, size, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def write_test_teacher(path: Path) -> Path:
    """A seeded timm ``test_resnet`` with 10 classes, saved as a state dict."""
    torch.manual_seed(0)
    torch.save(create_timm_model("test_resnet", 10).state_dict(), path)
    return path


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (torchrun starts its workers in
    sessions of their own, so killing torchrun's process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def epoch_files(store: Path) -> dict[str, bytes]:
    """The bytes of every epoch file of a store, by file name."""
    return {p.name: p.read_bytes() for p in sorted(Path(store).glob("epoch_*"))}


def trace_writes(log_dir: str, rank: int | None = None) -> None:
    """Log every byte range :class:`LogitStore` writes from this process (see the docstring)."""
    from tinyvit_backbone.distill.store import LogitStore

    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    os.makedirs(log_dir, exist_ok=True)
    log = os.path.join(log_dir, f"rank{rank}.jsonl")
    real = LogitStore._pwrite

    def traced(self, fd, data, offset):
        with open(log, "a") as f:
            f.write(json.dumps(dict(file=os.path.basename(os.readlink(f"/proc/self/fd/{fd}")),
                                    offset=offset, length=len(data))) + "\n")
        return real(self, fd, data, offset)

    LogitStore._pwrite = traced


def read_traces(log_dir: str) -> dict[int, list[dict]]:
    """Rank -> the byte ranges it wrote."""
    out = {}
    for name in sorted(os.listdir(log_dir)):
        rank = int(name.removeprefix("rank").removesuffix(".jsonl"))
        out[rank] = [json.loads(line) for line in open(os.path.join(log_dir, name))]
    return out


def blocks_written(traces: dict[int, list[dict]], block_bytes: int) -> dict[int, set]:
    """Rank -> the aligned (file, block) pairs its writes touched."""
    return {rank: {(w["file"], b) for w in writes
                   for b in range(w["offset"] // block_bytes,
                                  (w["offset"] + w["length"] - 1) // block_bytes + 1)}
            for rank, writes in traces.items()}


if __name__ == "__main__" and sys.argv[1:2] == ["trace-writes"]:
    sep = sys.argv.index("--")
    trace_writes(sys.argv[2])
    from tinyvit_backbone.distill.__main__ import main

    sys.exit(main(sys.argv[sep + 1:]))
