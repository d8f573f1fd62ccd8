"""What every model family must say about itself, in one declarative place.

A *family* (LLaVA, InternVL, ...) knows its Hugging Face class, its prompts, its answer format and
how its processor turns an image into token views. Everything else (generation, interventions,
metrics) is shared. Adding a family, e.g. Qwen2.5-VL, means one module with a :class:`Family`
subclass and a few :func:`vlmloc.registry.register` calls; see ``lib/vlmloc/families/README.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..geometry import View
from ..metrics import Box

Task = Literal["classification", "localization"]
TASKS: tuple[Task, ...] = ("classification", "localization")

#: The book's methods page: LLaVA-1.5's own grounding prompt and the classification question.
LOCALIZATION_Q = "Please provide the bounding box coordinate of the region this sentence describes: {name}."
CLASSIFICATION_Q = "What objects are in this image?"


@dataclass(frozen=True)
class Sites:
    """Where a family keeps the modules the experiments touch: dotted paths from the HF model.

    Paths are data, as in pyvene's per-model tables: only families say where a layer, a head or the
    projector sits, and :mod:`vlmloc.sites` resolves them on the nnsight wrapper or the bare model.
    ``attention`` and ``o_proj`` are relative to one decoder layer. A digit component indexes a
    module list (``"layers.3"``).
    """

    vision_layers: str  # the tower's transformer layers, in execution order
    vision_tower: str = "model.vision_tower"
    projector: str = "model.multi_modal_projector"
    language_model: str = "model.language_model"  # the decoder (a base model without the head)
    decoder_layers: str = "model.language_model.layers"
    attention: str = "self_attn"  # within a decoder layer; its kwargs carry the attention mask
    o_proj: str = "self_attn.o_proj"  # within a decoder layer; its input is the heads' outputs
    lm_head: str = "lm_head"


class Family(ABC):
    """A model family: prompts, answer format and view geometry. Stateless; methods take the processor/config."""

    name: ClassVar[str]
    hf_class: ClassVar[Any]  # e.g. transformers.LlavaForConditionalGeneration
    sites: ClassVar[Sites]  # module paths, see :class:`Sites`
    #: The paper's model of this family, whose numbers a chapter sets beside this one's; None for a
    #: family the paper did not study (the chapter then shows the paper's models' numbers as context).
    paper_model: ClassVar[str | None] = None
    #: Greedy answer length the chapters generate by default: room for one box in the family's format.
    answer_tokens: ClassVar[int] = 24
    #: Why rows can read better than columns in the LLM (chapter 4): how the decoder's positions
    #: tell a token's row and column apart.
    row_column_cue: ClassVar[str] = (
        "a token's place in the 1-D sequence gives its row directly, while its column needs the row breaks"
    )

    # --- prompts -------------------------------------------------------------------------------
    def question(self, task: Task, category: str) -> str:
        """The user question for a task (without chat formatting)."""
        if task == "localization":
            return LOCALIZATION_Q.format(name=category)
        if task == "classification":
            return CLASSIFICATION_Q
        raise ValueError(f"unknown task {task!r}; use one of {TASKS}")

    @abstractmethod
    def chat_prompt(self, processor: Any, question: str) -> str:
        """The full prompt string with the image placeholder, as the processor expects it."""

    # --- answers -------------------------------------------------------------------------------
    @abstractmethod
    def format_box(self, box: Box, views: list[View], image_size: tuple[int, int], category: str) -> str:
        """A ground-truth box (original pixels) written in the model's own answer format."""

    @abstractmethod
    def parse_box(self, text: str, views: list[View], image_size: tuple[int, int]) -> Box | None:
        """The first box in an answer, in original-image pixels; ``None`` if there is none."""

    # --- geometry ------------------------------------------------------------------------------
    @abstractmethod
    def views(self, config: Any, processor: Any, image_size: tuple[int, int]) -> list[View]:
        """The views (token grids and the image regions they show) for an image of ``(width, height)``."""

    def image_token_id(self, config: Any) -> int:
        return int(config.image_token_id)

    def token_pixels(self, config: Any, enc: Any, image: int) -> Any:
        """The pixels behind each visual token of image ``image`` of a processor output,
        ``[n_tokens, channels, h, w]`` in token order, for processors whose ``pixel_values`` are flat
        patches (Qwen2.5-VL). ``None`` (the default): ``pixel_values`` holds one image per view, and
        :mod:`vlmloc.processor_check` cuts those into the views' cells itself."""
        return None

    # --- the tower's own grid (chapter 4's probes) ----------------------------------------------
    def probe_image_side(self, processor: Any) -> int | None:
        """Side in pixels that chapter 4 resizes every image to, for a family whose processor
        gives each image a token grid of its own (dynamic resolution): a probe's row and column
        heads need one grid. ``None`` (the default): every view already has the same grid."""
        return None

    def tower_side(self, config: Any, processor: Any) -> int:
        """Side of the tower's patch grid over one view (before any merging of patches)."""
        vc = config.vision_config
        size = vc.image_size[0] if isinstance(vc.image_size, list | tuple) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, list | tuple) else vc.patch_size
        return int(size) // int(patch)

    def in_token_order(self, config: Any, enc: Any, stage: str, value: Any) -> Any:
        """Tower (``stage="tower"``) or projector values read at their modules, as
        ``[views, tokens, width]`` with each view's patches (tower) or tokens row-major. The
        default returns ``value`` as read: LLaVA's and InternVL's modules already work that way."""
        return value

    # --- positions -----------------------------------------------------------------------------
    def position_ids(self, model: Any, inputs: Any) -> Any:
        """Position ids of a full (uncached) forward of ``inputs`` (``input_ids``, ``attention_mask``
        and the processor's other outputs; possibly longer than the processor output, e.g. with a
        teacher-forced answer). Default: 1-D positions counted over real tokens, ``[B, S]``. A family
        with multimodal RoPE (Qwen2.5-VL: ``[3, B, S]``) returns its own; every shape is sliced along
        its last axis, the sequence, and indexes batch rows on its second-to-last."""
        from ..scoring import position_ids

        return position_ids(inputs["attention_mask"])
