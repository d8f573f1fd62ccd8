"""The load-time geometry check: the processor's pixels against the family's views.

A rectangle is painted on a plain image and only the processor runs; the cells of ``pixel_values``
that changed must be the cells the views name. The check must pass on the toys and the tiny models
at the real geometry, make ``llava_preprocess`` mean what it says whatever image processor a LLaVA
checkpoint names, and catch a wrong view with a sentence saying what the processor did.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import vlmloc
from PIL import Image
from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas
from vlmloc.families.internvl import InternVLFamily
from vlmloc.geometry import View
from vlmloc.processor_check import GEOMETRY_PROBES, GeometryError, check_geometry
from vlmloc.testing import save_tiny


@pytest.fixture(scope="module")
def tiny_clip_llava(tmp_path_factory):
    """The tiny LLaVA saved as a checkpoint whose processor config names ``CLIPImageProcessor``."""
    return save_tiny(
        "llava",
        tmp_path_factory.mktemp("tiny-clip"),
        model_id="tiny-clip-llava",
        image_processor_type="CLIPImageProcessor",
    ).model_id


@pytest.mark.parametrize("model_id", ["toy-llava", "toy-internvl"])
def test_toys_pass_the_check_at_load(model_id):
    vlm = vlmloc.load_model(model_id, device="cpu")
    assert len(vlm.geometry_check) == 3 and all(r.ok for r in vlm.geometry_check)
    assert all(r.observed for r in vlm.geometry_check[:1])  # the wide probe is seen by the model


def test_tiny_models_at_real_geometry_match_token_for_token(tiny_vlm):
    # At 336 px and 448 px tiles the rectangle covers whole cells: the changed cells are the named ones.
    assert [r.observed == r.expected for r in tiny_vlm.geometry_check] == [True, True, True]
    if tiny_vlm.family.name == "internvl":  # the panorama is cut into tiles + a thumbnail
        assert len(tiny_vlm.views(tiny_vlm.geometry_check[2].image_size)) > 2


class _CountingProcessor:
    """The real processor, with every call counted (number of images per call)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.calls: list[int] = []

    def __call__(self, *args, **kwargs):
        self.calls.append(len(kwargs["images"]))
        return self._inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_check_costs_processor_calls_only(tiny_internvl):
    """The check runs the processor, one call per probe, and never the model: it is handed a
    stand-in that has no model at all (InternVL at 448 px, up to 12 tiles: the costliest processor)."""
    counting = _CountingProcessor(tiny_internvl.processor)
    stand_in = SimpleNamespace(
        model_id=tiny_internvl.model_id,
        family=tiny_internvl.family,
        config=tiny_internvl.config,
        processor=counting,
    )
    results = check_geometry(stand_in)
    assert counting.calls == [2] * len(GEOMETRY_PROBES)  # a plain and a painted image per probe
    assert len(results) == len(GEOMETRY_PROBES) and all(r.ok for r in results)


def test_clip_checkpoint_pads_after_loading(tiny_clip_llava):
    from transformers import CLIPImageProcessor, LlavaImageProcessor

    vlm = vlmloc.load_model(tiny_clip_llava, device="cpu")  # llava_preprocess="pad", the default
    ip = vlm.processor.image_processor
    assert type(ip) is LlavaImageProcessor and ip.do_pad
    assert all(r.ok and r.observed == r.expected for r in vlm.geometry_check)
    # a 336 x 168 image is padded, not cropped: the top quarter of pixel_values is the mean colour
    enc = vlm.encode([Image.new("RGB", (336, 168), (250, 20, 20))], [vlm.prompt("classification")])
    px = enc["pixel_values"][0]
    assert (
        px[:, :80].std(dim=(1, 2)).max() < 1e-3 and px[:, 100:236].mean(dim=(1, 2))[0] > 1.5
    )  # pad rows; red image rows
    assert vlm.views((336, 168))[0].region == pytest.approx((0.0, -84.0, 336.0, 252.0))

    crop = vlmloc.load_model(tiny_clip_llava, device="cpu", llava_preprocess="crop")
    assert type(crop.processor.image_processor) is CLIPImageProcessor
    assert crop.views((672, 336))[0].region == pytest.approx((168.0, 0.0, 504.0, 336.0))
    assert all(r.ok for r in crop.geometry_check)


def test_a_processor_that_ignores_do_pad_fails_loudly(tiny_clip_llava):
    """What load_model did before: set do_pad on a CLIPImageProcessor, which centre-crops anyway."""
    vlm = vlmloc.load_model(tiny_clip_llava, device="cpu", llava_preprocess="crop")
    vlm.processor.image_processor.do_pad = True  # views now assume a pad that never happens
    with pytest.raises(GeometryError) as info:
        check_geometry(vlm)
    msg = str(info.value)
    assert (
        "CLIPImageProcessor" in msg and "centre-crops it" in msg and "assumes it pads it to a square" in msg
    )
    assert "llava_preprocess='crop'" in msg
    # the example: a 500 x 375 image with an object near (100, 100, 150, 130)
    assert "146, 147, 148, 149, 170, 171, 172, 173, 194, 195, 196, 197" in msg
    assert "172, 173, 174, 175, 196, 197, 198, 199, 220, 221, 222, 223" in msg


def test_a_padding_processor_with_crop_views_is_caught(tiny_llava, monkeypatch):
    """The converse: the processor pads, but the views were computed for a crop."""
    ip = tiny_llava.processor.image_processor
    real = type(tiny_llava.family).views

    def crop_views(self, config, processor, size):
        monkeypatch.setattr(ip, "do_pad", False)
        try:
            return real(self, config, processor, size)
        finally:
            monkeypatch.setattr(ip, "do_pad", True)

    monkeypatch.setattr(type(tiny_llava.family), "views", crop_views)
    with pytest.raises(GeometryError, match=r"The processor pads it to a square, but the layout assumes it"):
        check_geometry(tiny_llava)


class _ShiftedLlava(type(vlmloc.families.LLAVA)):
    """Views off by one cell to the right: a subtle error the check must still see."""

    def views(self, config, processor, image_size):
        (v,) = super().views(config, processor, image_size)
        x0, y0, x1, y1 = v.region
        step = (x1 - x0) / v.cols
        return [View(v.name, v.kind, v.rows, v.cols, 0, (x0 - step, y0, x1 - step, y1))]


class _ColumnMajorInternVL(InternVLFamily):
    """Tiles listed column-major instead of row-major."""

    def views(self, config, processor, image_size):
        views = super().views(config, processor, image_size)
        if len(views) <= 2:
            return views
        cols, rows = self.tile_grid(processor, image_size)
        w, h = image_size
        out = []
        for i, v in enumerate(views[:-1]):
            r, c = i % rows, i // rows
            region = (c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows)
            out.append(View(v.name, v.kind, v.rows, v.cols, v.offset, region))
        return out + [views[-1]]


@pytest.mark.parametrize("which", ["llava", "internvl"])
def test_a_deliberately_wrong_view_is_caught(which, request, monkeypatch):
    vlm = request.getfixturevalue(f"tiny_{which}")
    monkeypatch.setattr(vlm, "family", _ShiftedLlava() if which == "llava" else _ColumnMajorInternVL())
    with pytest.raises(GeometryError, match="does not put the image where the token layout says") as info:
        check_geometry(vlm)
    assert "changed the pixels under visual tokens" in str(info.value)


def test_probe_rectangles_lie_inside_their_images():
    from vlmloc.processor_check import GEOMETRY_PROBES

    for (w, h), (x0, y0, x1, y1) in GEOMETRY_PROBES:
        assert 0 < x0 < x1 < 1 and 0 < y0 < y1 < 1 and w != h
    (w, h), _ = GEOMETRY_PROBES[2]
    cols, rows = get_optimal_tiled_canvas((h, w), (448, 448), 1, 12)
    assert cols * rows > 1  # the panorama needs several InternVL tiles


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_padding_processor_is_built_from_a_clip_config_of_either_backend(backend):
    import transformers
    from vlmloc.processor_check import llava_image_processor

    suffix = "Pil" if backend == "pil" else ""
    settings = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3)
    clip = getattr(transformers, f"CLIPImageProcessor{suffix}")(**settings)
    padded = llava_image_processor(clip, "pad")
    assert type(padded) is getattr(transformers, f"LlavaImageProcessor{suffix}") and padded.do_pad
    assert padded.size.shortest_edge == 336 and padded.crop_size.height == 336 and padded.resample == 3
    assert llava_image_processor(clip, "crop") is clip and clip.do_pad is False
    with pytest.raises(ValueError, match="llava_preprocess must be 'pad' or 'crop'"):
        llava_image_processor(clip, "stretch")
