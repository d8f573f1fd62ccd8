"""The paper's reported numbers, in one place, so that every chapter prints ours beside them.

Source: Schaumlöffel, Vilas and Roig, *Mechanisms of Object Localization in Vision-Language
Models* (CVPR 2026), Tables 1-3 and Section 3 as summarized in ``paper.md``. All rates are in
percent; ``None`` marks a number the paper does not report.
"""

from __future__ import annotations

__all__ = [
    "CONTROL_SET",
    "MODELS",
    "RESULTS",
    "SUMMARY_CONDITIONS",
    "VIEWS_BY_SIZE",
    "VIEWS_CONDITIONS",
    "paper_numbers",
]

#: Display names of the paper's models, keyed by the model ids this package loads them with.
MODELS: dict[str, str] = {
    "llava-hf/llava-1.5-7b-hf": "LLaVA-1.5-7B",
    "OpenGVLab/InternVL3_5-8B-HF": "InternVL-3.5-8B",
}

#: ``RESULTS[model_id][condition] = {"loc": ..., "cls": ...}`` (Tables 1, 2 and 3 of the paper).
RESULTS: dict[str, dict[str, dict[str, float | None]]] = {
    "llava-hf/llava-1.5-7b-hf": {
        "baseline": {"loc": 35.34, "cls": 58.10},
        "object_tokens": {"loc": 5.92, "cls": 19.44, "share": 8.0},
        "object_padding_2": {"loc": 0.34, "cls": 10.59, "share": 21.0},
        "random_tokens": {"loc": 35.09, "cls": 56.58, "share": 8.0},
        "global_shuffle": {"loc": 1.90, "cls": 62.42},
        "intra_object_shuffle": {"loc": 35.30, "cls": 58.44},
    },
    "OpenGVLab/InternVL3_5-8B-HF": {
        "baseline": {"loc": 72.64, "cls": 83.30},
        "object_tokens": {"loc": 11.27, "cls": 33.19},
        "global_view_object_tokens": {"loc": 36.20, "cls": 73.80},  # Table 3: thumbnail only
        "local_view_object_tokens": {"loc": 62.93, "cls": 76.65},  # Table 3: tiles only
    },
}

#: Chapter 3's conditions -> the paper's (InternVL-3.5-8B): Table 3 for one view, Table 1's object
#: tokens for both views; the random controls have no paper number.
VIEWS_CONDITIONS: dict[str, str] = {
    "baseline": "baseline",
    "global": "global_view_object_tokens",
    "local": "local_view_object_tokens",
    "both": "object_tokens",
}

#: Table 3 by object size (InternVL-3.5-8B), as far as the paper gives it: a statement per size and
#: view, and the one number it reports (large objects gain 6.5 points of Loc when their tile tokens
#: are removed). ``d_loc``/``d_cls`` are changes from the baseline in points; ``None``: not reported.
VIEWS_BY_SIZE: dict[str, dict[str, dict[str, object]]] = {
    "small": {
        "global": {"d_loc": None, "d_cls": None, "statement": "sensitive to the thumbnail"},
        "local": {"d_loc": None, "d_cls": None, "statement": "sensitive to the tiles"},
    },
    "large": {
        "global": {"d_loc": None, "d_cls": None, "statement": "Loc depends on the thumbnail"},
        "local": {"d_loc": 6.5, "d_cls": None, "statement": "removing the tiles raises Loc"},
    },
}

#: Keys of the chapters' summaries (``<section>.<condition>``) and the paper condition each one
#: reproduces; the chapters' tables and the results page both read this.
SUMMARY_CONDITIONS: dict[str, str] = {
    "baseline": "baseline",
    "ablation.object": "object_tokens",
    "ablation.object+2": "object_padding_2",
    "ablation.random": "random_tokens",
    "shuffle.global": "global_shuffle",
    "shuffle.intra_object": "intra_object_shuffle",
    "views.global": "global_view_object_tokens",
    "views.local": "local_view_object_tokens",
}

#: The object-removal control set of the paper (LLaVA-1.5-7B, LaMa inpainting).
CONTROL_SET: dict[str, object] = {
    "model_id": "llava-hf/llava-1.5-7b-hf",
    "n_kept": 2248,
    "n_images": 1720,
    "method": "lama",
}


def paper_numbers(condition: str) -> dict[str, dict[str, float | None]]:
    """``{display name: {"loc", "cls"}}`` of every paper model that reports ``condition``."""
    return {MODELS[m]: dict(rows[condition]) for m, rows in RESULTS.items() if condition in rows}
