"""Figures shared by the chapters: token coverage, IoU histogram, box gallery, size split, inpainting.

Each function draws one figure from plain data (samples, layouts, records, tables) and returns
the ``matplotlib.figure.Figure``; a notebook cell shows it with one call. Nothing here runs a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from PIL import Image

__all__ = [
    "COLORS",
    "plot_box_gallery",
    "plot_by_size",
    "plot_headline",
    "plot_inpaint_pairs",
    "plot_iou_histogram",
    "plot_token_coverage",
]

#: One colour per role, used by every chapter.
COLORS = {
    "object": "#e4572e",  # object tokens / ground truth
    "pred": "#17bebb",  # predictions
    "loc": "#2e86ab",
    "cls": "#f2a541",
    "paper": "#8a8a8a",
    "grid": "white",
}
#: CLIP's mean colour: what LLaVA pads the square with.
_PAD = (0.481, 0.458, 0.408)


def _axes(n: int, ncols: int, size: float = 2.6, height: float | None = None) -> tuple[Figure, list]:
    ncols = max(1, min(n, ncols))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, (height or size) * nrows + 0.3), squeeze=False
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _mask_contour(ax, mask: np.ndarray, color: str) -> None:
    h, w = mask.shape
    if mask.any():
        ax.contour(np.arange(w) + 0.5, np.arange(h) + 0.5, mask.astype(float), levels=[0.5], colors=[color])


def _box(ax, box: Sequence[float], color: str, ls: str = "-", lw: float = 2.0) -> None:
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, ls=ls, lw=lw))


def plot_token_coverage(sample: Any, image: Image.Image, layout: Any, ncols: int = 5) -> Figure:
    """The image with the object's mask, then every view's token grid with the object's cells filled.

    A cell (one visual token) belongs to the object when it overlaps at least one mask pixel. Each
    view is drawn as the model sees it: the region of the original image it shows, stretched onto
    its square token grid (LLaVA's padding appears in CLIP's mean colour; InternVL shows each
    tile and then the thumbnail).
    """
    mask = sample.mask()
    w, h = image.size
    cells = layout.object_cells(mask)
    fig, axes = _axes(1 + len(layout.views), ncols)
    ax = axes[0]
    ax.imshow(image)
    overlay = np.zeros((h, w, 4))
    overlay[mask] = (*plt.matplotlib.colors.to_rgb(COLORS["object"]), 0.45)
    ax.imshow(overlay)
    _box(ax, sample.box, COLORS["object"], lw=1.2)
    ax.set_title(f"{sample.category} ({sample.size_class}), {w}x{h}", fontsize=9)
    _clean(ax)
    total = 0
    for ax, view in zip(axes[1:], layout.views, strict=True):
        x0, y0, x1, y1 = view.region
        ax.set_facecolor(_PAD)
        ax.imshow(image, extent=(0, w, h, 0), interpolation="bilinear")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)
        ax.set_aspect("auto")
        for r in range(view.rows + 1):
            ax.axhline(y0 + r * (y1 - y0) / view.rows, color=COLORS["grid"], lw=0.4, alpha=0.7)
        for c in range(view.cols + 1):
            ax.axvline(x0 + c * (x1 - x0) / view.cols, color=COLORS["grid"], lw=0.4, alpha=0.7)
        grid = cells[view.name]
        for r, c in zip(*np.nonzero(grid), strict=True):
            bx0, by0, bx1, by1 = view.cell_box(int(r), int(c))
            ax.add_patch(
                Rectangle((bx0, by0), bx1 - bx0, by1 - by0, fc=COLORS["object"], alpha=0.45, ec="none")
            )
        _mask_contour(ax, mask, "black")
        n = int(grid.sum())
        total += n
        ax.set_title(f"{view.name} ({view.kind}): {n}/{view.n_tokens} tokens", fontsize=9)
        _clean(ax)
    fig.suptitle(
        f"{total} of {layout.n_tokens} visual tokens ({100 * total / layout.n_tokens:.1f}%) cover the object",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def plot_iou_histogram(records: Sequence[Mapping], model_id: str = "") -> Figure:
    """Histogram of IoU over localization records, with the paper's thresholds; unparsable answers apart."""
    ious = [r["iou"] for r in records if r.get("iou") is not None]
    bad = sum(r.get("iou") is None for r in records)
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.hist(ious, bins=np.linspace(0, 1, 21), color=COLORS["loc"], edgecolor="white")
    for t in (0.5, 0.7, 0.9):
        share = 100 * sum(v >= t for v in ious) / max(1, len(records))
        ax.axvline(t, color="black", ls="--", lw=1)
        ax.text(
            t + 0.01, 0.97, f"IoU≥{t}: {share:.0f}%", transform=ax.get_xaxis_transform(), va="top", fontsize=8
        )
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU of the predicted box with the true box")
    ax.set_ylabel("objects")
    ax.set_title(f"Localization {model_id}: {len(records)} objects, {bad} answers without a box", fontsize=10)
    fig.tight_layout()
    return fig


def plot_box_gallery(
    samples: Sequence[Any], records: Sequence[Mapping], n: int = 8, ncols: int = 4
) -> Figure:
    """Predicted (dashed) against true (solid) boxes on the first ``n`` samples that have a record."""
    by_id = {r["sample_id"]: r for r in records}
    chosen = [s for s in samples if s.sample_id in by_id][:n]
    fig, axes = _axes(max(1, len(chosen)), ncols, size=2.4)
    for ax, s in zip(axes, chosen, strict=False):
        r = by_id[s.sample_id]
        ax.imshow(s.load_image())
        _box(ax, s.box, COLORS["object"])
        if r.get("box") is not None:
            _box(ax, r["box"], COLORS["pred"], ls="--")
            ax.set_xlim(min(0, r["box"][0]) - 2, max(s.width, r["box"][2]) + 2)
            ax.set_ylim(max(s.height, r["box"][3]) + 2, min(0, r["box"][1]) - 2)
            label = f"IoU {r['iou']:.2f}"
        else:
            label = "no box in the answer"
        ax.set_title(f"{s.category}: {label}", fontsize=9)
        _clean(ax)
    fig.legend(
        handles=[
            Patch(fc="none", ec=COLORS["object"], label="true box"),
            Patch(fc="none", ec=COLORS["pred"], ls="--", label="predicted box"),
        ],
        loc="lower center",
        ncol=2,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_by_size(table: Any, title: str = "") -> Figure:
    """Grouped bars of Loc and Cls (with SE) per object size class, from :func:`vlmloc.experiments.base.by_size`."""
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    sizes = list(table.index)
    x = np.arange(len(sizes))
    for i, (col, se, color) in enumerate(
        (("Loc %", "Loc SE", COLORS["loc"]), ("Cls %", "Cls SE", COLORS["cls"]))
    ):
        if col not in table:
            continue
        vals = table[col].astype(float).fillna(0).to_numpy()
        ax.bar(
            x + (i - 0.5) * 0.38,
            vals,
            0.38,
            yerr=table[se].astype(float).fillna(0).to_numpy(),
            color=color,
            label=col[:3],
            capsize=3,
        )
    ax.set_xticks(x, [f"{s}\n(n={int(n)})" for s, n in zip(sizes, table["n"], strict=True)])
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(frameon=False)
    ax.set_title(title or "Baseline by object size (COCO classes)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_inpaint_pairs(pairs: Sequence[Mapping], n: int = 4) -> Figure:
    """Originals (top) and their inpainted versions (bottom), with the target's box and the kept flag.

    ``pairs`` are control-set entries: ``original`` and ``inpainted`` image paths (or PIL images),
    ``category``, ``box`` and optionally ``kept``.
    """
    chosen = list(pairs)[:n]
    k = max(1, len(chosen))
    fig, axes = plt.subplots(2, k, figsize=(2.5 * k, 5.2), squeeze=False)
    for j, p in enumerate(chosen):
        for i, key in enumerate(("original", "inpainted")):
            ax = axes[i, j]
            img = p[key]
            ax.imshow(img if isinstance(img, Image.Image) else Image.open(Path(img)).convert("RGB"))
            _box(ax, p["box"], COLORS["object"], ls="-" if i == 0 else ":", lw=1.2)
            _clean(ax)
            if i == 0:
                ax.set_title(p["category"], fontsize=9)
            else:
                kept = p.get("kept")
                ax.set_title(
                    {True: "kept: no longer named", False: "dropped: still named", None: "inpainted"}[kept],
                    fontsize=9,
                )
    axes[0, 0].set_ylabel("original")
    axes[1, 0].set_ylabel("inpainted")
    fig.tight_layout()
    return fig


def plot_headline(table: Any) -> Figure:
    """Bars of Loc and Cls for every model run (solid) and the paper's models (hatched)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(table) + 1), 3.4))
    x = np.arange(len(table))
    for i, (col, se, color) in enumerate(
        (("Loc %", "Loc SE", COLORS["loc"]), ("Cls %", "Cls SE", COLORS["cls"]))
    ):
        vals = table[col].astype(float).fillna(0).to_numpy()
        errs = table[se].astype(float).fillna(0).to_numpy() if se in table else None
        bars = ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, yerr=errs, color=color, label=col[:3], capsize=3)
        for b, src in zip(bars, table["source"], strict=True):
            if src == "paper":
                b.set_hatch("//")
                b.set_alpha(0.6)
    ax.set_xticks(
        x, [f"{m}\n({s})" for m, s in zip(table["model"], table["source"], strict=True)], fontsize=8
    )
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(frameon=False)
    ax.set_title("Baseline localization (Loc) and classification (Cls); hatched = paper", fontsize=10)
    fig.tight_layout()
    return fig
