"""Image-token bookkeeping: which LLM input positions hold which view cell, and which cells an object covers.

Why one module: every chapter asks "which visual tokens belong to this object?". The answer depends
on the preprocessing (LLaVA pads to a square and resizes; InternVL resizes to a tile canvas, cuts
tiles row-major and appends a thumbnail). Each view is therefore described by the rectangle of the
*original* image it shows and by its token grid; mapping a mask is then the same code for every
model family: a cell belongs to the object if it overlaps at least one object pixel (the paper's rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from .data import Sample


class HasViews(Protocol):
    """Anything that says an image's views (a loaded :class:`vlmloc.adapter.VLM`): geometry sits
    below the model wrapper, which builds its layouts from this module."""

    def views(self, image_size: tuple[int, int]) -> list[View]: ...


@dataclass(frozen=True)
class View:
    """One view of the image as the LLM sees it.

    ``region`` is ``(x0, y0, x1, y1)`` in original-image pixels: the part of the original image the
    view shows, stretched onto a ``rows x cols`` token grid (it may extend past the image, e.g. the
    padding of LLaVA's square). Tokens are row-major: token ``k`` is cell ``(k // cols, k % cols)``.
    ``offset`` is the index of the view's first token among all visual tokens of the image.
    """

    name: str
    kind: str  # "global" (the whole image) or "local" (a tile)
    rows: int
    cols: int
    offset: int
    region: tuple[float, float, float, float]

    @property
    def n_tokens(self) -> int:
        return self.rows * self.cols

    def cell_ranges(self, width: int, height: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Per grid row and column, the half-open range of original pixel rows/cols overlapping it."""
        x0, y0, x1, y1 = self.region
        return (
            [_pixel_range(r, self.rows, y0, y1, height) for r in range(self.rows)],
            [_pixel_range(c, self.cols, x0, x1, width) for c in range(self.cols)],
        )

    def mask_to_cells(self, mask: np.ndarray) -> np.ndarray:
        """Boolean ``(rows, cols)`` grid: cells whose area overlaps at least one mask pixel."""
        h, w = mask.shape
        rows, cols = self.cell_ranges(w, h)
        out = np.zeros((self.rows, self.cols), bool)
        row_any = [mask[a:b] for a, b in rows]
        for r, band in enumerate(row_any):
            if band.size == 0 or not band.any():
                continue
            for c, (a, b) in enumerate(cols):
                out[r, c] = b > a and bool(band[:, a:b].any())
        return out

    def cell_box(self, r: int, c: int) -> tuple[float, float, float, float]:
        """The rectangle of cell ``(r, c)`` in original-image pixels (for drawing grids)."""
        x0, y0, x1, y1 = self.region
        cw, ch = (x1 - x0) / self.cols, (y1 - y0) / self.rows
        return (x0 + c * cw, y0 + r * ch, x0 + (c + 1) * cw, y0 + (r + 1) * ch)


def _pixel_range(cell: int, n_cells: int, lo: float, hi: float, n_pixels: int) -> tuple[int, int]:
    """Original pixels ``[a, b)`` whose unit square overlaps cell ``cell`` of ``n_cells`` spanning ``[lo, hi)``.

    Pixel ``x`` covers ``[x, x + 1)``; the cell covers ``[lo + cell * s, lo + (cell + 1) * s)`` with
    ``s = (hi - lo) / n_cells``. They overlap iff ``x + 1 > start`` and ``x < end`` (touching edges do not).
    """
    s = (hi - lo) / n_cells
    start, end = lo + cell * s, lo + (cell + 1) * s
    a = math.floor(start - 1 + 1e-9) + 1
    b = math.ceil(end - 1e-9)
    # Clamp both ends into [0, n_pixels]: a cell wholly in the padding must give an empty range,
    # never a negative end (``mask[0:-140]`` would silently select most of the image).
    a = min(max(0, a), n_pixels)
    return a, max(a, min(n_pixels, b))


@dataclass
class ImageLayout:
    """Where one image's visual tokens sit in the LLM input, and how they tile the image.

    ``positions`` are the sequence indices of the visual tokens (``input_ids == image_token_id``),
    in order; ``views`` partition them (LLaVA: one global view; InternVL: tiles row-major, then
    the thumbnail). ``image_size`` is ``(width, height)`` of the original image.
    """

    positions: torch.Tensor
    views: list[View]
    image_size: tuple[int, int]
    _grids: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        total = sum(v.n_tokens for v in self.views)
        if total != len(self.positions):
            raise ValueError(
                f"the views describe {total} visual tokens but the input holds {len(self.positions)}; "
                "the processor and the model geometry disagree (check patch_size / image_seq_length)"
            )

    @property
    def n_tokens(self) -> int:
        return len(self.positions)

    def view(self, name: str) -> View:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(f"no view {name!r}; views are {[v.name for v in self.views]}")

    def views_of_kind(self, kind: str | None) -> list[View]:
        return [v for v in self.views if kind in (None, "all", v.kind)]

    def token_indices(self, view: View) -> np.ndarray:
        """Indices (into ``positions``) of a view's tokens."""
        return np.arange(view.offset, view.offset + view.n_tokens)

    def object_cells(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        """Per view, the boolean grid of cells the object covers."""
        if mask.shape != (self.image_size[1], self.image_size[0]):
            raise ValueError(
                f"mask shape {mask.shape} does not match the image size (h, w) = "
                f"{(self.image_size[1], self.image_size[0])}"
            )
        key = (mask.shape, hash(np.packbits(mask).tobytes()))
        if key not in self._grids:
            self._grids = {key: {v.name: v.mask_to_cells(mask) for v in self.views}}
        return self._grids[key]

    def object_indices(self, mask: np.ndarray, kind: str | None = None) -> np.ndarray:
        """Indices (into ``positions``) of the visual tokens covering the object, optionally one view kind."""
        cells = self.object_cells(mask)
        out = [v.offset + np.flatnonzero(cells[v.name].ravel()) for v in self.views_of_kind(kind)]
        return np.concatenate(out) if out else np.zeros(0, int)

    def indices_of_cells(self, view: View, grid: np.ndarray) -> np.ndarray:
        """Indices (into ``positions``) of the cells set in ``grid`` of ``view``."""
        return view.offset + np.flatnonzero(grid.ravel())

    def grid_of(self, view: View, indices: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`indices_of_cells`: a boolean grid of the given token indices in ``view``."""
        g = np.zeros(view.n_tokens, bool)
        local = np.asarray(indices) - view.offset
        g[local[(local >= 0) & (local < view.n_tokens)]] = True
        return g.reshape(view.rows, view.cols)


def grow_cells(grid: np.ndarray, rings: int) -> np.ndarray:
    """Grow a boolean grid by ``rings`` rings of the 8-neighbourhood (the paper's padding)."""
    out = grid.copy()
    for _ in range(rings):
        p = np.pad(out, 1)
        nb = np.zeros_like(out)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                nb |= p[1 + dy : 1 + dy + out.shape[0], 1 + dx : 1 + dx + out.shape[1]]
        out = nb
    return out


def index_layout(vlm: HasViews, sample: Sample) -> ImageLayout:
    """The sample's views with ``positions = 0..n-1``: token sets as indices, without encoding a prompt.

    Token sets (the object's tokens, a random control, a view) are chosen once per sample as
    indices into the visual tokens; a batch maps them to sequence positions through its own
    :class:`ImageLayout`. Only the model's view geometry (``vlm.views``) is needed.
    """
    size = (sample.width, sample.height)
    views = vlm.views(size)
    return ImageLayout(torch.arange(sum(v.n_tokens for v in views)), views, size)
