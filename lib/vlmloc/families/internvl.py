"""InternVL-3.5 (native ``InternVLForConditionalGeneration``): tiles row-major, then a global thumbnail."""

from __future__ import annotations

from typing import Any

from transformers import InternVLForConditionalGeneration
from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

from ..answers import parse_internvl_box
from ..geometry import View
from ..metrics import Box
from ..paper import INTERNVL_8B
from .base import Family, Sites

#: The book's methods page: InternVL's grounding question wraps the name in <ref> tags.
INTERNVL_LOCALIZATION_Q = (
    "Please provide the bounding box coordinate of the region this sentence describes: <ref>{name}</ref>"
)


class InternVLFamily(Family):
    """InternVL-3.5. Boxes are ``<ref>name</ref><box>[[x1, y1, x2, y2]]</box>`` on a 0-1000 scale of the original image."""

    name = "internvl"
    hf_class = InternVLForConditionalGeneration
    paper_model = INTERNVL_8B
    sites = Sites(vision_layers="model.vision_tower.encoder.layer")

    def question(self, task: str, category: str) -> str:
        if task == "localization":
            return INTERNVL_LOCALIZATION_Q.format(name=category)
        return super().question(task, category)

    def chat_prompt(self, processor: Any, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def tile_grid(self, processor: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        """``(cols, rows)`` of local tiles, exactly as the image processor chooses them."""
        ip = processor.image_processor
        w, h = image_size
        tile = (int(ip.size["height"]), int(ip.size["width"]))
        return get_optimal_tiled_canvas((h, w), tile, int(ip.min_patches), int(ip.max_patches))

    def views(self, config: Any, processor: Any, image_size: tuple[int, int]) -> list[View]:
        w, h = image_size
        vc = config.vision_config
        img = vc.image_size[0] if isinstance(vc.image_size, list | tuple) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, list | tuple) else vc.patch_size
        side = int(round(img // patch * config.downsample_ratio))
        cols, rows = self.tile_grid(processor, image_size)
        n = cols * rows
        if n == 1:  # a single tile is the whole image; InternVL adds no thumbnail then
            return [View("image", "global", side, side, 0, (0.0, 0.0, float(w), float(h)))]
        views = []
        for i in range(n):
            c, r = i % cols, i // cols  # row-major, as crop_image_to_patches cuts them
            region = (c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows)
            views.append(View(f"tile {i}", "local", side, side, i * side * side, region))
        views.append(View("thumbnail", "global", side, side, n * side * side, (0.0, 0.0, float(w), float(h))))
        return views

    def format_box(self, box: Box, views: list[View], image_size: tuple[int, int], category: str) -> str:
        w, h = image_size
        v = [box[0] / w, box[1] / h, box[2] / w, box[3] / h]
        coords = ", ".join(str(int(round(min(max(c, 0.0), 1.0) * 1000))) for c in v)
        return f"<ref>{category}</ref><box>[[{coords}]]</box>"

    def parse_box(self, text: str, views: list[View], image_size: tuple[int, int]) -> Box | None:
        b = parse_internvl_box(text)
        if b is None:
            return None
        w, h = image_size
        return (b[0] / 1000 * w, b[1] / 1000 * h, b[2] / 1000 * w, b[3] / 1000 * h)


INTERNVL = InternVLFamily()
