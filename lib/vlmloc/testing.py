"""Tiny random models at the real geometry, saved as checkpoints and registered, for tests.

Why: every real-model code path (loading, prompts, token positions, view geometry, interventions)
must run offline without weights. These builders make LLaVA-1.5 and InternVL-3.5 look-alikes with
the real image geometry and tiny widths, save them with their processors, and register them under
a model id so that :func:`vlmloc.load_model` loads them like any checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from .registry import ModelSpec, register
from .toys.build import toy_internvl, toy_llava
from .toys.qwen import QWEN_REAL_GEOMETRY, QWEN_TINY_TEXT, toy_qwen2_5_vl

TINY_TEXT = dict(width=32, layers=2, heads=4, kv_heads=4, mlp=64, head_dim=8)
#: Qwen3 as in InternVL-3.5: grouped-query attention (2 KV heads for 4 heads) and heads x head_dim
#: (48) != hidden size (32), so a head slice taken as hidden_size // heads would be wrong.
TINY_TEXT_QWEN3 = dict(TINY_TEXT, head_dim=12)
#: LLaVA-1.5: CLIP ViT-L/14 at 336 px -> 24 x 24 = 576 tokens (CLS dropped).
LLAVA_REAL_GEOMETRY = dict(image=336, patch=14, vision_width=16, vision_layers=2, vision_heads=2)
#: InternVL-3.5: 448 px tiles, 14 px patches -> 32 x 32 -> pixel shuffle 0.5 -> 16 x 16 = 256 per tile.
INTERNVL_REAL_GEOMETRY = dict(
    image=448, patch=14, vision_width=16, vision_layers=1, vision_heads=2, max_tiles=12
)


def save_tiny(
    family: str,
    out: str | Path,
    model_id: str | None = None,
    seed: int = 0,
    image_processor_type: str | None = None,
) -> ModelSpec:
    """Build, save and register a tiny random model of ``family`` at the real geometry.

    ``image_processor_type`` rewrites the class the saved processor config names, e.g.
    ``"CLIPImageProcessor"`` for a LLaVA checkpoint whose processor cannot pad.
    """
    out = Path(out)
    if family == "llava":
        model, proc = toy_llava(seed, vision=LLAVA_REAL_GEOMETRY, text=TINY_TEXT)
    elif family == "internvl":
        model, proc = toy_internvl(seed, vision=INTERNVL_REAL_GEOMETRY, text=TINY_TEXT_QWEN3)
    elif family == "qwen2_5_vl":  # Qwen2.5-VL: 14 px patches, 2 x 2 merge, windows + full blocks, GQA
        model, proc = toy_qwen2_5_vl(seed, vision=QWEN_REAL_GEOMETRY, text=QWEN_TINY_TEXT)
    else:
        raise ValueError(f"unknown family {family!r}; use 'llava', 'internvl' or 'qwen2_5_vl'")
    model.save_pretrained(out)
    proc.save_pretrained(out)
    if image_processor_type is not None:
        path = out / "processor_config.json"
        cfg = json.loads(path.read_text())
        cfg["image_processor"]["image_processor_type"] = image_processor_type
        path.write_text(json.dumps(cfg, indent=2))
    return register(ModelSpec(model_id or f"tiny-{family}", family, str(out), "float32", toy=True))
