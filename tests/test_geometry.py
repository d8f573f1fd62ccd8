"""Mask-to-token geometry: hand-computed cells for LLaVA's padded square and InternVL's tiles.

Every expected cell below is worked out by hand from the preprocessing:

* LLaVA-1.5 (pad): an ``w x h`` image is pasted at ``((S - w) // 2, (S - h) // 2)`` on an
  ``S = max(w, h)`` square (transformers' ``LlavaImageProcessor.pad_to_square``), resized to
  336 x 336 and cut into 24 x 24 patches of 14 px, i.e. cells of ``S / 24`` original pixels.
* InternVL-3.5: the image is resized to a ``cols x rows`` canvas of 448 px tiles, cut row-major,
  and (when there is more than one tile) a 448 x 448 thumbnail of the whole image is appended;
  each tile has 16 x 16 tokens of 28 x 28 tile pixels (2 x 2 patches of 14 px after pixel shuffle).

The processor tests then check the same mapping against the pixels the real processors produce.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vlmloc.geometry import ImageLayout, View, grow_cells


def _layout(vlm, size):
    """A layout for an image of ``size`` = (w, h) with positions 0..n-1 (no encoding needed)."""
    views = vlm.views(size)
    return ImageLayout(torch.arange(sum(v.n_tokens for v in views)), views, size)


def _rect_mask(size, x0, y0, x1, y1):
    w, h = size
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------- pure View arithmetic


def test_cell_ranges_fractional_cells():
    # 10 px over 4 cells: cells [0, 2.5), [2.5, 5), [5, 7.5), [7.5, 10); pixel x covers [x, x + 1).
    v = View("v", "global", 4, 4, 0, (0.0, 0.0, 10.0, 10.0))
    rows, cols = v.cell_ranges(10, 10)
    assert cols == [(0, 3), (2, 5), (5, 8), (7, 10)]
    assert rows == cols


def test_single_pixel_straddling_a_fractional_boundary_touches_both_cells():
    v = View("v", "global", 4, 4, 0, (0.0, 0.0, 10.0, 10.0))
    m = np.zeros((10, 10), bool)
    m[0, 2] = True  # pixel [2, 3) overlaps cell 0 [0, 2.5) and cell 1 [2.5, 5)
    assert np.argwhere(v.mask_to_cells(m)).tolist() == [[0, 0], [0, 1]]
    m[:] = False
    m[6, 5] = True  # pixel [5, 6) lies inside cell 2 [5, 7.5) only
    assert np.argwhere(v.mask_to_cells(m)).tolist() == [[2, 2]]


def test_region_past_the_image_padding_cells_stay_empty():
    # The view shows y in [-5, 15) of a 10 x 10 image: rows 0 and 3 are pure padding.
    v = View("v", "global", 4, 2, 0, (0.0, -5.0, 10.0, 15.0))
    rows, _ = v.cell_ranges(10, 10)
    assert rows == [(0, 0), (0, 5), (5, 10), (10, 10)]
    grid = v.mask_to_cells(np.ones((10, 10), bool))
    assert grid.tolist() == [[False, False], [True, True], [True, True], [False, False]]


def test_padding_several_cells_deep_stays_empty():
    # 8 rows of 2.5 px over y in [-5, 15): rows 0-1 are padding, 2-5 the image, 6-7 padding.
    # (A padding cell ending at y = -2.5 must not become the slice mask[0:-2].)
    v = View("v", "global", 8, 2, 0, (0.0, -5.0, 10.0, 15.0))
    rows, _ = v.cell_ranges(10, 10)
    assert rows == [(0, 0), (0, 0), (0, 3), (2, 5), (5, 8), (7, 10), (10, 10), (10, 10)]
    grid = v.mask_to_cells(np.ones((10, 10), bool))
    assert np.flatnonzero(grid.any(1)).tolist() == [2, 3, 4, 5]
    m = np.zeros((10, 10), bool)
    m[4, 0] = True  # pixel [4, 5) lies in row 3 = [2.5, 5) only
    assert np.argwhere(v.mask_to_cells(m)).tolist() == [[3, 0]]


def test_cell_box():
    v = View("v", "global", 24, 24, 0, (0.0, -168.0, 672.0, 504.0))
    assert v.cell_box(6, 2) == (56.0, 0.0, 84.0, 28.0)
    assert v.cell_box(0, 0) == (0.0, -168.0, 28.0, -140.0)


def test_grow_cells_rings():
    g = np.zeros((5, 5), bool)
    g[2, 2] = True
    one = grow_cells(g, 1)
    assert np.argwhere(one).tolist() == [[r, c] for r in (1, 2, 3) for c in (1, 2, 3)]
    assert grow_cells(g, 2).all()
    assert (grow_cells(g, 0) == g).all()
    corner = np.zeros((5, 5), bool)
    corner[0, 0] = True
    assert np.argwhere(grow_cells(corner, 1)).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert not g[1, 1], "grow_cells must not modify its input"


def test_layout_indices_and_grids_round_trip():
    views = [
        View("tile 0", "local", 2, 3, 0, (0.0, 0.0, 6.0, 4.0)),
        View("thumbnail", "global", 2, 3, 6, (0.0, 0.0, 6.0, 4.0)),
    ]
    lay = ImageLayout(torch.arange(20, 32), views, (6, 4))
    assert lay.n_tokens == 12
    assert lay.token_indices(views[1]).tolist() == [6, 7, 8, 9, 10, 11]
    grid = np.array([[True, False, False], [False, False, True]])
    idx = lay.indices_of_cells(views[1], grid)
    assert idx.tolist() == [6, 11]
    assert (lay.grid_of(views[1], idx) == grid).all()
    assert not lay.grid_of(views[0], idx).any()  # 6 and 11 are not tile-0 tokens
    assert [v.name for v in lay.views_of_kind("local")] == ["tile 0"]
    assert [v.name for v in lay.views_of_kind(None)] == ["tile 0", "thumbnail"]
    assert lay.view("thumbnail") is views[1]
    with pytest.raises(KeyError, match="thumbnail"):
        lay.view("tile 9")


def test_layout_rejects_inconsistent_token_count_and_mask_shape():
    v = View("image", "global", 2, 2, 0, (0.0, 0.0, 4.0, 4.0))
    with pytest.raises(ValueError, match="describe 4 visual tokens but the input holds 3"):
        ImageLayout(torch.arange(3), [v], (4, 4))
    lay = ImageLayout(torch.arange(4), [v], (4, 4))
    with pytest.raises(ValueError, match="does not match the image size"):
        lay.object_cells(np.zeros((4, 5), bool))


def test_object_cells_cache_follows_the_mask():
    v = View("image", "global", 2, 2, 0, (0.0, 0.0, 4.0, 4.0))
    lay = ImageLayout(torch.arange(4), [v], (4, 4))
    a = np.zeros((4, 4), bool)
    a[0, 0] = True
    b = np.zeros((4, 4), bool)
    b[3, 3] = True
    assert lay.object_indices(a).tolist() == [0]
    assert lay.object_indices(b).tolist() == [3]
    assert lay.object_indices(a).tolist() == [0]


# --------------------------------------------------------------------------- LLaVA (pad to square)


def test_llava_nonsquare_view_region(tiny_llava):
    # 672 x 336 -> square 672, pasted at y = (672 - 336) // 2 = 168: the view shows y in [-168, 504).
    (v,) = tiny_llava.views((672, 336))
    assert (v.rows, v.cols, v.offset, v.kind) == (24, 24, 0, "global")
    assert v.region == pytest.approx((0.0, -168.0, 672.0, 504.0))
    # odd difference: 673 x 336 -> (673 - 336) // 2 = 168 (floor), as pad_to_square does.
    (v,) = tiny_llava.views((336, 673))
    assert v.region == pytest.approx((-168.0, 0.0, 505.0, 673.0))


def test_llava_rectangle_maps_to_hand_computed_cells(tiny_llava):
    size = (672, 336)  # cells of 672 / 24 = 28 original px; image rows start at padded y = 168
    lay = _layout(tiny_llava, size)
    mask = _rect_mask(size, 56, 0, 112, 28)  # padded y [168, 196) -> row 6; x [56, 112) -> cols 2, 3
    cells = lay.object_cells(mask)["image"]
    assert sorted(map(tuple, np.argwhere(cells).tolist())) == [(6, 2), (6, 3)]
    assert lay.object_indices(mask).tolist() == [6 * 24 + 2, 6 * 24 + 3]


@pytest.mark.parametrize(
    ("x", "y", "cell"),
    [
        (140, 10, (6, 5)),  # x = 28 * 5 exactly: only the cell starting there
        (139, 10, (6, 4)),  # one pixel to the left: the previous cell
        (0, 0, (6, 0)),  # the image's first row sits in padded row 168 = 6 * 28
        (10, 28, (7, 0)),  # padded y = 196 = 7 * 28: first pixel of row 7
        (671, 335, (17, 23)),  # padded y = 503 -> row 17 (503 // 28), x -> col 23
    ],
)
def test_llava_single_pixel_maps_to_one_cell(tiny_llava, x, y, cell):
    size = (672, 336)
    lay = _layout(tiny_llava, size)
    mask = np.zeros((336, 672), bool)
    mask[y, x] = True
    assert lay.object_indices(mask).tolist() == [cell[0] * 24 + cell[1]]


def test_llava_crop_mode_region(tiny_llava):
    # Centre crop instead of pad: 672 x 336 -> shortest edge 336 (no resize) -> crop x in [168, 504).
    import vlmloc

    vlm = vlmloc.load_model(tiny_llava.model_id, device="cpu", llava_preprocess="crop")
    (v,) = vlm.views((672, 336))
    assert v.region == pytest.approx((168.0, 0.0, 504.0, 336.0))
    lay = _layout(vlm, (672, 336))
    mask = _rect_mask((672, 336), 100, 0, 180, 14)  # only x in [168, 180) is visible: col 0, row 0
    assert lay.object_indices(mask).tolist() == [0]


# --------------------------------------------------------------------------- InternVL (tiles + thumbnail)


def test_internvl_two_tile_views(tiny_internvl):
    views = tiny_internvl.views((896, 448))  # 2 x 1 tiles of 448 + a thumbnail
    assert [(v.name, v.kind, v.offset, v.region) for v in views] == [
        ("tile 0", "local", 0, (0.0, 0.0, 448.0, 448.0)),
        ("tile 1", "local", 256, (448.0, 0.0, 896.0, 448.0)),
        ("thumbnail", "global", 512, (0.0, 0.0, 896.0, 448.0)),
    ]
    assert all((v.rows, v.cols) == (16, 16) for v in views)


def test_internvl_tiles_are_row_major(tiny_internvl):
    views = tiny_internvl.views((896, 896))  # 2 x 2 tiles
    assert [v.region for v in views[:4]] == [
        (0.0, 0.0, 448.0, 448.0),
        (448.0, 0.0, 896.0, 448.0),  # tile 1 is to the right of tile 0, not below it
        (0.0, 448.0, 448.0, 896.0),
        (448.0, 448.0, 896.0, 896.0),
    ]
    assert views[-1].name == "thumbnail"


def test_internvl_object_across_two_tiles(tiny_internvl):
    size = (896, 448)
    lay = _layout(tiny_internvl, size)
    mask = _rect_mask(size, 420, 100, 476, 130)  # crosses x = 448
    # tiles: 28 px cells. x [420, 448) -> tile 0 col 15; x [448, 476) -> tile 1 col 0; y [100, 130) -> rows 3, 4.
    # thumbnail: 896 px -> 448, so 56 px per cell horizontally: x [420, 476) -> cols 7, 8; rows 3, 4 (28 px).
    tile0 = [3 * 16 + 15, 4 * 16 + 15]
    tile1 = [256 + 3 * 16 + 0, 256 + 4 * 16 + 0]
    thumb = [512 + 3 * 16 + 7, 512 + 3 * 16 + 8, 512 + 4 * 16 + 7, 512 + 4 * 16 + 8]
    assert lay.object_indices(mask).tolist() == tile0 + tile1 + thumb
    assert lay.object_indices(mask, kind="local").tolist() == tile0 + tile1
    assert lay.object_indices(mask, kind="global").tolist() == thumb
    cells = lay.object_cells(mask)
    assert sorted(map(tuple, np.argwhere(cells["thumbnail"]).tolist())) == [(3, 7), (3, 8), (4, 7), (4, 8)]


def test_internvl_single_tile_pixel(tiny_internvl):
    views = tiny_internvl.views((448, 448))
    assert [(v.name, v.kind, v.n_tokens) for v in views] == [("image", "global", 256)]
    lay = _layout(tiny_internvl, (448, 448))
    mask = np.zeros((448, 448), bool)
    mask[84, 140] = True  # y = 3 * 28, x = 5 * 28: the first pixel of cell (3, 5)
    assert lay.object_indices(mask).tolist() == [3 * 16 + 5]


# --------------------------------------------------------------------------- against the processors' pixels


def _changed_cells(a: torch.Tensor, b: torch.Tensor, grid: int, tol: float = 1e-4) -> np.ndarray:
    """Per view ``[n_views, grid, grid]``: did any pixel of the cell change between two pixel_values?"""
    d = (a - b).abs().sum(1)  # [n, H, W]
    n, hh, ww = d.shape
    return (d.reshape(n, grid, hh // grid, grid, ww // grid) > tol).any(4).any(2).numpy()


def _paint(size, box, colour=(255, 0, 0), background=(90, 90, 90)):
    base = Image.new("RGB", size, background)
    painted = base.copy()
    painted.paste(colour, box)
    return base, painted


def test_llava_processor_pixels_match_mask_cells(tiny_llava):
    # 336 x 168: padding to 336 x 336 pastes the image at y = 84 and no resize happens,
    # so the painted pixels land exactly where the mask mapping says.
    size, box = (336, 168), (30, 0, 45, 20)
    base, painted = _paint(size, box)
    prompt = tiny_llava.prompt("classification")
    pa = tiny_llava.encode([base], [prompt])["pixel_values"]
    pb = tiny_llava.encode([painted], [prompt])["pixel_values"]
    changed = _changed_cells(pa, pb, 24)[0]
    # by hand: x [30, 45) -> cols 2 (28..41), 3 (42..55); padded y [84, 104) -> rows 6, 7
    assert sorted(map(tuple, np.argwhere(changed).tolist())) == [(6, 2), (6, 3), (7, 2), (7, 3)]
    lay = _layout(tiny_llava, size)
    assert (lay.object_cells(_rect_mask(size, *box))["image"] == changed).all()


def test_internvl_processor_tiles_match_mask_cells(tiny_internvl):
    size, box = (896, 896), (476, 28, 532, 84)  # inside tile 1 (top right): local x [28, 84), y [28, 84)
    base, painted = _paint(size, box)
    prompt = tiny_internvl.prompt("classification")
    pa = tiny_internvl.encode([base], [prompt])["pixel_values"]
    pb = tiny_internvl.encode([painted], [prompt])["pixel_values"]
    assert pa.shape == (5, 3, 448, 448)  # 4 tiles + thumbnail
    changed = _changed_cells(pa[:4], pb[:4], 16)
    assert not changed[[0, 2, 3]].any()
    assert sorted(map(tuple, np.argwhere(changed[1]).tolist())) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    cells = _layout(tiny_internvl, size).object_cells(_rect_mask(size, *box))
    for t in range(4):
        assert (cells[f"tile {t}"] == changed[t]).all()


def test_internvl_processor_thumbnail_matches_mask_cells(tiny_internvl):
    # 896 x 448: the two tiles are unresized crops; the thumbnail is squeezed 2x horizontally.
    # The block x [392, 504) spans the tile boundary and is aligned to 56 px (a thumbnail cell).
    size, box = (896, 448), (392, 112, 504, 168)
    base, painted = _paint(size, box)
    prompt = tiny_internvl.prompt("classification")
    pa = tiny_internvl.encode([base], [prompt])["pixel_values"]
    pb = tiny_internvl.encode([painted], [prompt])["pixel_values"]
    assert pa.shape[0] == 3
    cells = _layout(tiny_internvl, size).object_cells(_rect_mask(size, *box))
    changed = _changed_cells(pa[:2], pb[:2], 16)
    assert (cells["tile 0"] == changed[0]).all() and (cells["tile 1"] == changed[1]).all()
    assert sorted(map(tuple, np.argwhere(changed[0]).tolist())) == [(r, c) for r in (4, 5) for c in (14, 15)]
    # The thumbnail is resampled (bicubic blurs a pixel or two into neighbours): compare the cells
    # that changed strongly, i.e. by more than half of the largest per-cell change.
    d = (pa[2] - pb[2]).abs().sum(0).reshape(16, 28, 16, 28).mean((1, 3)).numpy()
    strong = d > 0.5 * d.max()
    assert sorted(map(tuple, np.argwhere(strong).tolist())) == [(r, c) for r in (4, 5) for c in (7, 8)]
    assert (cells["thumbnail"] == strong).all()
