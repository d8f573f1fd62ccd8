"""Draw the book's chapter map into book/_static/chapter_map.png.

The map follows the study from coarse to fine: which tokens carry localization,
which InternVL view, where the 2-D grid is rebuilt, then which layers and heads.
Chapters that exist (the registry, ``vlmloc.chapter_registry.CHAPTERS``) are drawn solid; planned ones
(``vlmloc.chapter_registry.PLANNED``) are drawn dashed and grey.

Run: ``PYTHONPATH=lib .venv/bin/python scripts/make_chapter_map.py`` (the PNG is committed).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402
from PIL import Image  # noqa: E402
from vlmloc.chapter_registry import CHAPTERS as REGISTRY  # noqa: E402
from vlmloc.chapter_registry import PLANNED as PLANNED_CHAPTERS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "book" / "_static" / "chapter_map.png"


def _balanced(text: str, width: int = 25) -> str:
    """``text`` on as few lines as ``width`` allows, the lines as even as possible (no orphan word)."""
    n = len(textwrap.wrap(text, width))
    narrowest = min(w for w in range(1, width + 1) if len(textwrap.wrap(text, w)) == n)
    return "\n".join(textwrap.wrap(text, narrowest))


def chapter_boxes() -> list[tuple[int, str, str, str, bool]]:
    """(number, title, question, tools, available) of every box, from the chapter registry.

    Numbered chapters and planned ones interleave by number; unnumbered pages (the results
    page) follow them.
    """
    boxes = [(c.number, c.title, c.question, c.tools, True) for c in REGISTRY if c.number is not None]
    boxes += [(p.number, p.title, p.question, p.tools, False) for p in PLANNED_CHAPTERS]
    boxes.sort()
    pages = [c for c in REGISTRY if c.number is None]
    boxes += [(len(boxes) + i, c.title, c.question, c.tools, True) for i, c in enumerate(pages, 1)]
    return [(n, t, _balanced(q), tools, ok) for n, t, q, tools, ok in boxes]


STAGES = [
    (0, 1, "Which tokens?"),
    (2, 3, "Where is space rebuilt?"),
    (4, 6, "Which layers and heads?"),
    (7, 7, "Compare"),
]

AVAILABLE = {"face": "#dbeafe", "edge": "#1d4ed8", "text": "#0f172a", "style": "solid"}
PLANNED = {"face": "#f3f4f6", "edge": "#9ca3af", "text": "#6b7280", "style": "dashed"}


def draw(out: Path, available: set[int] | None = None, dpi: int = 110) -> Path:
    """Draw the map; ``available`` overrides which chapter numbers are marked as done."""
    chapters = [
        (n, t, q, tools, (n in available) if available is not None else ok)
        for n, t, q, tools, ok in chapter_boxes()
    ]
    ncol = 4
    box_w, box_h, gap_x, gap_y = 2.6, 1.55, 0.45, 0.85
    width = ncol * box_w + (ncol - 1) * gap_x
    height = 2 * box_h + gap_y

    fig, ax = plt.subplots(figsize=(11.5, 4.3))
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-0.55, height + 0.5)
    ax.set_aspect("equal")
    ax.axis("off")

    centers = {}
    for i, (n, title, question, tools, ok) in enumerate(chapters):
        row, col = divmod(i, ncol)
        x0 = col * (box_w + gap_x)
        y0 = height - (row + 1) * box_h - row * gap_y
        style = AVAILABLE if ok else PLANNED
        box = FancyBboxPatch(
            (x0, y0),
            box_w,
            box_h,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            facecolor=style["face"],
            edgecolor=style["edge"],
            linewidth=1.8 if ok else 1.2,
            linestyle=style["style"],
        )
        ax.add_patch(box)
        ax.text(
            x0 + 0.12,
            y0 + box_h - 0.17,
            f"{n}. {title}",
            ha="left",
            va="top",
            fontsize=10.5,
            fontweight="bold",
            color=style["text"],
        )
        ax.text(x0 + 0.12, y0 + box_h - 0.52, question, ha="left", va="top", fontsize=9, color=style["text"])
        ax.text(
            x0 + 0.12,
            y0 + 0.14,
            tools,
            ha="left",
            va="bottom",
            fontsize=8,
            style="italic",
            color=style["text"],
        )
        tag = "available" if ok else "planned"
        ax.text(
            x0 + box_w - 0.1,
            y0 + 0.14,
            tag,
            ha="right",
            va="bottom",
            fontsize=7.5,
            color="white" if ok else style["text"],
            bbox={
                "boxstyle": "round,pad=0.25",
                "facecolor": style["edge"] if ok else "white",
                "edgecolor": style["edge"],
                "linewidth": 0.8,
            },
        )
        centers[i] = (x0, y0)

    # Arrows: left to right along each row, then from the end of row 1 down to the start of row 2.
    def arrow(p, q, **kw):
        ax.add_patch(
            FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=12, color="#475569", linewidth=1.2, **kw)
        )

    for i in range(len(chapters) - 1):
        (x0, y0), (x1, y1) = centers[i], centers[i + 1]
        if y0 == y1:
            arrow((x0 + box_w + 0.03, y0 + box_h / 2), (x1 - 0.03, y1 + box_h / 2))
        else:
            # Row break: down from the last box, left along the gap, down into the next row.
            y_mid = (y0 + y1 + box_h) / 2
            ax.plot([x0 + box_w / 2] * 2, [y0 - 0.03, y_mid], color="#475569", lw=1.2)
            ax.plot([x0 + box_w / 2, x1 + box_w / 2], [y_mid, y_mid], color="#475569", lw=1.2)
            arrow((x1 + box_w / 2, y_mid), (x1 + box_w / 2, y1 + box_h + 0.03))

    # Stage labels above the top row and below the bottom row.
    for first, last, label in STAGES:
        xa, ya = centers[first]
        xb, _ = centers[last]
        xm = (xa + xb + box_w) / 2
        top_row = ya > box_h
        y = ya + box_h + 0.25 if top_row else ya - 0.3
        ax.text(xm, y, label, ha="center", va="center", fontsize=9, color="#334155")
        ax.plot([xa + 0.1, xb + box_w - 0.1], [y - 0.13 if top_row else y + 0.13] * 2, color="#cbd5e1", lw=1)

    fig.tight_layout(pad=0.2)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    # A 64-colour palette keeps the committed PNG small (about a third of the RGBA size).
    with Image.open(out) as im:
        small = im.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args()
    path = draw(args.out, dpi=args.dpi)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
