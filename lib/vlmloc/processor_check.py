"""Check, at load time, that the processor really puts an image where the family's views say.

Every chapter trusts :meth:`vlmloc.adapter.VLM.views`: the rectangle of the original image that each
token grid shows. The views are computed from the processor's *settings*, so a processor that
ignores a setting (a ``CLIPImageProcessor`` ignores ``do_pad`` and centre-crops) would silently put
every object under the wrong tokens. This module asks the processor itself: it paints a small
rectangle on a plain image, runs only the processor (no model), and compares the cells of
``pixel_values`` whose pixels changed with the cells :meth:`vlmloc.geometry.View.mask_to_cells`
names. A mismatch raises :class:`GeometryError` saying what the processor did instead. A processor
whose ``pixel_values`` are flat patches (Qwen2.5-VL) is compared per visual token: the family's
:meth:`~vlmloc.families.Family.token_pixels` says which pixels sit behind each token, so a wrong
token order fails the same way.

It costs processor calls only: two per test image (a wide one, a tall one and a panorama that
InternVL cuts into several tiles), well under a second even for InternVL's 12 tiles of 448 px.

:func:`llava_image_processor` builds the image processor that does what ``llava_preprocess`` asks
("pad" or "crop") from whatever image processor a LLaVA checkpoint names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .geometry import View

log = logging.getLogger("vlmloc")

__all__ = ["GEOMETRY_PROBES", "GeometryError", "ProbeResult", "check_geometry", "llava_image_processor"]

#: ``(width, height)`` of each test image and the painted rectangle as fractions ``(x0, y0, x1, y1)``.
#: Off-centre on purpose: a crop cuts the tall image's rectangle off, a pad shifts the wide one's.
GEOMETRY_PROBES: tuple[tuple[tuple[int, int], tuple[float, float, float, float]], ...] = (
    ((500, 375), (0.20, 0.27, 0.30, 0.35)),  # wide (4:3)
    ((300, 480), (0.55, 0.08, 0.75, 0.16)),  # tall (5:8), near the top
    ((1200, 300), (0.62, 0.30, 0.72, 0.60)),  # panorama (4:1): InternVL cuts several tiles
)
_BACKGROUND, _PAINT = (128, 128, 128), (250, 20, 20)


class GeometryError(RuntimeError):
    """The processor puts the image somewhere else than the family's views say."""


@dataclass
class ProbeResult:
    """One test image: where the rectangle is, which visual tokens the layout names, which changed."""

    image_size: tuple[int, int]
    box: tuple[int, int, int, int]
    expected: list[int]  # indices into the image's visual tokens, from the views
    observed: list[int]  # cells of pixel_values whose pixels changed
    ok: bool


# --------------------------------------------------------------------------- LLaVA: pad or crop, really


def llava_image_processor(ip: Any, preprocess: str) -> Any:
    """The image processor that does ``preprocess`` ("pad" or "crop"), built from ``ip``'s settings.

    Only ``LlavaImageProcessor`` pads to a square; a ``CLIPImageProcessor`` (what some LLaVA-1.5
    checkpoints name) has no ``do_pad`` and always centre-crops. For "pad" any other class is
    replaced by a ``LlavaImageProcessor`` (the same backend, resize, crop and normalisation
    settings, ``do_pad=True``); for "crop" padding is switched off.
    """
    from transformers import LlavaImageProcessor, LlavaImageProcessorPil
    from transformers.image_processing_backends import PilBackend

    if preprocess not in ("pad", "crop"):
        raise ValueError(f"llava_preprocess must be 'pad' or 'crop', got {preprocess!r}")
    if preprocess == "crop":
        ip.do_pad = False  # other classes ignore it, but the views read it
        return ip
    if isinstance(ip, LlavaImageProcessor | LlavaImageProcessorPil):
        ip.do_pad = True
        return ip
    cls = LlavaImageProcessorPil if isinstance(ip, PilBackend) else LlavaImageProcessor
    settings = {k: v for k, v in ip.to_dict().items() if k not in ("image_processor_type", "processor_class")}
    settings["do_pad"] = True
    new = cls(**settings)
    log.info("%s has no padding; using %s with its settings and do_pad=True", type(ip).__name__, cls.__name__)
    return new


def _llava_alternatives(family: Any, config: Any, processor: Any, size: tuple[int, int]) -> dict[str, View]:
    """What a LLaVA image processor may do to an image, each as the one view it would give."""
    ip = processor.image_processor
    out = {}
    for what, pad in (("pads it to a square", True), ("centre-crops it", False)):
        shim = SimpleNamespace(
            image_processor=SimpleNamespace(
                size=ip.size,
                crop_size=ip.crop_size,
                do_center_crop=getattr(ip, "do_center_crop", True),
                do_pad=pad,
            )
        )
        out[what] = family.views(config, shim, size)[0]
    v = out["pads it to a square"]
    out["stretches it to a square"] = View(v.name, v.kind, v.rows, v.cols, 0, (0.0, 0.0, *map(float, size)))
    return out


# --------------------------------------------------------------------------- the check


def _probe_images(size, frac) -> tuple[Image.Image, Image.Image, tuple[int, int, int, int], np.ndarray]:
    w, h = size
    box = (round(frac[0] * w), round(frac[1] * h), round(frac[2] * w), round(frac[3] * h))
    base = Image.new("RGB", size, _BACKGROUND)
    painted = base.copy()
    ImageDraw.Draw(painted).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=_PAINT)
    mask = np.zeros((h, w), bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    return base, painted, box, mask


def _changed_cells(diff: np.ndarray, view: View) -> np.ndarray:
    """Cells of one view holding a strongly changed pixel (more than half the largest change)."""
    hh, ww = diff.shape
    if hh % view.rows or ww % view.cols:
        raise GeometryError(
            f"pixel_values of {ww}x{hh} px do not divide into the {view.rows}x{view.cols} token grid "
            f"of the view {view.name!r}; the processor's size and the vision config's patch size disagree"
        )
    return diff.reshape(view.rows, hh // view.rows, view.cols, ww // view.cols).any(3).any(1)


def _rect_cells(
    view: View, box: tuple[int, int, int, int], margin: float, size: tuple[int, int]
) -> np.ndarray:
    """Cells of ``view`` overlapping the box grown (margin > 0) or shrunk (margin < 0) by ``margin`` px."""
    w, h = size
    x0, y0 = max(0, int(np.floor(box[0] - margin))), max(0, int(np.floor(box[1] - margin)))
    x1, y1 = min(w, int(np.ceil(box[2] + margin))), min(h, int(np.ceil(box[3] + margin)))
    m = np.zeros((h, w), bool)
    if x1 > x0 and y1 > y0:
        m[y0:y1, x0:x1] = True
    return view.mask_to_cells(m)


def _indices(views: list[View], grids: list[np.ndarray]) -> list[int]:
    return [int(v.offset + i) for v, g in zip(views, grids, strict=True) for i in np.flatnonzero(g.ravel())]


def _agree(view: View, observed: np.ndarray, box, size, pixel_hw: tuple[int, int]) -> bool:
    """Observed cells lie between the cells of the box shrunk and grown by ~1.5 processed pixels.

    Resampling blurs the rectangle's edges by a pixel or two of ``pixel_values``, so a cell that
    the edge only grazes may or may not change; anything further off is a real disagreement.
    """
    x0, y0, x1, y1 = view.region
    per_px = max((x1 - x0) / pixel_hw[1], (y1 - y0) / pixel_hw[0])  # original pixels per processed pixel
    margin = 1.5 * per_px + 1.0
    core, hull = _rect_cells(view, box, -margin, size), _rect_cells(view, box, margin, size)
    return bool((core <= observed).all() and (observed <= hull).all())


def _probe_tokens(family, config, enc, views, box, mask, size):
    """The check for flat patches: the family says which pixels sit behind each visual token
    (:meth:`Family.token_pixels`); a token changed if its pixels did, and view ``v``'s token ``k``
    must be its cell ``(k // cols, k % cols)``. A wrong token order names other cells."""
    pa = family.token_pixels(config, enc, 0).float()
    pb = family.token_pixels(config, enc, 1).float()
    d = (pa - pb).abs().sum(1).flatten(1)  # [n_tokens, pixels]
    strong = (d > 0.5 * d.max() if d.max() > 0 else d > 0).any(1).numpy()
    observed = [strong[v.offset : v.offset + v.n_tokens].reshape(v.rows, v.cols) for v in views]
    expected = [v.mask_to_cells(mask) for v in views]
    hw = (views[0].rows * pa.shape[-2], views[0].cols * pa.shape[-1])  # the resized image
    ok = all(_agree(v, o, box, size, hw) for v, o in zip(views, observed, strict=True))
    return ProbeResult(size, box, _indices(views, expected), _indices(views, observed), ok), observed, hw


def check_geometry(vlm: Any, probes=GEOMETRY_PROBES) -> list[ProbeResult]:
    """Paint a rectangle on each probe image, run only the processor and compare cells with the views.

    Returns one :class:`ProbeResult` per probe; raises :class:`GeometryError` on the first mismatch,
    saying what the processor did (for LLaVA: pads, centre-crops or stretches) and what to pass.
    """
    family, config, processor = vlm.family, vlm.config, vlm.processor
    prompt = family.chat_prompt(processor, family.question("classification", ""))
    token_id = family.image_token_id(config)
    results = []
    for size, frac in probes:
        base, painted, box, mask = _probe_images(size, frac)
        enc = processor(images=[base, painted], text=[prompt, prompt], padding=True, return_tensors="pt")
        views = family.views(config, processor, size)
        n_tokens = int((enc["input_ids"][0] == token_id).sum())
        if n_tokens != sum(v.n_tokens for v in views):
            raise GeometryError(
                f"{vlm.model_id}: the processor gives a {size[0]}x{size[1]} image {n_tokens} visual tokens but "
                f"the family's views describe {sum(v.n_tokens for v in views)} ({len(views)} view(s)); "
                "check patch_size / image_seq_length / max_patches in the processor config"
            )
        if family.token_pixels(config, enc, 0) is not None:  # flat patches (Qwen2.5-VL): per token
            res, observed, hw = _probe_tokens(family, config, enc, views, box, mask, size)
            results.append(res)
            if not res.ok:
                raise GeometryError(_mismatch_message(vlm, res, views, observed, hw))
            continue
        pv = enc["pixel_values"].float()
        if pv.ndim != 4:  # pixels neither one image per view nor given per token by the family
            log.warning(
                "%s: pixel_values of shape %s is not one image per view; geometry not checked",
                vlm.model_id,
                tuple(pv.shape),
            )
            return results
        pa, pb = pv[: len(pv) // 2], pv[len(pv) // 2 :]
        if len(pa) != len(views):
            raise GeometryError(
                f"{vlm.model_id}: the processor cuts a {size[0]}x{size[1]} image into {len(pa)} view(s) but the "
                f"family's views list {len(views)} ({', '.join(v.name for v in views)})"
            )
        d = (pa - pb).abs().sum(1).numpy()  # [n_views, H, W]
        strong = d > 0.5 * d.max() if d.max() > 0 else d > 0
        observed = [_changed_cells(strong[i], v) for i, v in enumerate(views)]
        expected = [v.mask_to_cells(mask) for v in views]
        hw = tuple(pv.shape[-2:])
        ok = all(_agree(v, o, box, size, hw) for v, o in zip(views, observed, strict=True))
        res = ProbeResult(size, box, _indices(views, expected), _indices(views, observed), ok)
        results.append(res)
        if not ok:
            raise GeometryError(_mismatch_message(vlm, res, views, observed, hw))
    log.info("%s: processor geometry agrees with the views on %d test images", vlm.model_id, len(results))
    return results


def _span(indices: list[int]) -> str:
    if not indices:
        return "none"
    return (
        ", ".join(map(str, indices))
        if len(indices) <= 12
        else f"{len(indices)} tokens from {indices[0]} to {indices[-1]}"
    )


def _mismatch_message(vlm, res: ProbeResult, views, observed, hw) -> str:
    w, h = res.image_size
    ip = vlm.processor.image_processor
    head = (
        f"{vlm.model_id}: the processor ({type(ip).__name__}) does not put the image where the token layout "
        f"says. A rectangle at {res.box} of a {w}x{h} image changed the pixels under visual tokens "
        f"{_span(res.observed)}, but the layout names tokens {_span(res.expected)}"
    )
    if vlm.family.name != "llava":
        return (
            head + "; the family's views() do not match this processor (see lib/vlmloc/families/README.md)."
        )
    alternatives = _llava_alternatives(vlm.family, vlm.config, vlm.processor, res.image_size)
    did = [what for what, v in alternatives.items() if _agree(v, observed[0], res.box, res.image_size, hw)]
    assumed = "pads it to a square" if getattr(ip, "do_pad", False) else "centre-crops it"
    if did:
        what = did[0]
        hint = {
            "centre-crops it": "pass llava_preprocess='crop' (views that follow the crop) or an image processor "
            "that pads (LlavaImageProcessor with do_pad=True, what llava_preprocess='pad' builds)",
            "pads it to a square": "pass llava_preprocess='pad'",
            "stretches it to a square": "set do_resize with size={'height': S, 'width': S} off, or use "
            "LlavaImageProcessor (llava_preprocess='pad' or 'crop')",
        }[what]
        return f"{head}. The processor {what}, but the layout assumes it {assumed}; {hint}."
    return f"{head}. The layout assumes it {assumed}; the pixels fit neither padding, a centre crop nor a stretch."
