"""Synthetic scenes written as a real COCO instances file.

Why: COCO cannot be downloaded on our machines and CI, yet every chapter must run end to end on
real data structures. The generator draws several shape classes with colours, on textured
backgrounds, with distractors of other classes, objects from small to large at any position, and
images of varied aspect ratio so that LLaVA's padding and InternVL's tiling are both exercised.
It writes ``annotations.json`` (COCO instances with polygon/RLE segmentation) and ``images/``;
the very same :func:`vlmloc.data.load_coco` reads it as it reads COCO.

Command line::

    python -m vlmloc.synthetic --out DIR --n N --seed S
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

#: Shape classes; the category names double as the words the toy models answer with.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart")

#: Object colours (saturated, so objects stand out from the muted textured background).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "orange": (250, 140, 20),
    "purple": (160, 60, 200),
    "white": (245, 245, 245),
    "cyan": (40, 220, 230),
}

#: Image sizes (width, height) in pixels: square, landscape and portrait.
SIZES: tuple[tuple[int, int], ...] = (
    (224, 224),
    (256, 192),
    (192, 256),
    (288, 160),
    (160, 288),
    (320, 160),
    (160, 320),
    (240, 200),
    (200, 240),
    (256, 256),
)

#: Seeds of the embedded sets. The toys are trained on ``TRAIN_SEED`` scenes only; the book and
#: the held-out quality bar use ``EVAL_SEED``, never seen in training.
TRAIN_SEED = 1
EVAL_SEED = 20260

#: Size of an image's first object and of its distractors: uniform in these ranges, as a fraction
#: of the image's short side. Every embedded set and the toys' training use these; a set drawn with
#: other ranges (chapter 3 extends them down to get small objects) is cached under its own name.
FIRST_SIZE: tuple[float, float] = (0.12, 0.75)
DISTRACTOR_SIZE: tuple[float, float] = (0.1, 0.35)


@dataclass(frozen=True)
class ShapeSpec:
    """One object to draw: class, colour, centre and size in pixels, rotation in degrees."""

    category: str
    colour: str
    cx: float
    cy: float
    size: float
    angle: float


def _rotate(points: np.ndarray, angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    a = math.radians(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    p = points @ rot.T + np.array([cx, cy])
    return [tuple(map(float, q)) for q in p]


def _star(n: int = 5, inner: float = 0.45) -> np.ndarray:
    pts = []
    for i in range(2 * n):
        r = 1.0 if i % 2 == 0 else inner
        t = math.pi * i / n - math.pi / 2
        pts.append((r * math.cos(t), r * math.sin(t)))
    return np.array(pts)


def _heart(k: int = 40) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, k, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], 1)
    return pts / 17.0


_UNIT_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "triangle": np.array([(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)]),
    "star": _star(),
    "cross": np.array(
        [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1)]
        + [(-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)]
    ),
    "diamond": np.array([(0.0, -1.0), (0.65, 0.0), (0.0, 1.0), (-0.65, 0.0)]),
    "heart": _heart(),
}


def draw_mask(spec: ShapeSpec, width: int, height: int) -> np.ndarray:
    """Return the boolean mask (H, W) of one shape."""
    canvas = Image.new("L", (width, height), 0)
    d = ImageDraw.Draw(canvas)
    r = spec.size / 2
    if spec.category in ("circle", "ring"):
        d.ellipse((spec.cx - r, spec.cy - r, spec.cx + r, spec.cy + r), fill=255)
        if spec.category == "ring":
            ri = r * 0.55
            d.ellipse((spec.cx - ri, spec.cy - ri, spec.cx + ri, spec.cy + ri), fill=0)
    else:
        d.polygon(_rotate(_UNIT_POLYGONS[spec.category] * r, spec.angle, spec.cx, spec.cy), fill=255)
    return np.asarray(canvas) > 127


def textured_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A muted, textured background: smooth noise plus faint stripes or a checkerboard."""
    base = rng.uniform(60, 150, size=3)
    small = rng.normal(0, 1, size=(max(2, height // 24), max(2, width // 24), 3))
    noise = np.asarray(
        Image.fromarray(((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8)).resize(
            (width, height), Image.BICUBIC
        ),
        dtype=np.float32,
    )
    img = base[None, None, :] * 0.75 + noise * 0.18
    yy, xx = np.mgrid[0:height, 0:width]
    kind = rng.integers(3)
    period = rng.uniform(8, 28)
    if kind == 0:
        pattern = np.sin((xx * math.cos(rng.uniform(0, 3.14)) + yy) / period * 2 * math.pi)
    elif kind == 1:
        pattern = ((xx // period).astype(int) + (yy // period).astype(int)) % 2 * 2.0 - 1
    else:
        pattern = rng.normal(0, 1, size=(height, width))
    img = img + pattern[..., None] * rng.uniform(4, 12)
    return np.clip(img, 0, 255)


#: Each class has a usual colour, as many real classes do. Why: a per-patch cue lets a tiny
#: CPU-trained vision tower learn classes in minutes, while the shape still decides the rest.
CLASS_COLOUR = dict(zip(CLASSES, COLOURS, strict=True))

#: Share of objects drawn in their class's usual colour in the embedded sets; the rest get a random
#: colour. A toy that names objects by colour alone tops out near this share, so the toys' training
#: (``vlmloc.toys.train --colour-linked``) can lower it to make the tower learn shapes.
COLOUR_LINKED = 0.9


def _colour_of(category: str, rng: np.random.Generator, linked: float = COLOUR_LINKED) -> str:
    return CLASS_COLOUR[category] if rng.random() < linked else str(rng.choice(list(COLOURS)))


def _place(
    rng: np.random.Generator,
    width: int,
    height: int,
    size: float,
    taken: list[np.ndarray],
    cat: str,
    linked: float = COLOUR_LINKED,
) -> ShapeSpec | None:
    """Find a position whose mask overlaps earlier objects by less than 10% of its area."""
    for _ in range(30):
        r = size / 2
        cx = rng.uniform(r * 0.8, width - r * 0.8)
        cy = rng.uniform(r * 0.8, height - r * 0.8)
        spec = ShapeSpec(cat, _colour_of(cat, rng, linked), cx, cy, size, rng.uniform(-25, 25))
        m = draw_mask(spec, width, height)
        if m.sum() < 20:
            continue
        if all((m & t).sum() < 0.1 * m.sum() for t in taken):
            return spec
    return None


def generate_scene(
    rng: np.random.Generator,
    colour_linked: float = COLOUR_LINKED,
    first_size: tuple[float, float] = FIRST_SIZE,
    distractor_size: tuple[float, float] = DISTRACTOR_SIZE,
) -> tuple[Image.Image, list[tuple[ShapeSpec, np.ndarray]]]:
    """Draw one scene; returns the image and its objects with their visible masks.

    ``colour_linked`` is the chance that an object has its class's colour. Training scenes may
    lower it so that a toy cannot name objects by colour alone. ``first_size`` and
    ``distractor_size`` are the objects' size ranges (fractions of the short side). The defaults
    draw exactly the scenes the embedded sets have always had; with other ranges the same seed gives
    other scenes (placement retries depend on the sizes).
    """
    width, height = SIZES[rng.integers(len(SIZES))]
    img = textured_background(width, height, rng)
    n_obj = int(rng.choice([1, 2, 2, 3, 3, 4]))
    cats = list(rng.choice(CLASSES, size=n_obj, replace=rng.random() < 0.15))
    short = min(width, height)
    objects: list[tuple[ShapeSpec, np.ndarray]] = []
    taken: list[np.ndarray] = []
    for i, cat in enumerate(cats):
        # The first object spans small to large; distractors stay small to medium.
        frac = rng.uniform(*first_size) if i == 0 else rng.uniform(*distractor_size)
        spec = _place(rng, width, height, frac * short, taken, str(cat), colour_linked)
        if spec is None:
            continue
        m = draw_mask(spec, width, height)
        taken.append(m)
        objects.append((spec, m))
    visible: list[tuple[ShapeSpec, np.ndarray]] = []
    occupied = np.zeros((height, width), bool)
    for spec, m in reversed(objects):  # later objects are drawn on top
        vis = m & ~occupied
        occupied |= m
        visible.append((spec, vis))
    visible.reverse()
    for spec, m in objects:
        shade = np.array(COLOURS[spec.colour], np.float32) * rng.uniform(0.85, 1.0)
        img[m] = shade
    out = Image.fromarray(img.astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return out, visible


def _segmentation(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def write_dataset(
    out: str | Path,
    n: int,
    seed: int,
    progress: bool = False,
    first_size: tuple[float, float] = FIRST_SIZE,
    distractor_size: tuple[float, float] = DISTRACTOR_SIZE,
) -> Path:
    """Write ``n`` scenes as ``out/annotations.json`` and ``out/images/*.png``; return the json path.

    ``first_size`` and ``distractor_size`` go to :func:`generate_scene` (the defaults: the usual sets).
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    coco: dict = {
        "info": {
            "description": f"vlmloc synthetic scenes, seed {seed}{_size_note(first_size, distractor_size)}",
            "version": "1",
        },
        "licenses": [],
        "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)],
        "images": [],
        "annotations": [],
    }
    cat_id = {c: i + 1 for i, c in enumerate(CLASSES)}
    ann_id = 1
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="scenes")
    for i in it:
        img, objects = generate_scene(rng, first_size=first_size, distractor_size=distractor_size)
        name = f"{seed:06d}_{i:06d}.png"
        img.save(out / "images" / name)
        coco["images"].append({"id": i + 1, "file_name": name, "width": img.width, "height": img.height})
        for spec, m in objects:
            ys, xs = np.nonzero(m)
            if len(xs) == 0:
                continue
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            coco["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": i + 1,
                    "category_id": cat_id[spec.category],
                    "segmentation": _segmentation(m),
                    "area": float(m.sum()),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "iscrowd": 0,
                    "attributes": {"colour": spec.colour},
                }
            )
            ann_id += 1
    path = out / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


def _size_note(first_size: tuple[float, float], distractor_size: tuple[float, float]) -> str:
    """``""`` for the usual size ranges, else a tag naming them (for folder names and descriptions)."""
    if (tuple(first_size), tuple(distractor_size)) == (FIRST_SIZE, DISTRACTOR_SIZE):
        return ""
    return "-size{:g}-{:g}-{:g}-{:g}".format(*first_size, *distractor_size)


def embedded_dataset(
    n: int = 500,
    seed: int = EVAL_SEED,
    root: str | Path | None = None,
    first_size: tuple[float, float] = FIRST_SIZE,
    distractor_size: tuple[float, float] = DISTRACTOR_SIZE,
) -> tuple[Path, Path]:
    """Return ``(annotations, images)`` of the embedded synthetic set, generating it once.

    The set is deterministic in ``(n, seed)`` and the size ranges, so it is generated into a cache
    folder instead of being stored in git (``$VLMLOC_CACHE`` or ``~/.cache/vlmloc``). The usual
    ranges keep the folder ``synthetic-seed{seed}-n{n}``; others add a ``-size...`` tag.
    """
    import os

    base = Path(root or os.environ.get("VLMLOC_CACHE", Path.home() / ".cache" / "vlmloc"))
    out = base / f"synthetic-seed{seed}-n{n}{_size_note(first_size, distractor_size)}"
    ann = out / "annotations.json"
    if not ann.exists():
        tmp = out.with_name(out.name + ".tmp")
        write_dataset(tmp, n, seed, first_size=first_size, distractor_size=distractor_size)
        if out.exists():  # another process finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(out)
    return ann, out / "images"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write synthetic scenes as a COCO instances file.")
    p.add_argument("--out", required=True, help="output folder (annotations.json and images/)")
    p.add_argument("--n", type=int, default=500, help="number of images")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="random seed")
    a = p.parse_args(argv)
    if a.n <= 0:
        p.error(f"--n must be a positive number of images, got {a.n}")
    path = write_dataset(a.out, a.n, a.seed, progress=True)
    print(f"wrote {path} and {Path(a.out) / 'images'}")


if __name__ == "__main__":
    main()
