"""The paper's reported numbers, in one place, so that every chapter prints ours beside them.

Source: Schaumlöffel, Vilas and Roig, *Mechanisms of Object Localization in Vision-Language
Models* (CVPR 2026), Tables 1-3 and Section 3 as summarized in ``paper.md``. All rates are in
percent; ``None`` marks a number the paper does not report.
"""

from __future__ import annotations

__all__ = [
    "CONTROL_SET",
    "HEAD_ABLATION",
    "LLAVA_7B",
    "INTERNVL_8B",
    "KNOCKOUT_LAYERS",
    "MEDIATION_LAYERS",
    "MEDIATION_PAIRS",
    "MEDIATION_TOP10_OVERLAP",
    "MODELS",
    "N_HEADS",
    "N_LAYERS",
    "POSITION_PEAKS",
    "POSITION_PROBES",
    "RESULTS",
    "SUMMARY_CONDITIONS",
    "VIEWS_BY_SIZE",
    "VIEWS_CONDITIONS",
    "conditions_of",
    "knockout_layers",
    "paper_numbers",
    "paper_result",
    "substitutions",
]

#: The paper's two main models, by the ids this package loads them with.
LLAVA_7B = "llava-hf/llava-1.5-7b-hf"
INTERNVL_8B = "OpenGVLab/InternVL3_5-8B-HF"

#: Display names of the paper's models, keyed by the model ids this package loads them with.
MODELS: dict[str, str] = {
    LLAVA_7B: "LLaVA-1.5-7B",
    INTERNVL_8B: "InternVL-3.5-8B",
}

#: ``RESULTS[model_id][condition] = {"loc": ..., "cls": ...}`` (Tables 1, 2 and 3 of the paper).
RESULTS: dict[str, dict[str, dict[str, float | None]]] = {
    LLAVA_7B: {
        "baseline": {"loc": 35.34, "cls": 58.10},
        "object_tokens": {"loc": 5.92, "cls": 19.44, "share": 8.0},
        "object_padding_2": {"loc": 0.34, "cls": 10.59, "share": 21.0},
        "random_tokens": {"loc": 35.09, "cls": 56.58, "share": 8.0},
        "global_shuffle": {"loc": 1.90, "cls": 62.42},
        "intra_object_shuffle": {"loc": 35.30, "cls": 58.44},
    },
    INTERNVL_8B: {
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
    "model_id": LLAVA_7B,
    "n_kept": 2248,
    "n_images": 1720,
    "method": "lama",
}


#: Decoder layers of the paper's models (LLaVA-1.5-7B: Vicuna-7B; InternVL-3.5-8B: Qwen3-8B).
N_LAYERS: dict[str, int] = {
    LLAVA_7B: 32,
    INTERNVL_8B: 36,
}
#: Attention heads per decoder layer of the paper's models (32 x 32 = 1,024 heads in LLaVA-1.5-7B,
#: 36 x 32 = 1,152 in InternVL-3.5-8B).
N_HEADS: dict[str, int] = {
    LLAVA_7B: 32,
    INTERNVL_8B: 32,
}

#: Attention knockout (Section 3, as summarized in paper.md): "Using attention knockout (blocking
#: attention to object tokens by layer groups), they found LLaVA relies on early-mid layers and
#: InternVL on mid-late layers. Both tasks share early layers, but localization requires extra
#: task-specific processing." The paper states no layer numbers for the knockout, so these are
#: our reading as fractions of depth ``[start, end)``: depth cut in thirds, "early-mid" = the
#: first two thirds, "mid-late" = the last two. ``words`` keeps the paper's own phrase.
KNOCKOUT_LAYERS: dict[str, dict[str, object]] = {
    LLAVA_7B: {"fraction": (0.0, 2 / 3), "words": "early-to-middle layers"},
    INTERNVL_8B: {"fraction": (1 / 3, 1.0), "words": "middle-to-late layers"},
}


def knockout_layers(paper_model: str, n_layers: int) -> tuple[int, int]:
    """The paper's knockout range for ``paper_model`` scaled to ``n_layers``: inclusive ``(first, last)``.

    A layer belongs to the range when its centre, ``(layer + 0.5) / n_layers``, lies in the
    fraction; on the paper's own models this gives LLaVA-1.5-7B layers 0-20 of 32 and
    InternVL-3.5-8B layers 12-35 of 36.
    """
    lo, hi = KNOCKOUT_LAYERS[paper_model]["fraction"]  # type: ignore[misc]
    inside = [
        i for i in range(n_layers) if lo <= (i + 0.5) / n_layers < hi or (hi == 1.0 and i == n_layers - 1)
    ]
    return inside[0], inside[-1]


def paper_numbers(condition: str) -> dict[str, dict[str, float | None]]:
    """``{display name: {"loc", "cls"}}`` of every paper model that reports ``condition``."""
    return {MODELS[m]: dict(rows[condition]) for m, rows in RESULTS.items() if condition in rows}


def conditions_of(*sections: str) -> dict[str, str]:
    """Our condition name -> the paper's, for the summary ``sections`` named (e.g. "ablation").

    Figures and tables of one chapter know a condition by its bare name ("object", "global");
    within the sections of one chapter those names are unique, across chapters they are not
    ("shuffle.global" and "views.global"), hence the choice of sections.
    """
    return {
        key.rpartition(".")[2]: name
        for key, name in SUMMARY_CONDITIONS.items()
        if key.partition(".")[0] in sections
    }


def paper_result(model_id: str, condition: str | None) -> dict[str, float | None] | None:
    """The paper's numbers for ``condition`` (a paper condition name) on ``model_id``; None if unreported."""
    return RESULTS.get(model_id, {}).get(condition) if condition else None


def substitutions() -> dict[str, str]:
    """The paper's numbers that the book's Markdown pages quote, as MyST substitutions.

    ``_config.yml`` (``parse.myst_substitutions``) must hold exactly these (a test checks it);
    ``book/intro.md`` writes ``{{ llava_loc }}`` instead of typing the number.
    """
    llava, internvl = RESULTS[LLAVA_7B], RESULTS[INTERNVL_8B]
    base = internvl["baseline"]["loc"]
    return {
        "llava_loc": f"{llava['baseline']['loc']:.1f}",
        "llava_loc_round": f"{llava['baseline']['loc']:.0f}",
        "llava_cls_round": f"{llava['baseline']['cls']:.0f}",
        "llava_object_share": f"{llava['object_tokens']['share']:.0f}",
        "llava_object_loc": f"{llava['object_tokens']['loc']:.1f}",
        "llava_intra_shuffle_change": f"{llava['baseline']['loc'] - llava['intra_object_shuffle']['loc']:.2f}",
        "internvl_global_view_drop": f"{base - internvl['global_view_object_tokens']['loc']:.0f}",
        "internvl_local_view_drop": f"{base - internvl['local_view_object_tokens']['loc']:.0f}",
    }


#: Position decoding (Section 3, "Implicit spatial reconstruction"): the LLM layer where linear
#: probes read a visual token's row and column best, of the model's ``n_layers`` decoder layers
#: (the paper's numbering; whether layer 0 is the embeddings is not stated).
POSITION_PEAKS: dict[str, dict[str, int]] = {
    LLAVA_7B: {"layer": 12, "n_layers": N_LAYERS[LLAVA_7B]},
    INTERNVL_8B: {"layer": 7, "n_layers": N_LAYERS[INTERNVL_8B]},
}
#: The paper's probe training: 10 epochs on 50k ImageNet images, tested on 10k.
POSITION_PROBES: dict[str, object] = {"epochs": 10, "n_train": 50_000, "n_test": 10_000, "data": "ImageNet"}


#: Causal mediation per head (Section 3, chapter 6): the decoder layers (inclusive, as the paper
#: names them) that hold the heads with the largest mediation fraction.
MEDIATION_LAYERS: dict[str, tuple[int, int]] = {
    LLAVA_7B: (11, 16),
    INTERNVL_8B: (16, 22),
}
#: Heads shared by the top-10 lists of classification and localization (both models): "only 1-2".
MEDIATION_TOP10_OVERLAP: tuple[int, int] = (1, 2)
#: Source/base pairs of the mediation analysis.
MEDIATION_PAIRS = 50

#: Head ablation (Section 3, chapter 7): the paper states the outcome in words only, for both models,
#: and does not say how many heads it ablates (``ks`` is None: chapter 7's k are our choice).
HEAD_ABLATION: dict[str, object] = {
    "claim": "ablating the classification-critical heads significantly cripples localization",
    "models": (LLAVA_7B, INTERNVL_8B),
    "ks": None,
}
