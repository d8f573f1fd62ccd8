"""Parse raw model answers into boxes.

LLaVA-1.5 answers a grounding prompt with ``[x0, y0, x1, y1]`` on a 0-1 scale of its (padded)
input square; InternVL answers with ``<box>[[x1, y1, x2, y2]]</box>`` on a 0-1000 scale of the
original image. These functions only find the four numbers and return them as given: turning
them into pixels depends on the preprocessing and belongs to the model adapter.

An answer without a box is a failed localization, not an error: the parsers return ``None`` and
log the text (logger ``vlmloc.answers``) so that a reader can see what the model said instead.
"""

from __future__ import annotations

import logging
import re

__all__ = ["first_box_span", "parse_bracket_box", "parse_internvl_box", "parse_qwen_box"]

logger = logging.getLogger("vlmloc.answers")

# A number, tolerating the spaces a token-by-token decode may put inside it ("0 . 12", "- 3").
_NUMBER = r"[-+]?\s*(?:\d+(?:\s*\.\s*\d*)?|\.\s*\d+)(?:[eE][-+]?\d+)?"
_SEP = r"\s*,\s*"
_QUAD = rf"\[\s*({_NUMBER}){_SEP}({_NUMBER}){_SEP}({_NUMBER}){_SEP}({_NUMBER})\s*\]"
_QUAD_RE = re.compile(_QUAD)
# Everything between <box> and </box> (or the end of the answer, if generation stopped early).
_INTERNVL_BOX_RE = re.compile(r"<\s*box\s*>(.*?)(?:<\s*/\s*box\s*>|$)", re.IGNORECASE | re.DOTALL)
# Qwen2.5-VL's JSON key, then its list: '"bbox_2d": [x1, y1, x2, y2]' (spaces allowed anywhere).
_QWEN_BOX_RE = re.compile(r'"\s*bbox_2d\s*"\s*:\s*(\[[^\]]*\])')

Quad = tuple[float, float, float, float]


def _to_float(token: str) -> float:
    return float(re.sub(r"\s+", "", token))


def _first_quad(text: str) -> Quad | None:
    match = _QUAD_RE.search(text)
    if match is None:
        return None
    try:
        x0, y0, x1, y1 = (_to_float(g) for g in match.groups())
    except ValueError:  # defensive: the pattern should only admit valid numbers
        return None
    return (x0, y0, x1, y1)


def _log_unparsable(kind: str, text: object) -> None:
    logger.warning("No %s box found in answer %r; counting it as a failed localization.", kind, text)


def parse_bracket_box(text: str) -> Quad | None:
    """The first ``[a, b, c, d]`` of four numbers in ``text`` (LLaVA's format), or ``None``.

    Spaces are allowed anywhere between tokens, e.g. ``[ 0.12 , 0.3 , 0.5 , 0.9 ]``.
    """
    if not isinstance(text, str):
        _log_unparsable("bracket", text)
        return None
    quad = _first_quad(text)
    if quad is None:
        _log_unparsable("bracket", text)
    return quad


def parse_internvl_box(text: str) -> Quad | None:
    """The first box inside ``<box>...</box>`` (InternVL's format, 0-1000 scale), or ``None``.

    Accepts ``<box>[[x1, y1, x2, y2]]</box>`` and the single-bracket ``<box>[x1, y1, x2, y2]</box>``,
    with spaces anywhere inside; when the tag holds several boxes, the first one is returned.
    """
    if not isinstance(text, str):
        _log_unparsable("InternVL <box>", text)
        return None
    for match in _INTERNVL_BOX_RE.finditer(text):
        quad = _first_quad(match.group(1))
        if quad is not None:
            return quad
    _log_unparsable("InternVL <box>", text)
    return None


def parse_qwen_box(text: str) -> Quad | None:
    """The first ``"bbox_2d": [x1, y1, x2, y2]`` in ``text`` (Qwen2.5-VL's JSON, pixels of its resized
    image), or ``None``. The JSON may sit in a fenced block, hold several objects, or be cut off
    after the box; only the key and its four numbers are needed.
    """
    if not isinstance(text, str):
        _log_unparsable("Qwen bbox_2d", text)
        return None
    for match in _QWEN_BOX_RE.finditer(text):
        quad = _first_quad(match.group(1))
        if quad is not None:
            return quad
    _log_unparsable("Qwen bbox_2d", text)
    return None


def first_box_span(text: str) -> tuple[int, int] | None:
    """Character span ``(start, end)`` of the first ``[a, b, c, d]`` in ``text``, or ``None``: where
    an answer's coordinates are, whatever else holds digits (Qwen2.5-VL's ``"bbox_2d"`` key)."""
    match = _QUAD_RE.search(text)
    return None if match is None else match.span()
