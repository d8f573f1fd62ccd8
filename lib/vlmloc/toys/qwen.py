"""A small Qwen2.5-VL: the real classes (``Qwen2_5_VLForConditionalGeneration``, ``Qwen2_5_VLProcessor``)
with tiny widths, and a word-level tokenizer built offline, as for the LLaVA and InternVL toys.

Why a separate module: Qwen2.5-VL's tokens (``<|vision_start|><|image_pad|>...<|vision_end|>``),
chat template and JSON answers differ from the other two toys. The tokenizer keeps
``"bbox_2d"`` and ``"label"`` atomic (so no digit inside a key counts as a coordinate when an
answer is scored) and has one token per integer coordinate.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from ..families.base import CLASSIFICATION_Q
from ..families.qwen2_5_vl import QWEN_LOCALIZATION_Q
from ..synthetic import CLASSES
from .sizes import decoder_sizes

__all__ = [
    "QWEN_CHAT_TEMPLATE",
    "QWEN_REAL_GEOMETRY",
    "QWEN_TOY_GEOMETRY",
    "QWEN_TOY_TEXT",
    "build_qwen_tokenizer",
    "toy_qwen2_5_vl",
]

#: Qwen2.5-VL's special tokens, with the names its processor and config read.
QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
#: The largest coordinate word (pixels of the resized image); larger numbers tokenize as <unk>.
MAX_COORDINATE = 2048

#: Qwen2.5-VL's chat template, as in its tokenizer_config.json, less videos and image numbering.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Qwen2.5-VL's image pipeline (its preprocessor_config.json: 14 px patches, 2 x 2 merge,
#: min_pixels 56 * 56, max_pixels 28 * 28 * 16384) and its tower's layout (112 px attention
#: windows, full attention in some blocks; 32 blocks, every 8th full, scaled down to 4 blocks,
#: every 2nd full), with tiny widths.
QWEN_REAL_GEOMETRY = dict(
    patch=14,
    merge=2,
    temporal=2,
    min_pixels=56 * 56,
    max_pixels=28 * 28 * 16384,
    window=112,
    vision_width=16,
    vision_mlp=32,
    vision_layers=4,
    fullatt=(1, 3),
    vision_heads=2,
)
#: Qwen2.5-VL's own rotary base (3B and 7B); the tiny random model keeps it.
QWEN_ROPE_THETA = 1000000.0
#: The decoder: grouped-query attention like the 3B (16 heads / 2 KV heads), scaled down.
QWEN_TINY_TEXT = dict(
    width=64, layers=2, heads=4, kv_heads=2, mlp=128, mrope=(2, 3, 3), rope_theta=QWEN_ROPE_THETA
)

#: The trained toy (``toy-qwen``): the real pipeline scaled like the other toys. 4 px patches merged
#: 2 x 2, so one LLM token covers 8 x 8 resized pixels as in toy-llava; ``max_pixels`` of 96 x 96
#: resizes a 224 x 224 scene to 12 x 12 = 144 tokens and a 288 x 160 one to 16 x 8 (the aspect
#: ratio is kept); 32 px attention windows (4 x 4 tokens) with full attention in blocks 1 and 3.
QWEN_TOY_GEOMETRY = dict(
    patch=4,
    merge=2,
    temporal=2,
    min_pixels=32 * 32,
    max_pixels=96 * 96,
    window=32,
    vision_width=96,
    vision_mlp=384,
    vision_layers=4,
    fullatt=(1, 3),
    vision_heads=4,
)
#: The toy's decoder: the other toys' sizes (8 layers, 8 heads of 16, width 128), grouped-query
#: attention with 2 KV heads; M-RoPE sections over the 8 rotary pairs of a 16-wide head.
#: ``rope_theta`` 10, not Qwen's 1e6: M-RoPE gives the last (slowest) pairs to the width axis, and
#: with 8 pairs at 1e6 they turn under 0.003 rad across a 12-token row, so a decoder fed CLIP-like
#: tokens could not tell left from right (first toy-qwen: mean |dx| 15.6% of the width against
#: |dy| 3.2%). At 10 the width pairs turn 1.6 to 2.9 rad across the row. The real model reads width
#: from its tower instead (see the README's toy-qwen paragraph).
QWEN_TOY_TEXT = dict(width=128, layers=8, heads=8, kv_heads=2, mlp=256, mrope=(2, 3, 3), rope_theta=10.0)

_SPLIT = Regex(r'"bbox_2d"|"label"|\d+\.\d+|\d+|[\[\]{},.?:"`]')


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(_SPLIT, "isolated")]
    )


def _vocabulary() -> list[str]:
    pre = _pre_tokenizer()
    texts = [
        "system user assistant You are a helpful assistant . json",
        CLASSIFICATION_Q,
        QWEN_LOCALIZATION_Q.format(name=""),
        '[{"bbox_2d": [1, 2, 3, 4], "label": "x"}] ```',
    ]
    words = [w for t in texts for w, _ in pre.pre_tokenize_str(t)]
    words += list(CLASSES) + [str(i) for i in range(MAX_COORDINATE + 1)]
    return list(dict.fromkeys(words))


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with Qwen2.5-VL's special tokens (``<|endoftext|>`` pads, ``<|im_end|>`` ends)."""
    vocab = {w: i for i, w in enumerate(["<unk>", *QWEN_SPECIAL, *_vocabulary()])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = _pre_tokenizer()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL[1:]})
    tok.padding_side = "left"
    return tok


def toy_qwen2_5_vl(
    seed: int = 0, vision: dict | None = None, text: dict | None = None
) -> tuple[Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor]:
    """A fresh (random) Qwen2.5-VL look-alike and its processor: the toy's sizes by default; the
    tests pass :data:`QWEN_REAL_GEOMETRY` (14 px patches, the real ``min_pixels``/``max_pixels``)."""
    import torch

    s, t = {**QWEN_TOY_GEOMETRY, **(vision or {})}, {**QWEN_TOY_TEXT, **(text or {})}
    tok = build_qwen_tokenizer()
    ids = {name: tok.convert_tokens_to_ids(name) for name in QWEN_SPECIAL}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            **decoder_sizes(t, len(tok)),
            num_key_value_heads=t["kv_heads"],
            max_position_embeddings=4096,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": t.get("rope_theta", QWEN_ROPE_THETA),
                "mrope_section": list(t["mrope"]),
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=s["vision_layers"],
            hidden_size=s["vision_width"],
            intermediate_size=s.get("vision_mlp", 2 * s["vision_width"]),
            num_heads=s["vision_heads"],
            patch_size=s["patch"],
            spatial_merge_size=s["merge"],
            temporal_patch_size=s["temporal"],
            window_size=s["window"],
            fullatt_block_indexes=list(s["fullatt"]),
            out_hidden_size=t["width"],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    pixels = dict(
        size={"shortest_edge": s["min_pixels"], "longest_edge": s["max_pixels"]},
        patch_size=s["patch"],
        merge_size=s["merge"],
        temporal_patch_size=s["temporal"],
    )
    proc = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.pad_token_id
    gc.do_sample = False
    gc.max_new_tokens = 24
    return model, proc
