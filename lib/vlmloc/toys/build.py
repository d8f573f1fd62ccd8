"""Configs and processors of the toy models: the real classes, small sizes.

The toys are ``LlavaForConditionalGeneration`` and ``InternVLForConditionalGeneration`` with real
``LlavaProcessor`` / ``InternVLProcessor`` objects, so every adapter code path (prompting, token
positions, view geometry, answer parsing) is the one used for LLaVA-1.5 and InternVL-3.5.
"""

from __future__ import annotations

from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaProcessor,
)

from .qwen import toy_qwen2_5_vl
from .sizes import decoder_sizes
from .tokenizer import INTERNVL_CHAT_TEMPLATE, build_tokenizer

#: Sizes of the toys. LLaVA: 96 px, 8 px patches -> 12 x 12 = 144 tokens. InternVL: 64 px tiles,
#: 4 px patches -> 16 x 16 patches -> pixel shuffle 0.5 -> 8 x 8 = 64 tokens per view, up to 4 tiles.
TOY_SIZES = {
    "llava": dict(image=96, patch=8, vision_width=128, vision_layers=4, vision_heads=4),
    "internvl": dict(image=64, patch=4, vision_width=96, vision_layers=4, vision_heads=4, max_tiles=2),
    "text": dict(width=128, layers=8, heads=8, kv_heads=8, mlp=256, head_dim=16),
}


def toy_llava(
    seed: int = 0, vision: dict | None = None, text: dict | None = None
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A fresh (random) toy LLaVA and its processor (pad to square, as LLaVA-1.5 was trained).

    ``vision`` / ``text`` override :data:`TOY_SIZES` (the tests build LLaVA-1.5's real geometry:
    336 px, 14 px patches, 24 x 24 = 576 tokens, with tiny widths).
    """
    import torch

    s, t = {**TOY_SIZES["llava"], **(vision or {})}, {**TOY_SIZES["text"], **(text or {})}
    tok = build_tokenizer("llava")
    grid = s["image"] // s["patch"]
    cfg = LlavaConfig(
        text_config=dict(
            model_type="llama",
            **decoder_sizes(t, len(tok)),
            num_key_value_heads=t["kv_heads"],
            max_position_embeddings=512,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            model_type="clip_vision_model",
            image_size=s["image"],
            patch_size=s["patch"],
            hidden_size=s["vision_width"],
            intermediate_size=4 * s["vision_width"],
            num_hidden_layers=s["vision_layers"],
            num_attention_heads=s["vision_heads"],
            projection_dim=s["vision_width"],
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=grid * grid,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    ip = LlavaImageProcessor(
        size={"shortest_edge": s["image"]},
        crop_size={"height": s["image"], "width": s["image"]},
        do_pad=True,
    )
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=s["patch"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    _generation_defaults(model, tok)
    return model, proc


def toy_internvl(
    seed: int = 0, vision: dict | None = None, text: dict | None = None
) -> tuple[InternVLForConditionalGeneration, InternVLProcessor]:
    """A fresh (random) toy InternVL (Qwen3 decoder) and its processor (tiles + thumbnail).

    ``vision`` / ``text`` override :data:`TOY_SIZES` (the tests build InternVL-3.5's real geometry:
    448 px tiles, 14 px patches, 256 tokens per tile, up to 12 tiles).
    """
    import torch

    s, t = {**TOY_SIZES["internvl"], **(vision or {})}, {**TOY_SIZES["text"], **(text or {})}
    tok = build_tokenizer("internvl")
    side = s["image"] // s["patch"] // 2
    cfg = InternVLConfig(
        text_config=dict(
            model_type="qwen3",
            **decoder_sizes(t, len(tok)),
            num_key_value_heads=t["kv_heads"] // 2,
            head_dim=t["head_dim"],
            max_position_embeddings=1024,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            hidden_size=s["vision_width"],
            intermediate_size=4 * s["vision_width"],
            num_hidden_layers=s["vision_layers"],
            num_attention_heads=s["vision_heads"],
            image_size=[s["image"], s["image"]],
            patch_size=[s["patch"], s["patch"]],
            hidden_act="gelu",
        ),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=side * side,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(cfg).eval()
    ip = GotOcr2ImageProcessor(
        size={"height": s["image"], "width": s["image"]}, min_patches=1, max_patches=s["max_tiles"]
    )
    proc = InternVLProcessor(
        image_processor=ip,
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(),
        image_seq_length=side * side,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    _generation_defaults(model, tok)
    return model, proc


def _generation_defaults(model, tok) -> None:
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    gc.do_sample = False
    gc.max_new_tokens = 24


def toy_qwen(seed: int = 0, vision: dict | None = None, text: dict | None = None):
    """A fresh (random) toy Qwen2.5-VL and its processor (:func:`vlmloc.toys.qwen.toy_qwen2_5_vl`)."""
    return toy_qwen2_5_vl(seed, vision, text)


BUILDERS = {"llava": toy_llava, "internvl": toy_internvl, "qwen2_5_vl": toy_qwen}
