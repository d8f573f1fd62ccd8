"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): one dynamic-resolution view of merged patches.

What differs from LLaVA and InternVL, each read from transformers' own code:

- **Resize.** The image processor resizes each image, keeping its aspect ratio, to multiples of
  ``patch_size * merge_size`` (14 * 2 = 28 px) with an area in ``[min_pixels, max_pixels]``
  (``smart_resize``). One LLM token covers 28 x 28 resized pixels, so the image is one view of
  ``(H' / 28) x (W' / 28)`` tokens over the whole original image (a stretch, no padding).
- **Token order.** ``pixel_values`` is flat: one row per 14 px patch, the rows of each 2 x 2 merge
  group consecutive and the groups row-major (``patchify``). The tower permutes the groups into
  attention windows and back (``reverse_indices``), and the merger makes one token of each group,
  so visual token ``k`` shows merge group ``k``. :meth:`Qwen25VLFamily.token_rows` says which rows
  that is, and the load-time check (:mod:`vlmloc.processor_check`) proves it on painted images.
- **Positions.** M-RoPE: position ids are ``[3, B, S]`` (temporal, height, width); an image's
  tokens take their grid coordinates and the text after it continues from the largest of them plus
  one, so a position is not a sequence index. :meth:`Qwen25VLFamily.position_ids` computes them
  with the model's own ``get_rope_index``; :class:`vlmloc.adapter.VLM` passes them on every forward.
- **Boxes.** Answers are JSON, ``[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]``, often in a fenced
  block, in pixels of the *resized* image; they are mapped back to the original image's pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from ..answers import parse_qwen_box
from ..geometry import View
from ..metrics import Box
from .base import Family, Sites

#: The grounding prompt of the Qwen2.5-VL cookbook (spatial understanding): name the object, ask for JSON.
QWEN_LOCALIZATION_Q = "Locate the {name} in the image, output its bbox coordinates using JSON format."


@dataclass(frozen=True)
class ResizedView(View):
    """A view that also knows the ``(width, height)`` in pixels of the resized image it shows,
    the frame Qwen2.5-VL writes its boxes in."""

    resized: tuple[int, int] = (0, 0)


class Qwen25VLFamily(Family):
    """Qwen2.5-VL. Boxes are JSON ``"bbox_2d": [x1, y1, x2, y2]`` in pixels of the resized image."""

    name = "qwen2_5_vl"
    # A JSON box in a fenced block, digits one token each in Qwen2's tokenizer: ~31 tokens to the label.
    answer_tokens = 48
    # M-RoPE gives rows the middle rotary frequencies and columns the slowest ones.
    row_column_cue = "M-RoPE gives both, but its row pairs turn faster than its column pairs"
    hf_class = Qwen2_5_VLForConditionalGeneration
    # The merger (2 x 2 patches -> one LLM token) lives inside the vision tower. Its output, like
    # the blocks' outputs, is in the tower's window order, not the token order: the tower puts the
    # tokens back in order only after the merger.
    sites = Sites(
        vision_tower="model.visual",
        vision_layers="model.visual.blocks",
        projector="model.visual.merger",
    )

    # --- prompts -------------------------------------------------------------------------------
    def question(self, task: str, category: str) -> str:
        if task == "localization":
            return QWEN_LOCALIZATION_Q.format(name=category)
        return super().question(task, category)

    def chat_prompt(self, processor: Any, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    # --- geometry ------------------------------------------------------------------------------
    @staticmethod
    def _patch_merge(processor: Any) -> tuple[int, int]:
        ip = processor.image_processor
        return int(ip.patch_size), int(ip.merge_size)

    def resized(self, processor: Any, image_size: tuple[int, int]) -> tuple[int, int]:
        """``(width, height)`` the processor resizes an image of ``image_size`` to (its own ``smart_resize``)."""
        ip = processor.image_processor
        patch, merge = self._patch_merge(processor)
        w, h = image_size
        rh, rw = smart_resize(
            h,
            w,
            factor=patch * merge,
            min_pixels=int(ip.size["shortest_edge"]),
            max_pixels=int(ip.size["longest_edge"]),
        )
        return rw, rh

    def views(self, config: Any, processor: Any, image_size: tuple[int, int]) -> list[View]:
        patch, merge = self._patch_merge(processor)
        vc = config.vision_config
        if (int(vc.patch_size), int(vc.spatial_merge_size)) != (patch, merge):
            raise ValueError(
                f"the image processor cuts {patch} px patches merged {merge} x {merge} but the vision "
                f"config says {vc.patch_size} px and {vc.spatial_merge_size}"
            )
        rw, rh = self.resized(processor, image_size)
        cell = patch * merge
        w, h = image_size
        region = (0.0, 0.0, float(w), float(h))
        return [ResizedView("image", "global", rh // cell, rw // cell, 0, region, resized=(rw, rh))]

    @staticmethod
    def token_rows(grid_h: int, grid_w: int, merge: int) -> np.ndarray:
        """``[n_tokens, merge * merge]``: the rows of ``pixel_values`` (14 px patches) behind each
        visual token, in token order, for an image of ``grid_h x grid_w`` patches.

        ``patchify`` writes the patches of one ``merge x merge`` group on consecutive rows (groups
        row-major), and the merger turns each run of ``merge * merge`` rows into one token after the
        tower has put its windows back in order; so token ``k`` is rows ``k * 4 .. k * 4 + 3``.
        """
        n = grid_h * grid_w // (merge * merge)
        return np.arange(n * merge * merge).reshape(n, merge * merge)

    def token_pixels(self, config: Any, enc: Any, image: int) -> torch.Tensor:
        """The pixels behind each visual token of image ``image`` of a processor output,
        ``[n_tokens, channels, cell, cell]``: each token's merge group put back together."""
        vc = config.vision_config
        patch, merge, temporal = int(vc.patch_size), int(vc.spatial_merge_size), int(vc.temporal_patch_size)
        grids = enc["image_grid_thw"].tolist()
        t, gh, gw = grids[image]
        start = sum(a * b * c for a, b, c in grids[:image])
        rows = enc["pixel_values"][start : start + t * gh * gw]
        idx = torch.as_tensor(self.token_rows(gh, gw, merge), device=rows.device)
        n = idx.shape[0]
        # a row is (channel, temporal copy, patch row, patch col); both temporal copies are the image
        blocks = rows[idx].reshape(n, merge, merge, -1, temporal, patch, patch)[:, :, :, :, 0]
        return blocks.permute(0, 3, 1, 4, 2, 5).reshape(n, -1, merge * patch, merge * patch)

    def window_index(self, config: Any, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """Row ``j`` of the merger's output (and merge group ``j`` of every tower block's output) is
        visual token ``window_index[j]``, over all images of a batch in order: the tower works in
        attention-window order and restores the token order only after the merger, so tower and
        ``projector`` hidden states read at those modules are put in token order by
        ``values[window_index.argsort()]`` (per merge group for the blocks)."""
        from transformers.vision_utils import get_vision_window_index

        vc = config.vision_config
        index, _ = get_vision_window_index(
            image_grid_thw.cpu(), int(vc.spatial_merge_size), int(vc.window_size), int(vc.patch_size)
        )
        return index

    # --- the tower's own grid (chapter 4's probes) ----------------------------------------------
    #: Chapter 4's square: 448 px, 16 x 16 tokens (InternVL's tile), or the largest square
    #: ``max_pixels`` allows (the toy: 96 px, 12 x 12 tokens).
    PROBE_SIDE = 448

    def probe_image_side(self, processor: Any) -> int | None:
        """Every image resized to one square (each image would otherwise get a grid of its own)."""
        patch, merge = self._patch_merge(processor)
        cell = patch * merge
        largest = int(float(processor.image_processor.size["longest_edge"]) ** 0.5) // cell * cell
        return min(self.PROBE_SIDE // cell * cell, largest)

    def tower_side(self, config: Any, processor: Any) -> int:
        side = self.probe_image_side(processor)
        return side // int(config.vision_config.patch_size)

    def in_token_order(self, config: Any, enc: Any, stage: str, value: Any) -> Any:
        """Tower blocks' and the merger's outputs are flat (``[patches or tokens, width]``, all
        images) and in attention-window order: put them back per image, row-major (the tower
        over its patch grid, each token's ``merge x merge`` patches in place)."""
        if stage not in ("tower", "projector"):
            return value
        grid = enc["image_grid_thw"]
        if len({tuple(g) for g in grid.tolist()}) != 1:
            raise ValueError(
                "images of one batch have different grids; resize them to probe_image_side first"
            )
        merge = int(config.vision_config.spatial_merge_size)
        order = self.window_index(config, grid).argsort().to(value.device)
        n, (_, gh, gw), width = len(grid), grid[0].tolist(), value.shape[-1]
        if stage == "projector":
            return value[order].reshape(n, -1, width)
        groups = value.reshape(-1, merge * merge, width)[order]
        x = groups.reshape(n, gh // merge, gw // merge, merge, merge, width).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, gh * gw, width)

    # --- positions -----------------------------------------------------------------------------
    def position_ids(self, model: Any, inputs: Any) -> torch.Tensor:
        """M-RoPE positions ``[3, B, S]`` from the model's own ``get_rope_index``.

        ``inputs`` may be longer than the processor output it came from (an answer appended for
        teacher forcing): the extra tokens are text, so their token types are padded with zeros.
        """
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        types = inputs.get("mm_token_type_ids")
        if types is None:
            types = (ids == int(model.config.image_token_id)).int()
        elif types.shape[1] < ids.shape[1]:
            types = torch.cat([types, types.new_zeros(types.shape[0], ids.shape[1] - types.shape[1])], 1)
        pos, _ = model.model.get_rope_index(
            ids, types, image_grid_thw=inputs.get("image_grid_thw"), attention_mask=mask
        )
        return pos

    # --- answers -------------------------------------------------------------------------------
    @staticmethod
    def _scale(views: list[View], image_size: tuple[int, int]) -> tuple[float, float]:
        """Resized pixels per original pixel, along x and y."""
        view = views[0]
        if not isinstance(view, ResizedView):
            raise TypeError("Qwen2.5-VL boxes need the family's own views (ResizedView)")
        w, h = image_size
        return view.resized[0] / w, view.resized[1] / h

    def format_box(self, box: Box, views: list[View], image_size: tuple[int, int], category: str) -> str:
        sx, sy = self._scale(views, image_size)
        rw, rh = views[0].resized  # type: ignore[attr-defined]
        coords = [
            int(round(min(max(box[0] * sx, 0.0), rw))),
            int(round(min(max(box[1] * sy, 0.0), rh))),
            int(round(min(max(box[2] * sx, 0.0), rw))),
            int(round(min(max(box[3] * sy, 0.0), rh))),
        ]
        return json.dumps([{"bbox_2d": coords, "label": category}])

    def parse_box(self, text: str, views: list[View], image_size: tuple[int, int]) -> Box | None:
        b = parse_qwen_box(text)
        if b is None:
            return None
        sx, sy = self._scale(views, image_size)
        return (b[0] / sx, b[1] / sy, b[2] / sx, b[3] / sy)


QWEN25VL = Qwen25VLFamily()
