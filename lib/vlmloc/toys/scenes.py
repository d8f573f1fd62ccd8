"""The toys' training data: synthetic scenes as each family's processor sees them, and the patch targets.

A :class:`Scene` is one synthetic image with its objects (class, visible mask, box), the
processor's pixel values and the family's views. :func:`patch_targets` is what stage 1 of
:mod:`vlmloc.toys.train` teaches the tower, per view and patch: objectness, class and the share
of each sub-cell the objects cover. Nothing here trains or knows about boxes in the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..families import FAMILIES
from ..geometry import View
from ..synthetic import CLASS_COLOUR, CLASSES, COLOUR_LINKED, ShapeSpec, generate_scene

__all__ = [
    "GROUNDING",
    "Scene",
    "make_scenes",
    "merge_group_order",
    "patch_targets",
    "scene_objects",
    "sub_cells",
]


@dataclass
class Scene:
    image: object
    objects: list  # (category, mask, box)
    pixel_values: torch.Tensor  # (views, 3, H, W); Qwen2.5-VL: flat patches (rows, channels * 2 * patch**2)
    views: list[View]
    class_coloured: list[bool]  # per object: drawn in its class's usual colour
    grid_thw: torch.Tensor | None = None  # Qwen2.5-VL: (1, 3) patches along time, height and width


def scene_objects(visible) -> list[tuple[ShapeSpec, np.ndarray, tuple[float, float, float, float]]]:
    """The objects big enough to ask about: (spec, visible mask, box)."""
    out = []
    for spec, m in visible:
        ys, xs = np.nonzero(m)
        if len(xs) < 12:
            continue
        out.append((spec, m, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))))
    return out


def make_scenes(
    family: str, processor, config, n: int, seed: int, desc: str, colour_linked: float = COLOUR_LINKED
) -> list[Scene]:
    fam = FAMILIES[family]
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in tqdm(range(n), desc=desc, mininterval=5):
        img, visible = generate_scene(rng, colour_linked)
        objs = scene_objects(visible)
        if not objs:
            continue
        coloured = [spec.colour == CLASS_COLOUR[spec.category] for spec, _, _ in objs]
        objs = [(spec.category, m, box) for spec, m, box in objs]
        # InternVLProcessor forces crop_to_patches=True; the image processor alone would not tile.
        extra = {"crop_to_patches": True} if family == "internvl" else {}
        enc = processor.image_processor(images=[img], return_tensors="pt", **extra)
        views = fam.views(config, processor, img.size)
        scenes.append(Scene(img, objs, enc["pixel_values"], views, coloured, enc.get("image_grid_thw")))
    return scenes


def patch_targets(
    scene: Scene, patch_grid: int | None, sub: int, merge: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per view and patch: objectness (0/1), class index (-100 where no object) and the share of
    each of the patch's ``sub x sub`` sub-cells the objects cover.

    ``patch_grid`` is the tower's square patch grid per view (LLaVA, InternVL). ``None`` means a
    view's own token grid with ``merge x merge`` patches per token (Qwen2.5-VL); the patches are
    then listed in the tower's order, each token's ``merge x merge`` group consecutive.

    ``sub = 1`` (weak grounding, the default toys) gives the covered share of the whole patch: a
    token then knows how much of its patch is object, not where inside it the edge runs, and the
    decoder has to read a box off *which* tokens hold the object. ``sub > 1`` (the ``-precise``
    toys) tells each token where inside its patch an edge runs, which lifts IoU for small objects
    but makes the tokens' content, not just their place, carry the box. Neither says anything
    about boxes or other patches.
    """
    objness, classes, shares = [], [], []
    w, h = scene.image.size
    per_object = [_summed_area(m) for _, m, _ in scene.objects]
    union = _summed_area(np.any([m for _, m, _ in scene.objects], axis=0))
    class_ids = np.array([CLASSES.index(o[0]) for o in scene.objects])
    for v in scene.views:
        n_rows, n_cols = (patch_grid, patch_grid) if patch_grid else (v.rows * merge, v.cols * merge)
        order = merge_group_order(n_rows, n_cols, merge)
        rows, cols = View(v.name, v.kind, n_rows, n_cols, 0, v.region).cell_ranges(w, h)
        ra, rb = (np.array(x) for x in zip(*rows, strict=True))
        ca, cb = (np.array(x) for x in zip(*cols, strict=True))
        rb, cb = np.maximum(ra, rb), np.maximum(ca, cb)  # empty ranges (padding) sum to zero
        counts = np.stack([_box_sums(ii, ra, rb, ca, cb) for ii in per_object])
        has = counts.max(0) > 0
        cls = np.where(has, class_ids[counts.argmax(0)], -100)
        objness.append(torch.tensor(has.ravel()[order], dtype=torch.float32))
        classes.append(torch.tensor(cls.ravel()[order], dtype=torch.long))
        shares.append(torch.tensor(_sub_cell_shares(union, v.region, (n_rows, n_cols), sub, w, h)[order]))
    return torch.stack(objness), torch.stack(classes), torch.stack(shares)


def merge_group_order(rows: int, cols: int, merge: int) -> np.ndarray:
    """Row-major patch indices listed group by group: each ``merge x merge`` block of patches
    consecutive, the blocks row-major (the order of Qwen2.5-VL's flat ``pixel_values``)."""
    index = np.arange(rows * cols).reshape(rows // merge, merge, cols // merge, merge)
    return index.transpose(0, 2, 1, 3).ravel()


GROUNDING = ("weak", "precise")


def sub_cells(patch: int, grounding: str) -> int:
    """Sub-cells per side of a patch the stage-1 coverage target resolves: 1 (the whole patch)
    for weakly grounded toys, cells of about 2 px for precise ones."""
    if grounding not in GROUNDING:
        raise ValueError(f"grounding must be one of {GROUNDING}, not {grounding!r}")
    return 1 if grounding == "weak" else max(1, patch // 2)


def _summed_area(mask: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row and column: any rectangle's sum in four lookups."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    table[1:, 1:] = mask.cumsum(0).cumsum(1)
    return table


def _box_sums(table: np.ndarray, r0, r1, c0, c1) -> np.ndarray:
    """Sums over every rectangle ``[r0[i], r1[i]) x [c0[j], c1[j])`` of a summed-area table."""
    return table[r1][:, c1] - table[r0][:, c1] - table[r1][:, c0] + table[r0][:, c0]


def _sub_cell_shares(
    table: np.ndarray, region, grid: tuple[int, int], sub: int, w: int, h: int
) -> np.ndarray:
    """``(rows * cols, sub * sub)`` covered share of each sub-cell of ``region`` on a ``grid`` of
    ``(rows, cols)`` patches."""
    x0, y0, x1, y1 = region
    rows, cols = grid
    ny, nx = rows * sub, cols * sub
    ys = np.clip(np.round(y0 + np.arange(ny + 1) * (y1 - y0) / ny), 0, h).astype(int)
    xs = np.clip(np.round(x0 + np.arange(nx + 1) * (x1 - x0) / nx), 0, w).astype(int)
    sums = _box_sums(table, ys[:-1], ys[1:], xs[:-1], xs[1:])
    area = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    frac = np.where(area > 0, sums / np.maximum(area, 1), 0.0)
    return (
        frac.reshape(rows, sub, cols, sub)
        .transpose(0, 2, 1, 3)
        .reshape(rows * cols, sub * sub)
        .astype(np.float32)
    )
