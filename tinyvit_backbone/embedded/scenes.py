"""Generated scenes for detection, instance and semantic segmentation (no download).

Each image shows a few non-overlapping filled shapes (the categories) in random colours, sizes
and rotations on a textured background. The same polygons give the COCO instance masks, the
boxes and the semantic label maps, so every annotation is exact.

Layout written under ``root`` (the standard mmdet / mmseg layouts)::

    train/000000.png ...                 images (RGB PNG)
    val/000000.png ...
    annotations/instances_train.json     COCO: boxes (xywh), polygon masks, areas, iscrowd=0
    annotations/instances_val.json
    ann_dir/train/000000.png ...         semantic labels (uint8: 0 = background, i = class i)
    ann_dir/val/000000.png ...
    scenes.json                          generator settings; a rerun with the same settings
                                         leaves the files alone

Generation is deterministic (NumPy generator seeded per image) and takes about a second for
the default 64 + 16 images of 128 x 128 pixels.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ("circle", "square", "triangle", "cross")
SEG_CLASSES = ("background",) + CATEGORIES
# Fixed colours per class for segmentation visualisation (mmseg's dataset `palette`).
SEG_PALETTE = [[0, 0, 0], [220, 20, 60], [0, 128, 255], [60, 180, 75], [255, 180, 0]]
FORMAT_VERSION = 1
DEFAULT_ROOT = "data/embedded/scenes"


@dataclass(frozen=True)
class SceneSettings:
    num_train: int = 64
    num_val: int = 16
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 4
    seed: int = 0
    version: int = FORMAT_VERSION


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius ``r`` centred at (cx, cy), rotated by ``angle``."""
    if kind == "circle":
        unit = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    elif kind == "square":
        unit = [(math.cos(t), math.sin(t)) for t in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif kind == "triangle":
        unit = [(math.cos(t), math.sin(t)) for t in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif kind == "cross":
        a, b = 1.0, 0.35
        unit = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b),
                (-a, b), (-a, -b), (-b, -b)]
    else:
        raise ValueError(f"unknown shape {kind!r}")
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in unit]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(60, 200, size=3)
    gradient = np.linspace(-30, 30, size)[None, :, None] * rng.uniform(-1, 1, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    return np.clip(base + gradient + noise, 0, 255).astype(np.uint8)


def render_scene(index: int, settings: SceneSettings):
    """Return (RGB image array, semantic label array, list of (category_id, polygon))."""
    rng = np.random.default_rng([settings.seed, index])
    size = settings.image_size
    image = Image.fromarray(_background(rng, size))
    label = Image.new("L", (size, size), 0)
    draw, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    placed: list[tuple[float, float, float]] = []
    objects = []
    wanted = int(rng.integers(settings.min_objects, settings.max_objects + 1))
    for _ in range(wanted * 20):
        if len(objects) == wanted:
            break
        r = float(rng.uniform(0.08, 0.2) * size)
        cx, cy = (float(v) for v in rng.uniform(r, size - r, size=2))
        if any(math.hypot(cx - x, cy - y) < r + pr + 2 for x, y, pr in placed):
            continue  # keep objects apart so every mask is exactly its polygon
        category = int(rng.integers(len(CATEGORIES)))
        polygon = _shape_polygon(CATEGORIES[category], cx, cy, r, float(rng.uniform(0, math.pi)))
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.polygon(polygon, fill=colour)
        draw_label.polygon(polygon, fill=category + 1)
        placed.append((cx, cy, r))
        objects.append((category + 1, polygon))
    return np.asarray(image), np.asarray(label), objects


def _coco_annotation(ann_id: int, image_id: int, category_id: int, polygon, size: int) -> dict:
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
    x1, y1 = min(float(size), max(xs)), min(float(size), max(ys))
    area = _polygon_area(polygon)
    return dict(id=ann_id, image_id=image_id, category_id=category_id, iscrowd=0,
                bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                area=round(area, 2),
                segmentation=[[round(v, 2) for p in polygon for v in p]])


def _polygon_area(polygon) -> float:
    x = np.array([p[0] for p in polygon])
    y = np.array([p[1] for p in polygon])
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _write_split(tmp_root: str, split: str, start: int, count: int, settings: SceneSettings) -> None:
    os.makedirs(os.path.join(tmp_root, split))
    os.makedirs(os.path.join(tmp_root, "ann_dir", split))
    images, annotations = [], []
    for image_id in range(count):
        image, label, objects = render_scene(start + image_id, settings)
        name = f"{image_id:06d}.png"
        Image.fromarray(image).save(os.path.join(tmp_root, split, name))
        Image.fromarray(label).save(os.path.join(tmp_root, "ann_dir", split, name))
        images.append(dict(id=image_id, file_name=name, height=settings.image_size,
                           width=settings.image_size))
        for category_id, polygon in objects:
            annotations.append(_coco_annotation(len(annotations) + 1, image_id, category_id,
                                                polygon, settings.image_size))
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n) for i, n in enumerate(CATEGORIES)])
    with open(os.path.join(tmp_root, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump(coco, f)


def _same_settings(stamp: str, settings: SceneSettings) -> bool:
    try:
        with open(stamp) as f:
            return json.load(f) == asdict(settings)
    except (OSError, ValueError):
        return False


def generate(root: str, settings: SceneSettings = SceneSettings(), force: bool = False) -> bool:
    """Write the dataset to ``root``; returns False when an identical one is already there.

    The files are written into a temporary sibling folder that replaces ``root`` at the end,
    so an interrupted run never leaves a half-written dataset behind.
    """
    if settings.num_train < 1 or settings.num_val < 1:
        raise ValueError("scenes: num_train and num_val must be at least 1")
    if not 1 <= settings.min_objects <= settings.max_objects:
        raise ValueError("scenes: need 1 <= min_objects <= max_objects")
    if settings.image_size < 32:
        raise ValueError(f"scenes: image_size must be >= 32 pixels, got {settings.image_size}")
    stamp = os.path.join(root, "scenes.json")
    if not force and _same_settings(stamp, settings):
        return False
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp_root = tempfile.mkdtemp(dir=parent, prefix=".scenes-tmp-")
    try:
        os.makedirs(os.path.join(tmp_root, "annotations"))
        _write_split(tmp_root, "train", 0, settings.num_train, settings)
        _write_split(tmp_root, "val", settings.num_train, settings.num_val, settings)
        with open(os.path.join(tmp_root, "scenes.json"), "w") as f:
            json.dump(asdict(settings), f, indent=1)
        if os.path.isdir(root):
            shutil.rmtree(root)
        try:
            os.replace(tmp_root, root)
        except OSError:
            # another process (e.g. a second torchrun rank) finished the same set first
            if not _same_settings(stamp, settings):
                raise
            shutil.rmtree(tmp_root, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    return True


def ensure_scenes(data_root: str = DEFAULT_ROOT) -> str:
    """Generate the default scenes at ``data_root`` unless a set (of any settings) is there."""
    if not os.path.isfile(os.path.join(data_root, "scenes.json")):
        generate(data_root, SceneSettings())
    return data_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinyvit_backbone.embedded.scenes",
        description="Generate the embedded detection / segmentation scenes (COCO + mmseg layout).")
    parser.add_argument("--out", default=DEFAULT_ROOT, help="output folder (default %(default)s)")
    defaults = SceneSettings()
    parser.add_argument("--num-train", type=int, default=defaults.num_train,
                        help="images of the train split (default %(default)s)")
    parser.add_argument("--num-val", type=int, default=defaults.num_val,
                        help="images of the val split (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help="side of the square images in pixels (default %(default)s)")
    parser.add_argument("--max-objects", type=int, default=defaults.max_objects,
                        help=f"most shapes per image, at least {defaults.min_objects} "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the shapes, colours and placements (default %(default)s)")
    parser.add_argument("--force", action="store_true", help="rewrite even if up to date")
    args = parser.parse_args(argv)
    settings = SceneSettings(num_train=args.num_train, num_val=args.num_val,
                             image_size=args.image_size, max_objects=args.max_objects,
                             seed=args.seed)
    try:
        wrote = generate(args.out, settings, force=args.force)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'wrote' if wrote else 'up to date:'} {args.out} ({settings.num_train} train, "
          f"{settings.num_val} val images of {settings.image_size}px, {len(CATEGORIES)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
