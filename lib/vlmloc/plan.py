"""GPU plans: does a chapter fit this GPU, in which dtype, at which batch, and for how long?

A reader who opens a chapter on Colab gets a T4 (14.7 GiB, no bfloat16, 12.7 GiB of host RAM) or,
with Colab Pro, an L4 or an A100. This module answers before anything loads, from each model's
config alone::

    python -m vlmloc.plan llava-hf/llava-1.5-7b-hf --gpu t4          # every chapter on a T4
    python -m vlmloc.plan OpenGVLab/InternVL3_5-8B-HF --gpu h100 --max-tiles 6
    plan = check_fits(model_id, "01_data_and_baselines", device=device, dtype=dtype, batch_size=16)

:func:`check_fits` is what a chapter's model cell calls: on a GPU (or when a memory budget is
forced with ``memory_gb`` or ``VLMLOC_MEMORY_GB``) it prints the chapter's plan and raises
:class:`PlanError`, one sentence naming what would fit, when the plan does not.

**The model.** The real models' configs are written below as data (:data:`REAL_CONFIGS`, the fields
of their ``config.json`` the plan needs); a loaded or saved checkpoint goes through the same
:func:`shape_from_config`. Each chapter is a list of :class:`Pass` objects (forwards with their token
counts, batch and what they keep), counted from its notebook at its defaults and at the paper's
scale (:data:`CHAPTER_DEFAULTS`, :data:`PAPER_SCALE`).

- Memory = weights (parameters x dtype) + the largest working set of any pass at its batch. A
  row of a pass holds its KV cache (prefix + prompt + generated tokens; a reused prefix and the
  copy ``generate`` starts from), the attention buffers (sdpa: the boolean mask of a left-padded
  batch; eager: every head's score matrix, in the dtype and upcast to float32 for the softmax),
  the hidden states a read keeps, the activations a backward needs, and the larger of two
  transient phases: the vision tower (pixels, the tower's returned states, one layer's
  activations) and the decoder (input embeddings, one layer's activations, the logits: the last
  position when generating, every position when scoring). A CUDA context of
  :data:`RESERVE_GIB` is set aside. ``tests/test_plan.py`` checks this against what the tiny
  models at the real geometry allocate on the CPU.
- Time = a roofline per pass: FLOPs at :attr:`GPU.efficiency` of the dense half-precision peak, or
  the bytes moved (weights once per forward, the KV cache each row reads) at the memory bandwidth,
  whichever is slower, plus :attr:`GPU.overhead_s` per traced forward (Python, nnsight, kernel
  launches; each generated token is one forward). Chapter 6's three ways to get every head's MF
  (:func:`vlmloc.gpu_cost.method_costs`) are built from the same passes. Loading the model, LaMa inpainting and the
  probes' own optimizer steps are not counted. It is an estimate to plan a run, not a measurement.

**Counting a chapter** (forwards per object and task, both tasks unless said; greedy answers of
24 tokens; InternVL sees a 640x480 COCO image as 12 tiles + the thumbnail unless ``max_tiles``
says fewer, Qwen2.5-VL as one view resized to 644x476 px, 23 x 17 = 391 tokens):

1. baseline generation; the control set's classification of each inpainted image (counted for
   every object: an upper bound).
2. the mean visual embedding (``n_reference`` images, to the LLM input); Integrated Gradients,
   ``ig_steps`` forward + backward passes per object and task (rows of ``min(ig_steps,
   batch_size)``); 9 generations for classification (baseline, 6 ablations, 2 shuffles) and 11 for
   localization (also padding p = 1, 2).
3. InternVL only: the mean visual embedding; baseline + 5 view ablations per task.
4. ``epochs x n_train + n_test`` image forwards that keep every site's hidden states; with the
   control, the same reads on a random-init copy of each stage (tower, projector, LLM): a second
   model in GPU memory, built on the CPU first (host RAM holds a full copy). Counted streamed: the
   chapter keeps a copy's training activations instead when they fit ``control_cache_mb`` (the
   toys' do; a real model's 96 images take ~15 GB), and then runs one pass, not ``epochs``.
   Qwen2.5-VL's chapter resizes every image to one 448 px square (256 tokens); the plan counts
   the 640x480 image (391), an upper bound.
5. baseline generation; the image prefix once per batch, then 3 token sets x (``L - window + 1``
   windows + all layers) generations of the prompt after it, from a copy of the cached prefix.
6. per pair and task: the exact sweep with the prefix reused (:func:`vlmloc.gpu_cost.method_costs`); at the
   defaults also the null check (one full forward per head for one pair, and the batched sweep),
   ``n_control_pairs`` mismatched sweeps, the sweep at the other ``patch_positions`` (``"all"``: a
   full forward per head) and attribution patching.
7. baseline + ``len(ks) x 2 head sets x (1 + n_draws)`` ablated generations per object and task.

**The paper's scale.** 50 pairs for chapter 6 and 50,000 + 10,000 images x 10 epochs for chapter
4, as the paper states (:mod:`vlmloc.paper`). The paper gives no object count for its other
tables; we take :data:`PAPER_OBJECTS`, the fewest objects whose baseline could have kept its
control-set pairs (``paper.CONTROL_SET`` divided by LLaVA-1.5-7B's Cls), and the 50 Integrated-Gradients steps of
its ablation. Chapter 6's paper row is the exact sweep alone, as the paper ran it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chapter_registry import CHAPTERS
from .families import FAMILIES
from .paper import CONTROL_SET, INTERNVL_8B, LLAVA_7B, MEDIATION_PAIRS, MODELS, POSITION_PROBES, RESULTS

__all__ = [
    "CHAPTER_DEFAULTS",
    "GPU",
    "GPUS",
    "H100",
    "LLAVA_13B",
    "MEMORY_ENV",
    "METHODS",
    "NAMES",
    "PAPER_OBJECTS",
    "PAPER_SCALE",
    "PLAN_IMAGE",
    "QWEN_3B",
    "QWEN_7B",
    "REAL_CONFIGS",
    "RESERVE_GIB",
    "ChapterPlan",
    "DTypeError",
    "Geometry",
    "ModelShape",
    "NoPlan",
    "Pass",
    "PlanError",
    "PlanTable",
    "chapter_passes",
    "check_fits",
    "choose_dtype",
    "resolve_device",
    "internvl_tiles",
    "pass_seconds",
    "plan_chapter",
    "plan_model",
    "readme_tables",
    "row_bytes",
    "shape_from_config",
    "shape_of",
    "sweep_passes",
]

GIB = 2**30
#: Set aside on every GPU: the CUDA context, cuBLAS workspaces and the allocator's slack.
RESERVE_GIB = 0.6
#: Host memory of the Python process before any weight loads (torch with CUDA, transformers, nnsight).
HOST_RUNTIME_GIB = 2.5
#: Hugging Face writes checkpoints in shards of at most 5 GB; loading straight to the GPU maps one at a time.
SHARD_GIB = 5e9 / GIB
#: An image of COCO's usual size: what InternVL's tiling is planned for.
PLAN_IMAGE = (640, 480)
#: ``VLMLOC_MEMORY_GB``: a forced GPU memory budget in GiB (tests, or planning for a smaller card).
MEMORY_ENV = "VLMLOC_MEMORY_GB"

LLAVA_13B = "llava-hf/llava-1.5-13b-hf"
QWEN_3B = "Qwen/Qwen2.5-VL-3B-Instruct"
QWEN_7B = "Qwen/Qwen2.5-VL-7B-Instruct"
#: Display names: the paper's models, LLaVA-1.5-13B and the two Qwen2.5-VL models.
NAMES: dict[str, str] = {
    **MODELS, LLAVA_13B: "LLaVA-1.5-13B", QWEN_3B: "Qwen2.5-VL-3B", QWEN_7B: "Qwen2.5-VL-7B"
}  # fmt: skip
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


# --------------------------------------------------------------------------- GPUs


@dataclass(frozen=True)
class GPU:
    """One GPU: its memory, its dense peaks and bandwidth, and what it supports.

    ``memory_gb`` is GiB as ``torch.cuda.get_device_properties(0).total_memory`` reports it (a
    "16 GB" T4 shows 14.7). ``peak_tflops`` is the dense float16/bfloat16 tensor-core peak,
    ``fp32_tflops`` the float32 one. ``host_ram_gb`` is the host memory of the machine that usually
    comes with the card (free Colab's T4), None where it varies.
    """

    name: str
    memory_gb: float
    peak_tflops: float
    bandwidth_tbs: float
    bf16: bool = True
    fp32_tflops: float | None = None
    host_ram_gb: float | None = None
    efficiency: float = 0.4  # share of the peak a well-batched forward sustains
    overhead_s: float = 0.05  # fixed cost of one traced forward (Python, nnsight, kernel launches)

    @property
    def usable_bytes(self) -> float:
        """What the weights and the working set may use: the memory less :data:`RESERVE_GIB`."""
        return (self.memory_gb - RESERVE_GIB) * GIB

    def seconds(self, flops: float, bytes_moved: float, forwards: int = 0, dtype: str = "float16") -> float:
        """Roofline (compute-bound or memory-bound, whichever is slower) plus a fixed cost per forward."""
        peak = self.peak_tflops if dtype != "float32" else (self.fp32_tflops or self.peak_tflops / 8)
        compute = flops / (self.efficiency * peak * 1e12)
        return max(compute, bytes_moved / (self.bandwidth_tbs * 1e12)) + forwards * self.overhead_s


#: The GPUs a reader meets: free Colab's T4, Colab Pro's L4 and A100s, and an H100 (SXM).
GPUS: dict[str, GPU] = {
    "t4": GPU("T4", 14.7, 65, 0.32, bf16=False, fp32_tflops=8.1, host_ram_gb=12.7),
    "l4": GPU("L4", 22.0, 121, 0.30, fp32_tflops=30.3),
    "a100-40": GPU("A100 40GB", 39.4, 312, 1.555, fp32_tflops=19.5),
    "a100-80": GPU("A100 80GB", 79.2, 312, 2.039, fp32_tflops=19.5),
    "h100": GPU("H100 80GB", 79.1, 989, 3.35, fp32_tflops=67),
}
H100 = GPUS["h100"]


class DTypeError(ValueError):
    """A dtype the device cannot run (bfloat16 on a GPU older than Ampere)."""


def resolve_device(device: str) -> str:
    """``"auto"`` picks CUDA when present; an unavailable CUDA device is a clear error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but no CUDA GPU is visible; pass -p device cpu")
    return device


def choose_dtype(requested: str | None, device: str, bf16: bool = True, gpu_name: str = "this GPU") -> str:
    """The dtype a model runs in: ``"auto"`` is bfloat16 where the GPU has it, float16 otherwise,
    float32 on the CPU; an explicit bfloat16 on a GPU without it is a :class:`DTypeError`.

    Half precision on a CPU is slow and inexact, so the CPU always gets float32 (the adapter warns).
    """
    name = requested or "auto"
    if name not in (*_DTYPE_BYTES, "auto"):
        raise DTypeError(f"dtype must be auto, float32, float16 or bfloat16, got {name!r}")
    on_gpu = device.startswith("cuda")
    if not on_gpu:
        return "float32"
    if name == "auto":
        return "bfloat16" if bf16 else "float16"
    if name == "bfloat16" and not bf16:
        raise DTypeError(
            f"{gpu_name} has no bfloat16 (it needs compute capability 8.0, Ampere or newer); "
            "pass -p dtype float16, or -p dtype auto to take the best the GPU has"
        )
    return name


# --------------------------------------------------------------------------- model shapes


#: The fields of the real models' ``config.json`` the plan reads (transformers' names), as data:
#: no checkpoint is downloaded to plan. ``max_patches`` is InternVL's processor setting.
#: LLaVA-1.5's fields beside its decoder: CLIP ViT-L/14 at 336 px, the same for 7B and 13B.
_LLAVA_15: dict[str, Any] = {
    "model_type": "llava", "vision_feature_layer": -2, "image_seq_length": 576, "tie_word_embeddings": False,
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
}  # fmt: skip
#: Qwen2.5-VL's processor settings (its released preprocessor_config.json), also where a config has none.
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 56 * 56, 28 * 28 * 16384
#: Qwen2.5-VL's tower beside its decoder (the same for 3B and 7B, but for the width it hands on),
#: laid out as the released config.json is: the text fields at the top level. ``min_pixels`` and
#: ``max_pixels`` are its processor's settings.
_QWEN_VISION: dict[str, Any] = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
    "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
}  # fmt: skip
_QWEN_25_VL: dict[str, Any] = {
    "model_type": "qwen2_5_vl",
    "min_pixels": QWEN_MIN_PIXELS,
    "max_pixels": QWEN_MAX_PIXELS,
}
REAL_CONFIGS: dict[str, dict[str, Any]] = {
    LLAVA_7B: {
        **_LLAVA_15,
        "text_config": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064},
    },
    LLAVA_13B: {
        **_LLAVA_15,
        "text_config": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                        "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32064},
    },
    INTERNVL_8B: {
        "model_type": "internvl", "vision_feature_layer": -1, "image_seq_length": 256, "downsample_ratio": 0.5,
        "tie_word_embeddings": False, "max_patches": 12,
        "text_config": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                        "vocab_size": 151936},
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "image_size": [448, 448], "patch_size": [14, 14]},
    },
    QWEN_3B: {
        **_QWEN_25_VL, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
        "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
        "vision_config": {**_QWEN_VISION, "out_hidden_size": 2048},
    },
    QWEN_7B: {
        **_QWEN_25_VL, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
        "vision_config": {**_QWEN_VISION, "out_hidden_size": 3584},
    },
}  # fmt: skip

#: Text tokens around the image, per family: before it (chat template), the prompt after it per
#: task, and the teacher-forced answer (a class name; LLaVA's ``[x, y, x, y]``, InternVL's
#: ``<ref>..</ref><box>[[..]]</box>`` or Qwen2.5-VL's ``[{"bbox_2d": [..], "label": ..}]``), counted
#: with the real tokenizers for a short class name. Qwen2.5-VL's are the pieces of its tokenizer's
#: split pattern (one token each; digits one by one): 15 before the image (the default system
#: message, ``<|im_start|>user\n<|vision_start|>``), ``<|vision_end|>`` + the question +
#: ``<|im_end|>\n<|im_start|>assistant\n`` after it, and a box of three-digit pixel coordinates.
TEXT_TOKENS: dict[str, dict[str, Any]] = {
    "llava": {"before": 5, "prompt": {"classification": 12, "localization": 26},
              "answer": {"classification": 3, "localization": 24}},
    "internvl": {"before": 5, "prompt": {"classification": 14, "localization": 28},
                 "answer": {"classification": 3, "localization": 28}},
    "qwen2_5_vl": {"before": 15, "prompt": {"classification": 13, "localization": 21},
                   "answer": {"classification": 3, "localization": 31}},
}  # fmt: skip
TASKS = ("classification", "localization")


def _new_tokens(shape: ModelShape) -> int:
    """Tokens a generation may take: the family's answer budget (Qwen2.5-VL's JSON box needs 48)."""
    return FAMILIES[shape.family].answer_tokens


def internvl_tiles(image_size: tuple[int, int], max_tiles: int, tile: int = 448, min_tiles: int = 1) -> int:
    """InternVL's tile count for an image ``(width, height)``: the processor's own choice of grid."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    w, h = image_size
    cols, rows = get_optimal_tiled_canvas((h, w), (tile, tile), min_tiles, max_tiles)
    return cols * rows


def qwen_resized(
    image_size: tuple[int, int], factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen2.5-VL's ``(width, height)`` for an image ``(width, height)``: the processor's own
    ``smart_resize`` (multiples of ``factor`` px, the area within ``[min_pixels, max_pixels]``)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    w, h = image_size
    rh, rw = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return rw, rh


def _side(v: Any) -> int:
    return int(v[0] if isinstance(v, list | tuple) else v)


@dataclass(frozen=True)
class ModelShape:
    """What memory and FLOPs depend on, read from a config: the decoder, the tower, the views.

    ``max_tiles`` is InternVL's tiling limit (None: one padded view, LLaVA). ``vision_states``
    is how many of the tower's hidden states a forward returns (LLaVA reads layer -2, so it asks
    for all of them).

    The fields after ``max_tiles`` describe Qwen2.5-VL; their defaults are LLaVA's and InternVL's.
    A ``max_pixels`` above 0 is dynamic resolution: one view, the image resized to multiples of
    ``patch * merge`` px with an area in ``[min_pixels, max_pixels]`` (``image`` and
    ``view_tokens`` are 0), each ``merge x merge`` patches one visual token, no class token, each
    patch ``temporal`` frames deep (an image is repeated). ``window`` (px) is the tower's attention
    window, in all blocks but ``full_blocks`` of them (0: full attention everywhere).
    ``vision_gated``: the tower's MLP is gated (three matrices). ``qkv_bias``: the decoder's q, k
    and v projections have biases. ``projector_mid``: the projector's hidden width (0: ``hidden``).
    """

    name: str
    family: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool
    vision_layers: int
    vision_width: int
    vision_ffn: int
    vision_heads: int
    image: int
    patch: int
    view_tokens: int
    projector_in: int
    vision_states: int
    max_tiles: int | None = None
    merge: int = 1
    min_pixels: int = 0
    max_pixels: int = 0
    temporal: int = 1
    window: int = 0
    full_blocks: int = 0
    vision_gated: bool = False
    qkv_bias: bool = False
    projector_mid: int = 0

    @property
    def dynamic(self) -> bool:
        """Dynamic resolution (Qwen2.5-VL): the tokens depend on the image's size."""
        return self.max_pixels > 0

    def grid(self, image_size: tuple[int, int] = PLAN_IMAGE) -> tuple[int, int]:
        """Patches of one view, ``(rows, columns)``: the resized image's, or the fixed view's."""
        if not self.dynamic:
            return self.image // self.patch, self.image // self.patch
        w, h = qwen_resized(image_size, self.patch * self.merge, self.min_pixels, self.max_pixels)
        return h // self.patch, w // self.patch

    def patches(self, image_size: tuple[int, int] = PLAN_IMAGE) -> int:
        """Tokens through the tower per view: patches, + the class token of a fixed view."""
        rows, cols = self.grid(image_size)
        return rows * cols + (0 if self.dynamic else 1)

    @property
    def tower_tokens(self) -> int:
        """Tokens through the tower per view of :data:`PLAN_IMAGE`."""
        return self.patches()

    def views(self, image_size: tuple[int, int] = PLAN_IMAGE) -> int:
        """Views of an image: LLaVA one padded square; InternVL its tiles + the thumbnail (one tile:
        none); Qwen2.5-VL the whole image resized."""
        if self.max_tiles is None:
            return 1
        n = internvl_tiles(image_size, self.max_tiles, self.image)
        return n + 1 if n > 1 else 1

    def visual_tokens(self, image_size: tuple[int, int] = PLAN_IMAGE) -> int:
        if self.dynamic:
            rows, cols = self.grid(image_size)
            return rows * cols // self.merge**2
        return self.views(image_size) * self.view_tokens

    def pixel_values(self, image_size: tuple[int, int] = PLAN_IMAGE) -> int:
        """Values in one image's ``pixel_values``: each view's square, or each patch's frames."""
        if self.dynamic:
            return self.patches(image_size) * 3 * self.temporal * self.patch**2
        return self.views(image_size) * 3 * self.image**2

    def with_tiles(self, max_tiles: int | None) -> ModelShape:
        """The same model with InternVL's tiling limited to ``max_tiles`` (None: unchanged)."""
        if max_tiles is None or self.max_tiles is None:
            return self
        return dataclasses.replace(self, max_tiles=int(max_tiles))

    # --- parameters -------------------------------------------------------------------------
    def decoder_layer_params(self) -> int:
        h, a, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        qk_norm = 2 * self.head_dim if self.family == "internvl" else 0  # Qwen3 normalises q and k
        qkv_bias = a + 2 * kv if self.qkv_bias else 0  # Qwen2
        return 2 * h * a + 2 * h * kv + 3 * h * self.ffn + 2 * h + qk_norm + qkv_bias

    def vision_params(self) -> int:
        w, f = self.vision_width, self.vision_ffn
        if self.family == "internvl":  # InternViT: no qkv bias, two layer scales
            layer = 4 * w * w + w + 2 * w * f + f + w + 4 * w + 2 * w
            embed = 3 * self.patch**2 * w + w + w + self.tower_tokens * w
            norms = 0
        elif self.family == "qwen2_5_vl":  # biased projections, gated MLP with biases, two RMSNorms
            layer = 4 * w * w + 4 * w + 3 * w * f + 2 * f + w + 2 * w
            embed = 3 * self.temporal * self.patch**2 * w  # Conv3d without bias; rotary positions
            norms = 0
        else:  # CLIP: biased projections, pre- and post-layernorm
            layer = 4 * w * w + 4 * w + 2 * w * f + f + w + 4 * w
            embed = 3 * self.patch**2 * w + w + self.tower_tokens * w
            norms = 4 * w
        return self.vision_layers * layer + embed + norms

    def projector_params(self) -> int:
        """Norm, Linear(in, mid), Linear(mid, hidden): InternVL's LayerNorm over its input, Qwen's
        RMSNorm over the tower's width before merging."""
        mid = self.projector_mid or self.hidden
        norm = {"internvl": 2 * self.projector_in, "qwen2_5_vl": self.vision_width}.get(self.family, 0)
        return norm + self.projector_in * mid + mid + mid * self.hidden + self.hidden

    def n_params(self) -> int:
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        decoder = self.layers * self.decoder_layer_params() + embed + self.hidden
        return decoder + self.vision_params() + self.projector_params()

    # --- FLOPs ----------------------------------------------------------------------------------
    def tower_attention(self, image_size: tuple[int, int] = PLAN_IMAGE) -> int:
        """Query-key pairs of one view summed over the tower's blocks: all pairs in a block of full
        attention, the pairs within each window in the others (windows of ``window`` px laid over
        the grid of merged tokens from its top-left corner, the last row and column cut short)."""
        n = self.patches(image_size)
        if not self.window:
            return self.vision_layers * n * n
        rows, cols = self.grid(image_size)
        side = self.window // (self.patch * self.merge)  # tokens along a window's side

        def spans(tokens: int) -> list[int]:
            return [min(side, tokens - i) for i in range(0, tokens, side)]

        group = self.merge**2
        windows = sum(
            (a * b * group) ** 2 for a in spans(rows // self.merge) for b in spans(cols // self.merge)
        )
        return self.full_blocks * n * n + (self.vision_layers - self.full_blocks) * windows

    def vision_flops(self, image_size: tuple[int, int] = PLAN_IMAGE) -> float:
        """Tower (every view) and projector FLOPs of one image."""
        w, f, n = self.vision_width, self.vision_ffn, self.patches(image_size)
        mlp = 3 if self.vision_gated else 2
        tower = self.vision_layers * 2 * n * (4 * w * w + mlp * w * f) + 4 * w * self.tower_attention(
            image_size
        )
        mid = self.projector_mid or self.hidden
        projector = 2 * self.visual_tokens(image_size) * (self.projector_in * mid + mid * self.hidden)
        return self.views(image_size) * tower + projector

    def geometry(self, dtype_bytes: int = 2, image_size: tuple[int, int] = PLAN_IMAGE) -> Geometry:
        """Chapter 6's :class:`Geometry` of this shape: the tokens of one image and its prompts."""
        text = TEXT_TOKENS[self.family]
        visual = self.visual_tokens(image_size)
        return Geometry(
            NAMES.get(self.name, self.name), layers=self.layers, heads=self.heads, kv_heads=self.kv_heads,
            hidden=self.hidden, head_dim=self.head_dim, ffn=self.ffn, vocab=self.vocab,
            prefix=text["before"] + visual,
            suffix={t: text["prompt"][t] + text["answer"][t] for t in TASKS},
            vision_flops=self.vision_flops(image_size), weight_bytes=self.n_params() * dtype_bytes,
            dtype_bytes=dtype_bytes,
        )  # fmt: skip


def _fixed_views(
    family: str, config: Mapping[str, Any], vc: Mapping[str, Any], max_tiles: int | None
) -> dict:
    """The tower and view fields of LLaVA (one padded square) and InternVL (tiles + thumbnail)."""
    image, patch = _side(vc["image_size"]), _side(vc["patch_size"])
    if family == "internvl":
        ratio = float(config.get("downsample_ratio", 0.5))
        view_tokens = int(config.get("image_seq_length") or round((image // patch * ratio) ** 2))
        projector_in = int(vc["hidden_size"] * round(1 / ratio) ** 2)
        tiles = int(max_tiles or config.get("max_patches", 12))
    else:
        view_tokens = int(config.get("image_seq_length") or (image // patch) ** 2)
        projector_in, tiles = int(vc["hidden_size"]), None
    feature_layer = int(config.get("vision_feature_layer", -1))
    return dict(
        vision_layers=int(vc["num_hidden_layers"]), vision_width=int(vc["hidden_size"]),
        vision_ffn=int(vc["intermediate_size"]), vision_heads=int(vc["num_attention_heads"]), image=image,
        patch=patch, view_tokens=view_tokens, projector_in=projector_in,
        vision_states=int(vc["num_hidden_layers"]) + 1 if feature_layer != -1 else 1, max_tiles=tiles,
    )  # fmt: skip


def _dynamic_view(config: Mapping[str, Any], vc: Mapping[str, Any]) -> dict:
    """Qwen2.5-VL's tower and view fields: one resized view, window attention, the merger as projector
    (``ln_q`` over the tower's width, ``Linear(4w, 4w)``, GELU, ``Linear(4w, hidden)``)."""
    width, merge = int(vc["hidden_size"]), int(vc["spatial_merge_size"])
    return dict(
        vision_layers=int(vc["depth"]), vision_width=width, vision_ffn=int(vc["intermediate_size"]),
        vision_heads=int(vc["num_heads"]), image=0, patch=int(vc["patch_size"]), view_tokens=0,
        projector_in=width * merge**2, projector_mid=width * merge**2, vision_states=1, merge=merge,
        min_pixels=int(config.get("min_pixels") or QWEN_MIN_PIXELS),
        max_pixels=int(config.get("max_pixels") or QWEN_MAX_PIXELS),
        temporal=int(vc.get("temporal_patch_size", 2)), window=int(vc["window_size"]),
        full_blocks=len(vc.get("fullatt_block_indexes") or ()), vision_gated=True,
    )  # fmt: skip


def shape_from_config(name: str, config: Mapping[str, Any], max_tiles: int | None = None) -> ModelShape:
    """A :class:`ModelShape` from a ``config.json`` dict (or :data:`REAL_CONFIGS`' subset of one).

    ``max_tiles``: InternVL's processor limit (``max_patches``); defaults to the config's
    ``max_patches`` entry, else 12 (the release default). Qwen2.5-VL's ``min_pixels`` and
    ``max_pixels`` are read from the config's entries of those names (its processor's), else the
    release's. The decoder's fields are read from ``text_config``, or from the top level where a
    config has none (the released Qwen2.5-VL configs; transformers 5 nests them).
    """
    family = config["model_type"]
    if family not in TEXT_TOKENS:
        raise ValueError(f"no plan for model type {family!r}; the plan knows {', '.join(TEXT_TOKENS)}")
    tc, vc = config.get("text_config") or config, config["vision_config"]
    heads = int(tc["num_attention_heads"])
    hidden = int(tc["hidden_size"])
    tied = config.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))
    vision = (
        _dynamic_view(config, vc) if family == "qwen2_5_vl" else _fixed_views(family, config, vc, max_tiles)
    )
    return ModelShape(
        name=name, family=family, layers=int(tc["num_hidden_layers"]), hidden=hidden, heads=heads,
        kv_heads=int(tc.get("num_key_value_heads") or heads), head_dim=int(tc.get("head_dim") or hidden // heads),
        ffn=int(tc["intermediate_size"]), vocab=int(tc["vocab_size"]), tied=bool(tied),
        qkv_bias=family == "qwen2_5_vl", **vision,
    )  # fmt: skip


class NoPlan(LookupError):
    """A model the plan has no config for (a family it does not model, a hub id not cached), or a
    chapter it does not count: :func:`check_fits` lets such a load through unchecked."""


def _config_file(model_id: str) -> Path | None:
    """The ``config.json`` of a registered checkpoint: its folder's, or the Hugging Face cache's."""
    from .registry import get_spec

    source = get_spec(model_id).source
    if (Path(source) / "config.json").is_file():
        return Path(source) / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
    except Exception:  # an id that is not a repository name
        return None
    return Path(cached) if isinstance(cached, str) else None


def _processor_settings(ip: Mapping[str, Any]) -> dict[str, Any]:
    """What the plan reads from an image processor's config: InternVL's ``max_patches``,
    Qwen2.5-VL's ``min_pixels`` and ``max_pixels`` (``size``'s ``shortest_edge`` and ``longest_edge``)."""
    out = {k: ip[k] for k in ("max_patches", "min_pixels", "max_pixels") if k in ip}
    size = ip.get("size") or {}
    if ip.get("image_processor_type", "").startswith("Qwen2") and "longest_edge" in size:
        out.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    return out


def shape_of(model_id: str, max_tiles: int | None = None) -> ModelShape:
    """The shape of a registered model: the real ones from :data:`REAL_CONFIGS`, any other from its
    ``config.json`` (a toy's folder, or the Hugging Face cache) and its processor config."""
    if model_id in REAL_CONFIGS:
        return shape_from_config(model_id, REAL_CONFIGS[model_id], max_tiles)
    path = _config_file(model_id)
    if path is None:
        raise NoPlan(
            f"no plan for {model_id}: vlmloc.plan.REAL_CONFIGS lacks it and no config.json is at hand"
        )
    config = json.loads(path.read_text())
    proc = path.parent / "processor_config.json"
    if proc.is_file():
        config = {**config, **_processor_settings(json.loads(proc.read_text()).get("image_processor", {}))}
    if config.get("model_type") not in TEXT_TOKENS:
        raise NoPlan(
            f"no plan for {model_id}: the plan models {', '.join(TEXT_TOKENS)}, not {config.get('model_type')!r}"
        )
    return shape_from_config(model_id, config, max_tiles)


# --------------------------------------------------------------------------- chapter 6's cost geometry


@dataclass(frozen=True)
class Geometry:
    """What a sweep's cost depends on: the decoder's shape, the tokens and the vision tower's FLOPs.

    ``prefix`` counts the tokens up to the last image token (where patches start), ``suffix`` the
    tokens after it per task (the rest of the prompt plus the teacher-forced answer).
    """

    name: str
    layers: int
    heads: int
    kv_heads: int
    hidden: int
    head_dim: int
    ffn: int
    vocab: int
    prefix: int
    suffix: Mapping[str, int]
    vision_flops: float  # vision tower + projector, one image (all its views)
    weight_bytes: float
    dtype_bytes: int = 2

    @property
    def layer_params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        return attn + 3 * self.hidden * self.ffn

    @property
    def n_heads_total(self) -> int:
        return self.layers * self.heads

    def decoder_flops(
        self, tokens: int, past: int, layers: float | None = None, logits: bool = True
    ) -> float:
        """Forward FLOPs of ``tokens`` new tokens after ``past`` cached ones through ``layers`` layers."""
        layers = self.layers if layers is None else layers
        keys = tokens * past + tokens * (tokens + 1) / 2  # causal: token t attends to past + t + 1 keys
        per_layer = 2 * self.layer_params * tokens + 4 * self.heads * self.head_dim * keys
        return layers * per_layer + (2 * self.hidden * self.vocab * tokens if logits else 0.0)

    def kv_bytes(self, tokens: float) -> float:
        return 2 * self.layers * tokens * self.kv_heads * self.head_dim * self.dtype_bytes

    def act_bytes(self, tokens: int) -> float:
        """Peak working memory of one row's forward without gradients (logits, MLP, residual)."""
        return tokens * (self.vocab + 2 * self.ffn + 6 * self.hidden) * self.dtype_bytes


def tower_flops(layers: int, tokens: int, hidden: int, ffn: int, views: int) -> float:
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * tokens * tokens * hidden
    return views * layers * per_layer


# --------------------------------------------------------------------------- passes


@dataclass(frozen=True)
class Pass:
    """A kind of forward a chapter runs: ``groups`` x ``rows`` rows, in batches of ``batch``.

    Rows of different groups never share a batch (each condition, or each layer of chapter 6's
    sweep, batches on its own). A row runs ``tokens`` new tokens after ``past`` cached ones
    through ``layers`` decoder layers (None: all), then ``new_tokens`` greedy steps. ``logits``:
    ``"last"`` (generation, a prefix), ``"all"`` (teacher-forced scores) or ``"none"`` (stops
    before the head). ``held`` cached tokens are held per row besides its own cache (a reused
    prefix, of which ``generate`` starts from a copy); ``kept`` the sites whose hidden states are
    kept (``"all"``, ``"tower"``); ``backward`` adds a backward pass through the decoder.
    """

    label: str
    rows: int
    batch: int
    tokens: int
    past: int = 0
    new_tokens: int = 0
    groups: int = 1
    vision: bool = True
    decoder: bool = True
    logits: str = "last"
    backward: bool = False
    kept: str | None = None
    held: int = 0
    layers: float | None = None

    @property
    def calls(self) -> int:
        return self.groups * math.ceil(self.rows / self.batch) if self.rows else 0


@dataclass(frozen=True)
class _Costs:
    """Per-row bytes of a pass's working set, by kind."""

    kv: float
    attention: float
    kept: float
    other: float

    @property
    def total(self) -> float:
        return self.kv + self.attention + self.kept + self.other


def row_bytes(
    shape: ModelShape, p: Pass, dtype_bytes: int, attn: str = "sdpa", image_size: tuple[int, int] = PLAN_IMAGE
) -> _Costs:
    """The working memory one row of ``p`` adds (see the module docstring for the terms)."""
    d, s = dtype_bytes, shape
    views, visual, tower = s.views(image_size), s.visual_tokens(image_size), s.patches(image_size)
    kv_token = 2 * s.layers * s.kv_heads * s.head_dim * d
    keys = p.past + p.tokens + p.new_tokens
    kv = kv_token * (keys + p.held) if p.decoder else 0.0
    attention = 0.0
    if p.decoder:
        attention += p.tokens * (p.past + p.tokens)  # sdpa's boolean mask of a left-padded batch
        if attn == "eager":
            attention += s.heads * p.tokens * (p.past + p.tokens) * (d + 4)  # scores, float32 softmax
    if p.vision and attn == "eager":
        attention = max(attention, views * s.vision_heads * tower**2 * (d + 4))
    kept = 0.0
    if p.kept:
        kept = (s.vision_layers * views * tower * s.vision_width + 2 * visual * s.hidden) * d
        if p.kept == "all":
            kept += s.layers * visual * s.hidden * d
    pixels = s.pixel_values(image_size) * d if p.vision else 0.0
    vision = 0.0
    if p.vision:
        states = s.vision_states * views * tower * s.vision_width
        mlp = 2 * s.vision_ffn if s.vision_gated else s.vision_ffn  # a gated MLP's gate and up
        layer = views * tower * (4 * s.vision_width + mlp)
        vision = (states + layer + visual * (s.projector_in + s.hidden)) * d
    decoder = 0.0
    if p.decoder:
        q = p.tokens
        layer = q * (3 * s.hidden + 2 * s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim + 3 * s.ffn)
        logits = {"last": s.vocab * (1 + 4 / d), "all": q * s.vocab, "none": 0.0}[p.logits]
        decoder = (2 * q * s.hidden + layer + logits) * d
        if p.backward:  # what the backward keeps of every layer, and the float32 log-softmax
            saved = 4 * s.hidden + 2 * s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim + 4 * s.ffn
            decoder += s.layers * q * saved * d + (q * s.vocab * 4 if p.logits == "all" else 0.0)
    return _Costs(kv, attention, kept, pixels + max(vision, decoder))


# --------------------------------------------------------------------------- chapter 6's methods

METHODS = ("exact sweep", "exact, prefix reused", "attribution patching")


def sweep_passes(g: Geometry, method: str, n_pairs: int, task: str, batch: int) -> list[Pass]:
    """The passes of one of :data:`METHODS` for ``n_pairs`` pairs of one task.

    - *exact sweep*: one full forward per head (vision tower included), ``batch`` rows of any layers;
    - *exact, prefix reused*: the image prefix once, then per layer ``l`` its heads as rows of a
      suffix-only forward through layers ``l..L-1`` (:func:`vlmloc.sweeps.head_patch_scores`; its
      batches never mix layers, so at most ``heads`` rows; each row holds the prefix cache, as each
      layer's concatenation of prefix and suffix keys materializes it per row);
    - *attribution patching*: the base prefix, then the base suffix forward and backward, batch 1.

    Every method also scores the source once per pair (the values patched in).
    """
    s, total = g.suffix[task], g.prefix + g.suffix[task]
    source = Pass("source and base scores", n_pairs, 1, total, logits="all")
    if method == "exact sweep":
        rows = Pass("every head: a full forward", n_pairs * g.n_heads_total, batch, total, logits="all")
        return [source, rows]
    prefix = Pass("image prefix", n_pairs, 1, g.prefix, logits="none")
    if method == "exact, prefix reused":
        b = max(1, min(batch, g.heads))
        base = Pass("base suffix", n_pairs, 1, s, past=g.prefix, vision=False, logits="all")
        rows = Pass(
            "every head: suffix after the prefix", g.heads, b, s, past=g.prefix, groups=n_pairs * g.layers,
            vision=False, logits="all", layers=(g.layers + 1) / 2,
        )  # fmt: skip
        return [source, prefix, base, rows]
    if method == "attribution patching":
        back = Pass("base suffix, forward and backward", n_pairs, 1, s, past=g.prefix, vision=False,
                    logits="all", backward=True)  # fmt: skip
        return [source, prefix, back]
    raise ValueError(f"unknown method {method!r}; use one of {METHODS}")


def pass_flops(g: Geometry, p: Pass) -> float:
    """FLOPs of one row of ``p``'s first forward (a backward: twice the forward again)."""
    flops = g.vision_flops if p.vision else 0.0
    if p.decoder:
        flops += g.decoder_flops(p.tokens, p.past, p.layers, p.logits != "none") * (3 if p.backward else 1)
    return flops


def pass_seconds(g: Geometry, p: Pass, gpu: GPU, dtype: str = "float16", vision_share: float = 0.1) -> float:
    """Roofline time of ``p`` on ``gpu``: its first forwards, then its greedy steps, each on its own.

    A forward reads the weights it runs (``vision_share`` of them when it stops at the LLM input,
    the share of the layers it runs, twice with a backward) and each row's KV cache.
    """
    if not p.rows:
        return 0.0
    n = p.groups * p.rows
    share = vision_share if not p.decoder else 1.0 if p.layers is None else p.layers / g.layers
    reads = g.weight_bytes * share * (2 if p.backward else 1) + p.batch * g.kv_bytes(p.past + p.tokens)
    t = gpu.seconds(n * pass_flops(g, p), p.calls * reads, p.calls, dtype)
    if p.new_tokens:
        mid = p.past + p.tokens + p.new_tokens / 2
        steps = p.calls * p.new_tokens
        step_reads = g.weight_bytes + p.batch * g.kv_bytes(mid)
        t += gpu.seconds(n * p.new_tokens * g.decoder_flops(1, int(mid)), steps * step_reads, steps, dtype)
    return t


# --------------------------------------------------------------------------- chapters


#: The fewest objects whose baseline could have kept the paper's control-set pairs
#: (``paper.CONTROL_SET`` over LLaVA-1.5-7B's Cls): the object count we plan the paper's tables with.
PAPER_OBJECTS = math.ceil(CONTROL_SET["n_kept"] / (RESULTS[LLAVA_7B]["baseline"]["cls"] / 100))  # type: ignore[operator]
#: Integrated-Gradients steps of the paper's token ablation.
PAPER_IG_STEPS = 50

#: What changes at the paper's scale (see the module docstring).
PAPER_SCALE: dict[str, dict[str, Any]] = {
    "01_data_and_baselines": {"n_samples": PAPER_OBJECTS},
    "02_containerization": {"n_samples": PAPER_OBJECTS, "ig_steps": PAPER_IG_STEPS},
    "03_views": {"n_samples": PAPER_OBJECTS},
    "04_position_decoding": {"n_train": POSITION_PROBES["n_train"], "n_test": POSITION_PROBES["n_test"],
                             "epochs": POSITION_PROBES["epochs"]},
    "05_attention_knockout": {"n_samples": PAPER_OBJECTS},
    "06_mediation": {"n_pairs": MEDIATION_PAIRS, "n_control_pairs": 0, "compare_positions": False,
                     "null_check": False, "attribution": False},
    "07_head_ablation": {"n_samples": PAPER_OBJECTS},
}  # fmt: skip

#: Each chapter's defaults by name: its parameter schema's (the registry's, which a test holds
#: against the notebook's ``parameters`` cell), for the chapters the plan prices.
CHAPTER_DEFAULTS: dict[str, dict[str, Any]] = {c.name: c.defaults for c in CHAPTERS if c.name in PAPER_SCALE}


@dataclass(frozen=True)
class _Tokens:
    """Token counts of one model on the planned image: before + visual = the image prefix."""

    before: int
    visual: int
    prompt: Mapping[str, int]
    answer: Mapping[str, int]

    @property
    def image(self) -> int:
        return self.before + self.visual

    def prompt_len(self, task: str) -> int:
        return self.image + self.prompt[task]

    def scored_len(self, task: str) -> int:
        return self.image + self.prompt[task] + self.answer[task]


def _generate(
    label: str, n: int, batch: int, tok: _Tokens, per_task: Mapping[str, int], new: int
) -> list[Pass]:
    return [
        Pass(label, n, batch, tok.prompt_len(t), new_tokens=new, groups=k) for t, k in per_task.items() if k
    ]


def _embedding_pass(label: str, n: int, batch: int, tok: _Tokens) -> Pass:
    """To the LLM input only (a mean embedding, token norms): vision tower and projector."""
    return Pass(label, n, batch, tok.image, decoder=False, logits="none")


def _ch01(shape: ModelShape, p: Mapping, tok: _Tokens) -> list[Pass]:
    n, b = p["n_samples"], p["batch_size"]
    return [
        *_generate(
            "baseline generation", n, b, tok, {"classification": 1, "localization": 1}, _new_tokens(shape)
        ),
        *_generate("control set: inpainted images", n, b, tok, {"classification": 1}, _new_tokens(shape)),
    ]


def _ch02(shape: ModelShape, p: Mapping, tok: _Tokens) -> list[Pass]:
    n, b, steps = p["n_samples"], p["batch_size"], p["ig_steps"]
    ig = [
        Pass("integrated gradients", n * steps, min(steps, b), tok.scored_len(t), vision=False, logits="all",
             backward=True)
        for t in TASKS
    ]  # fmt: skip
    return [
        _embedding_pass("mean visual embedding", p["n_reference"], b, tok),
        _embedding_pass("token sets (LLM input)", n, b, tok),
        *ig,
        *_generate("generation (9 + 11 conditions)", n, b, tok, {"classification": 9, "localization": 11},
                   _new_tokens(shape)),
    ]  # fmt: skip


def _ch03(shape: ModelShape, p: Mapping, tok: _Tokens) -> list[Pass]:
    n, b = p["n_samples"], p["batch_size"]
    return [
        _embedding_pass("mean visual embedding", p["n_reference"], b, tok),
        *_generate("generation (6 conditions)", n, b, tok, {t: 6 for t in TASKS}, _new_tokens(shape)),
    ]


def _ch04(shape: ModelShape, p: Mapping, tok: _Tokens) -> list[Pass]:
    b = p["batch_size"]
    images = p["epochs"] * p["n_train"] + p["n_test"]
    reads = [
        Pass("hidden-state reads", images, b, tok.prompt_len("classification"), logits="none", kept="all")
    ]
    if p.get("control", True):
        reads += [
            Pass("control: random tower and projector", images, b, tok.image, groups=2, decoder=False,
                 logits="none", kept="tower"),
            Pass("control: random LLM", images, b, tok.prompt_len("classification"), logits="none", kept="all"),
        ]  # fmt: skip
    return reads


def _ch05(shape: ModelShape, p: Mapping, tok: _Tokens) -> list[Pass]:
    n, b, new = p["n_samples"], p["batch_size"], p.get("max_new_tokens") or _new_tokens(shape)
    windows = len(range(0, shape.layers - min(p["window"], shape.layers) + 1, p["stride"])) + 1
    conds = 3 * windows  # object, random, whole image
    out = _generate("baseline generation", n, b, tok, {t: 1 for t in TASKS}, new)
    if not p.get("reuse_prefix", True):
        return out + _generate(
            f"knockout generation ({conds} conditions)", n, b, tok, {t: conds for t in TASKS}, new
        )
    for t in TASKS:
        out.append(Pass("image prefix, once per batch", n, b, tok.image))
        out.append(
            Pass(f"knockout after the prefix ({conds} conditions)", n, b, tok.prompt[t], past=tok.image,
                 new_tokens=new, groups=conds, vision=False, held=tok.image)
        )  # fmt: skip
    return out


def _ch06(shape: ModelShape, p: Mapping, tok: _Tokens, g: Geometry) -> list[Pass]:
    b = p["batch_size"]
    main = (
        "exact, prefix reused" if p.get("patch_positions", "after_image") == "after_image" else "exact sweep"
    )
    other = "exact sweep" if main == "exact, prefix reused" else "exact, prefix reused"
    out: list[Pass] = []
    for t in TASKS:
        out += sweep_passes(g, main, p["n_pairs"], t, b)
        if p.get("null_check", True):  # one full forward per head for one pair, then the batched sweep
            loop = Pass(
                "null check: one forward per head", g.n_heads_total, 1, g.prefix + g.suffix[t], logits="all"
            )
            out += [loop, *sweep_passes(g, main, 1, t, b)]
        out += sweep_passes(g, main, p["n_control_pairs"], t, b)
        if p.get("compare_positions", True):
            out += sweep_passes(g, other, p["n_pairs"], t, b)
        if p.get("attribution", True):
            out += sweep_passes(g, "attribution patching", p["n_pairs"], t, 1)
    return [q for q in out if q.rows]


def _ch07(shape: ModelShape, p: Mapping, tok: _Tokens) -> list[Pass]:
    n, b = p["n_samples"], p["batch_size"]
    per_task = 1 + len(p["ks"]) * 2 * (1 + p["n_draws"])
    label = f"generation (baseline + {per_task - 1} ablations)"
    return _generate(label, n, b, tok, {t: per_task for t in TASKS}, _new_tokens(shape))


_WORKLOADS: dict[str, Callable[..., list[Pass]]] = {
    "01_data_and_baselines": _ch01,
    "02_containerization": _ch02,
    "03_views": _ch03,
    "04_position_decoding": _ch04,
    "05_attention_knockout": _ch05,
    "06_mediation": _ch06,
    "07_head_ablation": _ch07,
}
#: Chapters that run on one family only.
_FAMILIES = {"03_views": ("internvl",)}


def chapter_passes(
    shape: ModelShape, chapter: str, params: Mapping[str, Any], dtype_bytes: int = 2
) -> list[Pass]:
    """The passes of ``chapter`` on ``shape`` with ``params`` (its defaults updated by them)."""
    if chapter not in _WORKLOADS:
        raise NoPlan(f"no plan for chapter {chapter!r}; the plan knows {', '.join(_WORKLOADS)}")
    p = {**CHAPTER_DEFAULTS[chapter], **params}
    text = TEXT_TOKENS[shape.family]
    tok = _Tokens(text["before"], shape.visual_tokens(), text["prompt"], text["answer"])
    if chapter == "06_mediation":
        return _ch06(shape, p, tok, shape.geometry(dtype_bytes))
    return _WORKLOADS[chapter](shape, p, tok)


# --------------------------------------------------------------------------- plans


class PlanError(RuntimeError):
    """A chapter's plan does not fit the GPU; the message says, in one sentence, what would."""


@dataclass(frozen=True)
class ChapterPlan:
    """One chapter on one model, GPU and dtype: its peak memory at a batch, the batch that fits, its time."""

    chapter: str
    batch_size: int
    weights: float  # bytes (every model copy the chapter holds)
    peak_pass: str
    working: _Costs  # bytes of the peak pass at its batch, by kind
    usable: float  # bytes
    largest_batch: int  # 0: not even batch 1
    seconds: float | None
    paper_seconds: float | None
    host_peak: float  # bytes
    host_ram: float | None  # bytes, where the machine's is known

    @property
    def need(self) -> float:
        return self.weights + self.working.total

    @property
    def fits_memory(self) -> bool:
        return self.need <= self.usable

    @property
    def fits_host(self) -> bool:
        return self.host_ram is None or self.host_peak <= self.host_ram

    @property
    def fits(self) -> bool:
        return self.fits_memory and self.fits_host


def duration(seconds: float | None) -> str:
    """``42 s``, ``7.5 min``, ``3.2 h`` or ``2.1 days``."""
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _gib(x: float) -> str:
    return f"{x / GIB:.1f}"


@dataclass
class PlanTable:
    """The plan of a model on one GPU and dtype, one :class:`ChapterPlan` per chapter."""

    model_id: str
    gpu: GPU
    dtype: str
    attn: str
    shape: ModelShape
    plans: list[ChapterPlan] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(p.fits for p in self.plans)

    def header(self) -> str:
        s = self.shape
        views = s.views()
        tiles = f", {views - 1} tiles + thumbnail = {s.visual_tokens():,} visual tokens" if views > 1 else ""
        if s.dynamic:
            rows, cols = s.grid()
            tiles = f", resized to {cols * s.patch}x{rows * s.patch} = {s.visual_tokens():,} visual tokens"
        host = f"; host RAM {self.gpu.host_ram_gb:.1f} GiB" if self.gpu.host_ram_gb else ""
        return (
            f"{NAMES.get(self.model_id, self.model_id)} on {self.gpu.name} ({self.gpu.memory_gb:.1f} GiB, "
            f"{_gib(self.gpu.usable_bytes)} usable{host}), {self.dtype}, {self.attn} attention{tiles}: "
            f"weights {_gib(s.n_params() * _DTYPE_BYTES[self.dtype])} GiB"
        )

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for p in self.plans:
            w = p.working
            out.append({
                "chapter": p.chapter, "batch": p.batch_size, "peak pass": p.peak_pass,
                "KV GiB": _gib(w.kv), "attention GiB": _gib(w.attention), "kept GiB": _gib(w.kept),
                "other GiB": _gib(w.other),
                "peak GiB": _gib(p.need), "fits": "yes" if p.fits else ("no (host RAM)" if p.fits_memory else "no"),
                "largest batch": p.largest_batch or "none",
                "host peak GiB": _gib(p.host_peak),
                "time (defaults)": duration(p.seconds), "time (paper's scale)": duration(p.paper_seconds),
            })  # fmt: skip
        return out

    def frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows()).set_index("chapter")

    def text(self) -> str:
        rows = self.rows()
        cols = list(rows[0]) if rows else []
        width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
        lines = [self.header(), "  ".join(c.ljust(width[c]) for c in cols)]
        lines += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def _peak(shape: ModelShape, passes: Sequence[Pass], d: int, attn: str) -> tuple[str, _Costs]:
    """The pass with the largest working set at its batch: its label and its bytes by kind."""
    best = ("", _Costs(0, 0, 0, 0))
    for p in passes:
        c = row_bytes(shape, p, d, attn)
        at_batch = _Costs(c.kv * p.batch, c.attention * p.batch, c.kept * p.batch, c.other * p.batch)
        if at_batch.total > best[1].total:
            best = (p.label, at_batch)
    return best


def _host_peak(weights: float, chapter: str, params: Mapping[str, Any], on_gpu: bool) -> float:
    """Host memory while loading: the runtime and one shard (straight to the GPU) or every weight;
    chapter 4's control builds its random-init copy on the CPU, a full copy."""
    peak = HOST_RUNTIME_GIB * GIB + (min(weights, SHARD_GIB * GIB) if on_gpu else weights)
    if chapter == "04_position_decoding" and params.get("control", True):
        peak = max(peak, HOST_RUNTIME_GIB * GIB + weights)
    return peak


def plan_chapter(
    shape: ModelShape,
    chapter: str,
    gpu: GPU,
    dtype: str,
    batch_size: int | None = None,
    attn: str = "sdpa",
    params: Mapping[str, Any] | None = None,
    timed: bool = True,
    on_gpu: bool = True,
) -> ChapterPlan:
    """One chapter's plan: memory at ``batch_size`` (default: the chapter's), the largest batch
    that fits, and the time at these parameters and at the paper's scale."""
    if chapter not in _WORKLOADS:
        raise NoPlan(f"no plan for chapter {chapter!r}; the plan knows {', '.join(_WORKLOADS)}")
    d = _DTYPE_BYTES[dtype]
    params = {k: v for k, v in (params or {}).items() if v is not None}
    b = int(batch_size or params.get("batch_size") or CHAPTER_DEFAULTS[chapter]["batch_size"])
    params = {**params, "batch_size": b}
    copies = 2 if chapter == "04_position_decoding" and params.get("control", True) else 1
    weights = shape.n_params() * d * copies
    free = gpu.usable_bytes - weights

    def need(batch: int) -> float:
        return _peak(shape, chapter_passes(shape, chapter, {**params, "batch_size": batch}, d), d, attn)[
            1
        ].total

    label, costs = _peak(shape, chapter_passes(shape, chapter, params, d), d, attn)
    largest = largest_fitting(lambda x: need(x) <= free)
    seconds = paper = None
    if timed:
        g = shape.geometry(d)
        share = (shape.vision_params() + shape.projector_params()) / shape.n_params()
        run = chapter_passes(shape, chapter, params, d)
        seconds = sum(pass_seconds(g, p, gpu, dtype, share) for p in run)
        at_paper = chapter_passes(shape, chapter, {**params, **PAPER_SCALE[chapter]}, d)
        paper = sum(pass_seconds(g, p, gpu, dtype, share) for p in at_paper)
    host = _host_peak(shape.n_params() * d, chapter, params, on_gpu)
    ram = gpu.host_ram_gb * GIB if gpu.host_ram_gb else None
    return ChapterPlan(
        chapter, b, weights, label, costs, gpu.usable_bytes, largest, seconds, paper, host, ram
    )


def largest_fitting(ok: Callable[[int], bool], cap: int = 1024) -> int:
    """The largest batch in 1..cap for which ``ok`` holds (memory grows with the batch); 0 if none."""
    if not ok(1):
        return 0
    lo, hi = 1, cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def _chapters_for(shape: ModelShape, chapters: Sequence[str] | None) -> list[str]:
    names = list(chapters or _WORKLOADS)
    return [c for c in names if shape.family in _FAMILIES.get(c, (shape.family,))]


def plan_model(
    model_id: str,
    gpu: str | GPU = "t4",
    dtype: str = "auto",
    chapters: Sequence[str] | None = None,
    batch_size: int | None = None,
    max_tiles: int | None = None,
    attn: str = "sdpa",
    params: Mapping[str, Any] | None = None,
    timed: bool = True,
) -> PlanTable:
    """The plan of ``model_id`` on ``gpu`` (a key of :data:`GPUS` or a :class:`GPU`) for ``chapters``."""
    card = GPUS[gpu] if isinstance(gpu, str) else gpu
    shape = shape_of(model_id, max_tiles)
    name = choose_dtype(dtype, "cuda", card.bf16, card.name)
    table = PlanTable(model_id, card, name, attn, shape)
    for c in _chapters_for(shape, chapters):
        table.plans.append(plan_chapter(shape, c, card, name, batch_size, attn, params, timed))
    return table


# --------------------------------------------------------------------------- refusing early


def _detected_gpu(device: str) -> GPU:
    """The GPU ``device`` names, matched to :data:`GPUS` by name (peaks and bandwidth) with its own
    memory, bfloat16 support and the machine's host RAM; an unknown card is timed as an A100 40GB.
    ``"cuda"`` with several GPUs visible plans with their memory summed (the model is spread over
    them); the time stays one card's, as the layers run on one card after another."""
    import torch

    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    name, memory = props.name, props.total_memory / GIB
    a100 = "a100-80" if memory > 50 else "a100-40"
    count = torch.cuda.device_count() if device == "cuda" else 1
    if count > 1:  # load_model spreads the model over every visible GPU: plan with their sum
        memory = sum(torch.cuda.get_device_properties(i).total_memory for i in range(count)) / GIB
    bf16 = torch.cuda.get_device_capability(index) >= (8, 0)
    try:  # this machine's host RAM, which the load must fit too
        import psutil

        host = psutil.virtual_memory().total / GIB
    except ImportError:
        host = None
    for key, known in (("H100", "h100"), ("A100", a100), ("L4", "l4"), ("T4", "t4")):
        if key in name:
            card = GPUS[known]
            break
    else:
        card = GPUS["a100-40"]
    name = f"{count} x {name}" if count > 1 else name
    return dataclasses.replace(card, name=name, memory_gb=memory, bf16=bf16, host_ram_gb=host)


def _forced_gpu(memory_gb: float | None) -> float | None:
    if memory_gb is not None:
        return float(memory_gb)
    env = os.environ.get(MEMORY_ENV)
    return float(env) if env else None


def _with_batch(text: str, plan: ChapterPlan) -> str | None:
    """``text``, with the batch that fits when it is below the one asked for; None if none fits."""
    if not plan.fits_host or plan.largest_batch == 0:
        return None
    return (
        text if plan.largest_batch >= plan.batch_size else f"{text} with -p batch_size {plan.largest_batch}"
    )


def _suggestion(table: PlanTable, plan: ChapterPlan, params: Mapping[str, Any]) -> str:
    """What would fit, in this order: without chapter 4's control copy, a smaller batch, fewer
    InternVL tiles, half precision, the smallest bigger GPU of :data:`GPUS`."""
    shape, gpu, b = table.shape, table.gpu, plan.batch_size

    def again(s: ModelShape = shape, card: GPU = gpu, dtype: str = table.dtype, **extra: Any) -> ChapterPlan:
        return plan_chapter(s, plan.chapter, card, dtype, b, table.attn, {**params, **extra}, timed=False)

    options: list[str | None] = []
    if plan.chapter == "04_position_decoding" and params.get("control", True):
        options.append(
            _with_batch(
                "-p control False (the control's random-init copy is a second model)", again(control=False)
            )
        )
    if plan.fits_host and 0 < plan.largest_batch < b:
        options.append(f"-p batch_size {plan.largest_batch}")
    for tiles in range(shape.max_tiles - 1 if shape.max_tiles else 0, 0, -1):
        if again(shape.with_tiles(tiles)).fits_memory:
            options.append(f"max_tiles={tiles} (fewer InternVL tiles)")
            break
    if table.dtype == "float32":
        half = "bfloat16" if gpu.bf16 else "float16"
        options.append(_with_batch(f"-p dtype {half}", again(dtype=half)))
    for card in sorted(GPUS.values(), key=lambda c: c.memory_gb):
        if card.memory_gb > gpu.memory_gb:
            name = choose_dtype("auto" if table.dtype != "float32" else "float32", "cuda", card.bf16)
            article = "a" if card.name.startswith("T") else "an"  # an A100, an H100, an L4
            found = _with_batch(
                f"a GPU with more memory, such as {article} {card.name}", again(card=card, dtype=name)
            )
            if found:
                options.append(found)
                break
    chosen = [o for o in options if o]
    if not chosen:
        return "nothing smaller fits: the weights alone need more than this memory"
    return "what fits: " + ", or ".join(chosen)


def _refusal(table: PlanTable, plan: ChapterPlan, params: Mapping[str, Any]) -> str:
    """One sentence: what the chapter needs, what the GPU (or host) has, and what would fit."""
    name = NAMES.get(table.model_id, table.model_id)
    if not plan.fits_memory:
        what = (
            f"{name} in {table.dtype} needs {_gib(plan.need)} GiB for chapter {plan.chapter} at batch "
            f"{plan.batch_size}: {_gib(plan.weights)} GiB of weights and {_gib(plan.working.total)} GiB for "
            f"its {plan.peak_pass}, more than the {_gib(plan.usable)} GiB usable on this {table.gpu.name}"
        )
    else:
        what = (
            f"loading {name} for chapter {plan.chapter} needs about {_gib(plan.host_peak)} GiB of host RAM, "
            f"more than this machine's {_gib(plan.host_ram or 0)} GiB"
        )
    return f"{what}; {_suggestion(table, plan, params)}."


def check_fits(
    model_id: str,
    chapter: str,
    device: str = "auto",
    dtype: str | None = "auto",
    batch_size: int | None = None,
    max_tiles: int | None = None,
    memory_gb: float | None = None,
    attn_implementation: str | None = None,
    **params: Any,
) -> PlanTable | None:
    """Plan ``chapter`` on the GPU the model will load on, before it loads; refuse what cannot fit.

    On a GPU, or when ``memory_gb`` (or the ``VLMLOC_MEMORY_GB`` environment variable) forces a
    budget in GiB, prints the plan table and raises :class:`PlanError` with one sentence naming
    what would fit (a smaller batch, fewer InternVL tiles, another dtype or GPU). On a CPU without
    a budget it returns the plan quietly (the toys need no plan). ``params`` are the chapter's
    other parameters (``n_samples``, ``ig_steps``, ``control``, ...), for the time estimate. A
    model the plan cannot describe (:class:`NoPlan`) is let through: None.
    """
    from .registry import get_spec

    spec = get_spec(model_id)
    dev = resolve_device(device)
    forced = _forced_gpu(memory_gb)
    if dev.startswith("cuda"):
        gpu = _detected_gpu(dev)
    else:
        gpu = GPU(f"CPU ({dev})", float("inf"), H100.peak_tflops, H100.bandwidth_tbs, bf16=False)
    if forced is not None:
        gpu = dataclasses.replace(
            gpu, name=f"{gpu.name} with a forced {forced:g} GiB budget", memory_gb=forced
        )
    on_gpu = dev.startswith("cuda")
    name = choose_dtype(dtype if dtype is not None else spec.default_dtype, dev, gpu.bf16, gpu.name)
    try:
        shape = shape_of(model_id, max_tiles)
        table = PlanTable(model_id, gpu, name, attn_implementation or "sdpa", shape)
        plan = plan_chapter(shape, chapter, gpu, name, batch_size, table.attn, params, on_gpu, on_gpu)
    except NoPlan as e:  # no plan is no reason to refuse
        if on_gpu or forced is not None:
            print(f"{e}; its memory is not checked before loading")
        return None
    table.plans.append(plan)
    if not on_gpu and forced is None:
        return table
    print(table.text())
    if not plan.fits:
        raise PlanError(_refusal(table, plan, params))
    return table


# --------------------------------------------------------------------------- the README's tables

README_BEGIN = "<!-- plan: generated by python -m vlmloc.plan --readme --write -->"
README_END = "<!-- /plan -->"
README_MODELS = (LLAVA_7B, LLAVA_13B, INTERNVL_8B, QWEN_3B, QWEN_7B)
README_GPUS = ("t4", "l4", "a100-80", "h100")


def readme_tables() -> str:
    """For the README and the setup page: each real model on T4, L4, A100 80GB and H100, every
    chapter at its defaults (fits at its batch? the largest batch) and its time at the paper's scale."""
    lines = [
        "Each cell: does the chapter fit at its default batch (else the largest batch that fits, or",
        "none), and the estimated time at the paper's scale. Weights in the dtype `auto` picks",
        "(bfloat16, or float16 on the T4); InternVL with 12 tiles + thumbnail of a 640x480 image,",
        "Qwen2.5-VL with the same image resized to 644x476 (391 visual tokens).",
        "",
    ]
    for model_id in README_MODELS:
        tables = {g: plan_model(model_id, g) for g in README_GPUS}
        first = tables[README_GPUS[0]]
        lines.append(f"**{NAMES.get(model_id, model_id)}** (`{model_id}`)")
        lines.append("")
        head = " | ".join(
            f"{GPUS[g].name}, {t.dtype}, weights {_gib(t.shape.n_params() * _DTYPE_BYTES[t.dtype])} GiB"
            for g, t in tables.items()
        )
        lines.append(f"| chapter (default batch) | {head} |")
        lines.append("|---" * (1 + len(tables)) + "|")
        for i, c in enumerate(first.plans):
            cells = []
            for t in tables.values():
                p = t.plans[i]
                fit = (
                    "fits" if p.fits else (f"batch {p.largest_batch}" if p.largest_batch else "does not fit")
                )
                if p.fits_memory and not p.fits_host:
                    fit = "host RAM too small"
                cells.append(f"{fit}; {duration(p.paper_seconds)}")
            lines.append(f"| `{c.chapter}` ({c.batch_size}) | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _block(text: str) -> tuple[int, int]:
    start = text.find(README_BEGIN)
    end = text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"no block between {README_BEGIN!r} and {README_END!r}")
    return start + len(README_BEGIN), end


def readme_block(path: str | Path) -> str:
    """The plan tables as they stand in ``path`` (README.md or book/setup.md)."""
    text = Path(path).read_text(encoding="utf-8")
    start, end = _block(text)
    return text[start:end].strip("\n") + "\n"


def write_readme_block(path: str | Path) -> bool:
    """Replace the plan tables in ``path`` by :func:`readme_tables`; whether the file changed."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    start, end = _block(text)
    new = text[:start] + "\n" + readme_tables() + "\n" + text[end:]  # a blank line ends the last table
    if new == text:
        return False
    p.write_text(new, encoding="utf-8")
    return True


# --------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlmloc.plan", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "model_id", nargs="?", help="a model id (python -c 'import vlmloc; print(vlmloc.model_ids())')"
    )
    p.add_argument("--gpu", choices=sorted(GPUS), default="t4")
    p.add_argument("--dtype", default="auto", choices=["auto", *_DTYPE_BYTES])
    p.add_argument("--chapter", action="append", help="a chapter name (repeat; default: every chapter)")
    p.add_argument("--batch-size", type=int, help="every chapter at this batch (default: each chapter's)")
    p.add_argument("--max-tiles", type=int, help="InternVL: at most this many tiles (default 12)")
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    p.add_argument("--readme", action="store_true", help="print the README's plan tables")
    p.add_argument("--write", nargs="*", help="with --readme: update the tables in these files")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.readme:
        if a.write is None:
            print(readme_tables(), end="")
        for path in a.write or ():
            print(f"{'updated' if write_readme_block(path) else 'unchanged'}: {path}")
        return 0
    if not a.model_id:
        _parser().error("give a model id, or --readme")
    try:
        table = plan_model(a.model_id, a.gpu, a.dtype, a.chapter, a.batch_size, a.max_tiles, a.attn)
    except (DTypeError, PlanError, NoPlan) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
