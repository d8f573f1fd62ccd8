"""Scores for the two tasks of the study: localization (IoU, Loc) and classification (name mentioned).

The paper scores a predicted box by its IoU with the ground-truth box, counts a success at
IoU >= 0.5, 0.7 and 0.9, and reports Loc, the mean of the three success rates in percent.
Classification is correct when the class name appears in the answer (case-insensitive; we also
accept the plural, see the book's methods page). Everything here is plain Python so that it runs anywhere
and can be checked by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache

__all__ = [
    "THRESHOLDS",
    "Box",
    "box_area",
    "class_mentioned",
    "iou",
    "loc_success",
    "localization_summary",
    "normalize_box",
    "rate_summary",
]

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in original-image pixels."""

THRESHOLDS: tuple[float, ...] = (0.5, 0.7, 0.9)
"""IoU thresholds of the paper; Loc is the mean success rate over them."""


# --------------------------------------------------------------------------- boxes


def normalize_box(box: Sequence[float]) -> Box:
    """Return ``box`` as floats with ordered corners (x0 <= x1, y0 <= y1).

    Models sometimes emit the corners in the other order; the box they mean is the same, so we
    order them rather than score such an answer as a failure.
    """
    if len(box) != 4:
        raise ValueError(
            f"A box needs exactly 4 numbers (x0, y0, x1, y1), got {len(box)}: {box!r}; "
            "parse the model answer with vlmloc.answers first."
        )
    x0, y0, x1, y1 = (float(v) for v in box)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def box_area(box: Sequence[float]) -> float:
    """Area of ``box`` after ordering its corners; zero for a degenerate (line or point) box."""
    x0, y0, x1, y1 = normalize_box(box)
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def _finite(box: Sequence[float]) -> bool:
    return all(math.isfinite(float(v)) for v in box)


def iou(pred: Sequence[float] | None, true: Sequence[float]) -> float:
    """Intersection over union of a predicted and a ground-truth box, in [0, 1].

    Anything that cannot be a meaningful box scores 0.0 instead of raising, because an
    evaluation loop over thousands of answers must not stop at one odd prediction:
    a missing prediction (``None``, an unparsable answer), non-finite coordinates, or a
    zero-area union. Coordinates outside the image are used as given; clipping is the caller's
    choice.
    """
    if pred is None:
        return 0.0
    if not (_finite(pred) and _finite(true)):
        return 0.0
    px0, py0, px1, py1 = normalize_box(pred)
    tx0, ty0, tx1, ty1 = normalize_box(true)
    inter_w = min(px1, tx1) - max(px0, tx0)
    inter_h = min(py1, ty1) - max(py0, ty0)
    inter = max(0.0, inter_w) * max(0.0, inter_h)
    union = box_area((px0, py0, px1, py1)) + box_area((tx0, ty0, tx1, ty1)) - inter
    if not union > 0.0 or not math.isfinite(union):
        return 0.0
    return min(1.0, max(0.0, inter / union))


# --------------------------------------------------------------------------- summaries


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean with the sample standard deviation (ddof=1); 0 for n < 2."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = _mean(values)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def _iou_or_zero(iou: float | None) -> float:
    """An IoU, with no parsable box (``None``) or a non-finite value counted as 0: a failure."""
    return 0.0 if iou is None or not math.isfinite(float(iou)) else float(iou)


def loc_success(iou: float | None) -> float:
    """One sample's Loc as a fraction: the share of :data:`THRESHOLDS` its IoU meets (no box: 0).

    The per-sample score behind ``loc_se`` and behind paired comparisons of two conditions.
    """
    v = _iou_or_zero(iou)
    return _mean([1.0 if v >= t else 0.0 for t in THRESHOLDS])


def localization_summary(ious: Sequence[float | None]) -> dict[str, float]:
    """Success rates at each IoU threshold, the paper's Loc and its standard error, in percent.

    ``None`` (no box could be parsed) counts as IoU 0, i.e. a failure, so that a model is not
    rewarded for answers it could not format. ``loc_se`` is the standard error of the
    per-sample Loc score s_i = mean_t 1[iou_i >= t], which lets a reader judge whether two Loc
    values differ by more than sampling noise.
    """
    if len(ious) == 0:
        raise ValueError(
            "localization_summary got no IoU values; run the localization task on at least one "
            "sample (check n_samples and that the data set is not empty)."
        )
    values = [_iou_or_zero(v) for v in ious]
    summary: dict[str, float] = {}
    for t in THRESHOLDS:
        summary[f"iou@{t}"] = 100.0 * _mean([1.0 if v >= t else 0.0 for v in values])
    per_sample = [loc_success(v) for v in values]
    summary["loc"] = _mean([summary[f"iou@{t}"] for t in THRESHOLDS])
    summary["loc_se"] = 100.0 * _standard_error(per_sample)
    summary["mean_iou"] = _mean(values)
    summary["n"] = len(values)
    return summary


def rate_summary(flags: Sequence[bool]) -> dict[str, float]:
    """Success rate in percent with its binomial standard error, e.g. classification accuracy."""
    n = len(flags)
    if n == 0:
        raise ValueError(
            "rate_summary got no outcomes; run the task on at least one sample "
            "(check n_samples and that the data set is not empty)."
        )
    p = sum(1 for f in flags if f) / n
    return {"rate": 100.0 * p, "se": 100.0 * math.sqrt(p * (1.0 - p) / n), "n": n}


# --------------------------------------------------------------------------- classification

# Plurals that the regular rules (+s, +es, y -> ies) miss, and names that COCO gives in the plural.
_IRREGULAR_FORMS: dict[str, tuple[str, ...]] = {
    "person": ("people", "persons"),
    "mouse": ("mice",),
    "knife": ("knives",),
    "sheep": ("sheep",),
    "skis": ("ski",),
    "scissors": ("scissor",),
    "shelf": ("shelves",),
    "leaf": ("leaves",),
    "child": ("children",),
    "man": ("men",),
    "woman": ("women",),
}

_VOWELS = set("aeiou")


def _word_forms(word: str) -> set[str]:
    """The word, its regular plurals and any irregular forms from the table."""
    forms = {word, word + "s", word + "es"}
    if len(word) > 1 and word.endswith("y") and word[-2] not in _VOWELS:
        forms.add(word[:-1] + "ies")
    forms.update(_IRREGULAR_FORMS.get(word, ()))
    return forms


@lru_cache(maxsize=1024)
def _class_pattern(class_name: str) -> re.Pattern[str]:
    """A whole-word, case-insensitive pattern for a (possibly multi-word) class name.

    Only the last word is inflected ("traffic lights", "wine glasses"); the words may be joined
    by spaces, hyphens or underscores ("hot-dog").
    """
    words = class_name.lower().split()
    head = [re.escape(w) for w in words[:-1]]
    last = "(?:" + "|".join(re.escape(f) for f in sorted(_word_forms(words[-1]), key=len, reverse=True)) + ")"
    body = r"[\s_-]+".join([*head, last])
    return re.compile(rf"(?<![\w]){body}(?![\w])", re.IGNORECASE)


def class_mentioned(answer: str, class_name: str) -> bool:
    """Whether ``answer`` names ``class_name`` as a whole word, singular or plural.

    Whole-word matching keeps "cat" from matching "category" or "scatter", which would inflate
    classification accuracy on long answers.
    """
    if not isinstance(class_name, str) or not class_name.strip():
        raise ValueError(
            f"class_mentioned needs a non-empty class name, got {class_name!r}; "
            "pass the category name from the annotations file."
        )
    if not isinstance(answer, str):
        return False
    return _class_pattern(class_name.strip()).search(answer) is not None
