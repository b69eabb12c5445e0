"""Procedurally generated scenes with known object boxes.

Used to train the embedded demo CLIP (``scripts/train_demo_clip.py``), to measure its quality
(``scripts/demo_quality.py``), by the tests and by the evaluation code.

A scene is an RGB image of varied size and aspect ratio: a colour-gradient background with low-frequency
texture, pixel noise and thin clutter lines, and 1-5 non-overlapping objects. Each object is a distinct
(colour, shape) pair, drawn with a random size (about 15-45% of the shorter side), position, rotation and a
slight colour jitter. Boxes are tight to the drawn masks: ``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive.

Everything is deterministic: scene ``i`` of seed ``s`` is ``make_scene(s, i)``, whatever else was generated.

Command line::

    python -m handler.scenes export --out DIR --n 200 --seed 123   # DIR/images/*.png + DIR/annotations.json (COCO)
    python -m handler.scenes grid --out grid.png --n 12 --seed 7     # a sample grid with the boxes drawn
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 135, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

#: the 30 (colour, shape) pairs, in category order (category id = index + 1)
PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)
#: the caption / prompt of each pair, same order as PAIRS
CAPTIONS: tuple[str, ...] = tuple(f"a {c} {s}" for c, s in PAIRS)

MIN_SIDE, MAX_SIDE = 160, 400  # pixel range of the shorter / longer side
MIN_FRAC, MAX_FRAC = 0.15, 0.45  # object size as a fraction of the shorter side


def caption(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def pair_index(colour: str, shape: str) -> int:
    return COLOUR_NAMES.index(colour) * len(SHAPES) + SHAPES.index(shape)


@dataclass
class SceneObject:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), tight to the mask
    area: int  # mask pixels

    @property
    def label(self) -> str:
        return caption(self.colour, self.shape)

    @property
    def index(self) -> int:
        """Index of the pair in PAIRS / CAPTIONS (COCO category id - 1)."""
        return pair_index(self.colour, self.shape)


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]
    seed: int = 0
    index: int = 0
    mask: np.ndarray | None = field(default=None, repr=False)  # (H, W) uint8: 0 background, k = objects[k-1]

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def labels(self) -> list[str]:
        return [o.label for o in self.objects]

    def object_named(self, prompt: str) -> SceneObject | None:
        for o in self.objects:
            if o.label == prompt:
                return o
        return None


# --------------------------------------------------------------------------------------------------------------------
# drawing


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Polygon of a shape of circumradius r centred at (cx, cy), rotated by angle (radians)."""
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
    elif shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = 1.0 if k % 2 == 0 else 0.45
            pts.append((rr * math.cos(a), rr * math.sin(a)))
    elif shape == "cross":
        t = 0.34  # half arm width relative to the half length
        h = 1.0 / math.sqrt(1 + t * t)  # so that the corners lie on the unit circle
        t *= h
        pts = [(t, h), (-t, h), (-t, t), (-h, t), (-h, -t), (-t, -t), (-t, -h), (t, -h), (t, -t), (h, -t), (h, t), (t, t)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], (h, w), from a coarse random grid upsampled bilinearly."""
    gh, gw = max(2, cells * h // max(h, w) + 1), max(2, cells * w // max(h, w) + 1)
    grid = rng.uniform(-1, 1, size=(gh, gw)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(h, w, 3) float32 background: two-colour gradient, texture, noise."""
    grey = rng.uniform(60, 200)
    c0 = grey + rng.uniform(-70, 70, size=3)
    c1 = grey + rng.uniform(-70, 70, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    proj = xs * math.cos(angle) + ys * math.sin(angle)
    proj = (proj - proj.min()) / max(1e-6, float(proj.max() - proj.min()))
    bg = c0[None, None, :] * (1 - proj[..., None]) + c1[None, None, :] * proj[..., None]
    tex_amp = rng.uniform(5, 30)
    bg += tex_amp * _smooth_noise(rng, h, w, int(rng.integers(3, 12)))[..., None]
    # a little per-channel texture too
    bg += rng.uniform(0, 12) * _smooth_noise(rng, h, w, int(rng.integers(8, 24)))[..., None] * rng.uniform(-1, 1, 3)
    bg += rng.normal(0, rng.uniform(2, 12), size=(h, w, 1))
    return bg


def make_scene(seed: int, index: int = 0, n_objects: int | None = None, size: tuple[int, int] | None = None) -> Scene:
    """Scene number ``index`` of the stream ``seed`` (deterministic).

    n_objects: 1-5 (random when None); size: (width, height) (random when None).
    """
    rng = np.random.default_rng([int(seed), int(index), 0x5CE9E])
    if size is None:
        short = int(rng.integers(MIN_SIDE, 321))
        aspect = float(math.exp(rng.uniform(math.log(0.55), math.log(1.8))))  # width / height
        if aspect >= 1:
            w, h = min(MAX_SIDE, round(short * aspect)), short
        else:
            w, h = short, min(MAX_SIDE, round(short / aspect))
    else:
        w, h = size
    n = int(rng.integers(1, 6)) if n_objects is None else int(n_objects)
    if not 1 <= n <= 5:
        raise ValueError("n_objects must be within 1..5")

    bg = _background(rng, w, h)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)

    # thin clutter lines (drawn under the objects)
    for _ in range(int(rng.integers(2, 9))):
        col = tuple(int(v) for v in rng.uniform(0, 255, 3))
        if rng.random() < 0.4:  # sometimes in an object colour, as a distractor
            base = COLOURS[COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]]
            col = tuple(int(np.clip(v + rng.normal(0, 15), 0, 255)) for v in base)
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(int(rng.integers(2, 4)))]
        draw.line(pts, fill=col, width=int(rng.integers(1, 3)))

    # distinct (colour, shape) pairs
    chosen = rng.choice(len(PAIRS), size=n, replace=False)
    short_side = min(w, h)
    placed: list[tuple[float, float, float]] = []  # cx, cy, r
    specs = []
    for pi in chosen:
        colour, shape = PAIRS[int(pi)]
        # larger objects are harder to place when there are many: shrink the upper bound with n
        hi = MAX_FRAC - (n - 1) * 0.045
        for attempt in range(200):
            frac = rng.uniform(MIN_FRAC, max(MIN_FRAC + 0.02, hi - 0.001 * attempt))
            r = frac * short_side / 2
            cx = rng.uniform(r + 1, w - r - 1)
            cy = rng.uniform(r + 1, h - r - 1)
            if all(math.hypot(cx - px, cy - py) > r + pr + 3 for px, py, pr in placed):
                break
        else:  # pragma: no cover - practically unreachable with the ranges above
            continue
        placed.append((cx, cy, r))
        specs.append((colour, shape, cx, cy, r, float(rng.uniform(0, 2 * math.pi)), rng.normal(0, 12, 3)))

    mask_img = Image.new("L", (w, h), 0)
    mdraw = ImageDraw.Draw(mask_img)
    for k, (colour, shape, cx, cy, r, angle, jitter) in enumerate(specs, start=1):
        col = tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(COLOURS[colour], jitter, strict=True))
        if shape == "circle":
            bbox = [cx - r, cy - r, cx + r, cy + r]
            draw.ellipse(bbox, fill=col)
            mdraw.ellipse(bbox, fill=k)
        else:
            poly = _shape_polygon(shape, cx, cy, r, angle)
            draw.polygon(poly, fill=col)
            mdraw.polygon(poly, fill=k)

    mask = np.asarray(mask_img, dtype=np.uint8)
    objects = []
    for k, (colour, shape, *_rest) in enumerate(specs, start=1):
        ys, xs = np.nonzero(mask == k)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(SceneObject(colour, shape, box, int(len(xs))))
    return Scene(img, objects, seed=int(seed), index=int(index), mask=mask)


def make_scenes(n: int, seed: int, start: int = 0, n_objects: int | None = None) -> list[Scene]:
    return [make_scene(seed, i, n_objects=n_objects) for i in range(start, start + n)]


# --------------------------------------------------------------------------------------------------------------------
# export


def coco_categories() -> list[dict]:
    return [
        {"id": i + 1, "name": cap, "supercategory": shape, "colour": colour, "shape": shape}
        for i, ((colour, shape), cap) in enumerate(zip(PAIRS, CAPTIONS, strict=True))
    ]


def to_coco(scenes: list[Scene], file_names: list[str]) -> dict:
    images, annotations = [], []
    ann_id = 1
    for img_id, (sc, fn) in enumerate(zip(scenes, file_names, strict=True), start=1):
        w, h = sc.size
        images.append({"id": img_id, "file_name": fn, "width": w, "height": h, "seed": sc.seed, "index": sc.index})
        for o in sc.objects:
            x0, y0, x1, y1 = o.box
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": o.index + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": o.area,
                    "iscrowd": 0,
                }
            )
            ann_id += 1
    return {
        "info": {"description": "gScoreCAM Serve generated scenes (handler/scenes.py)", "version": "1.0"},
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }


def export(out: str, n: int, seed: int) -> str:
    """Write out/images/*.png and out/annotations.json (COCO instances). Returns the annotation path."""
    img_dir = os.path.join(out, "images")
    os.makedirs(img_dir, exist_ok=True)
    scenes, names = [], []
    for i in range(n):
        sc = make_scene(seed, i)
        name = f"scene_{seed}_{i:05d}.png"
        sc.image.save(os.path.join(img_dir, name))
        scenes.append(sc)
        names.append(f"images/{name}")
    path = os.path.join(out, "annotations.json")
    with open(path, "w") as f:
        json.dump(to_coco(scenes, names), f)
    return path


def sample_grid(scenes: list[Scene], cols: int = 4, cell: int = 224, boxes: bool = True) -> Image.Image:
    """A grid of scenes (aspect ratio kept, letterboxed) with their boxes and labels drawn."""
    rows = (len(scenes) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    for i, sc in enumerate(scenes):
        w, h = sc.size
        s = (cell - 4) / max(w, h)
        im = sc.image.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
        if boxes:
            d = ImageDraw.Draw(im)
            for o in sc.objects:
                x0, y0, x1, y1 = (v * s for v in o.box)
                d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 255), width=1)
                d.text((x0 + 1, max(0, y0 - 11)), o.label[2:], fill=(255, 255, 255))
        ox = (i % cols) * cell + (cell - im.width) // 2
        oy = (i // cols) * cell + (cell - im.height) // 2
        grid.paste(im, (ox, oy))
    return grid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m handler.scenes", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="export a generated set in COCO instances format")
    e.add_argument("--out", required=True)
    e.add_argument("--n", type=int, default=200)
    e.add_argument("--seed", type=int, default=123)
    g = sub.add_parser("grid", help="write a sample grid PNG")
    g.add_argument("--out", required=True)
    g.add_argument("--n", type=int, default=12)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--cols", type=int, default=4)
    a = p.parse_args(argv)
    if a.cmd == "export":
        path = export(a.out, a.n, a.seed)
        print(f"wrote {a.n} scenes to {a.out} ({path})")
    else:
        sample_grid(make_scenes(a.n, a.seed), cols=a.cols).save(a.out, optimize=True)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
