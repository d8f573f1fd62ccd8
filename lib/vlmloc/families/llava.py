"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one view, a square grid over the padded (or cropped) image."""

from __future__ import annotations

from typing import Any

from transformers import LlavaForConditionalGeneration

from ..answers import parse_bracket_box
from ..geometry import View
from ..metrics import Box
from ..paper import LLAVA_7B
from .base import Family, Sites


class LlavaFamily(Family):
    """LLaVA-1.5. Boxes are ``[x0, y0, x1, y1]`` in 0-1 of the image the model sees (the padded square)."""

    name = "llava"
    hf_class = LlavaForConditionalGeneration
    paper_model = LLAVA_7B
    sites = Sites(vision_layers="model.vision_tower.encoder.layers")

    def chat_prompt(self, processor: Any, question: str) -> str:
        # The book's methods page: LLaVA-1.5's chat format, exactly.
        return f"USER: <image>\n{question} ASSISTANT:"

    def views(self, config: Any, processor: Any, image_size: tuple[int, int]) -> list[View]:
        ip = processor.image_processor
        w, h = image_size
        patch = int(config.vision_config.patch_size)
        edge = int(ip.size["shortest_edge"]) if "shortest_edge" in (ip.size or {}) else int(ip.size["height"])
        crop = int(ip.crop_size["height"]) if getattr(ip, "do_center_crop", True) and ip.crop_size else edge
        if getattr(ip, "do_pad", False):
            # pad_to_square pastes the image at ((S - w) // 2, (S - h) // 2) on an S x S canvas.
            s = max(w, h)
            x0, y0 = -((s - w) // 2), -((s - h) // 2)
            scale = s / edge  # original pixels per resized pixel
            sw = sh = s
        else:
            scale = min(w, h) / edge
            x0 = y0 = 0.0
            sw, sh = w, h
        # centre crop of `crop` resized pixels out of the resized (sw, sh) / scale image
        cx0 = x0 + (sw / scale - crop) / 2 * scale
        cy0 = y0 + (sh / scale - crop) / 2 * scale
        grid = crop // patch
        region = (cx0, cy0, cx0 + crop * scale, cy0 + crop * scale)
        return [View("image", "global", grid, grid, 0, region)]

    def format_box(self, box: Box, views: list[View], image_size: tuple[int, int], category: str) -> str:
        x0, y0, x1, y1 = views[0].region
        sx, sy = x1 - x0, y1 - y0
        v = [(box[0] - x0) / sx, (box[1] - y0) / sy, (box[2] - x0) / sx, (box[3] - y0) / sy]
        return "[" + ", ".join(f"{min(max(c, 0.0), 1.0):.2f}" for c in v) + "]"

    def parse_box(self, text: str, views: list[View], image_size: tuple[int, int]) -> Box | None:
        b = parse_bracket_box(text)
        if b is None:
            return None
        x0, y0, x1, y1 = views[0].region
        sx, sy = x1 - x0, y1 - y0
        return (x0 + b[0] * sx, y0 + b[1] * sy, x0 + b[2] * sx, y0 + b[3] * sy)


LLAVA = LlavaFamily()
