"""What every chapter's report shares: display, rounding and which baselines can show a drop.

The statistics of a difference live in :mod:`vlmloc.stats`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd

__all__ = ["can_drop", "chapter_runs", "number", "rate_cell", "styled"]


def number(x: Any, nd: int = 2) -> float | None:
    """``x`` rounded for a table; None (an em dash on display) for a missing or NaN value."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else round(x, nd)


def styled(table: pd.DataFrame, precision: int = 2):
    """A table for display: fixed decimals and an em dash where a number is not reported."""
    return table.style.format(precision=precision, na_rep="—")


def rate_cell(value: float, se: float | None = None, change: float | None = None, digits: int = 1) -> str:
    """A rate as a table cell: ``"26.0 ± 3.2 ↓7.3"`` (the change from baseline always to 0.1)."""
    text = f"{value:.{digits}f}"
    if se is not None:
        text += f" ± {se:.{digits}f}"
    if change is not None:
        text += f" {'↑' if change > 0 else '↓'}{abs(change):.1f}"
    return text


def can_drop(baseline: Any, key: str) -> bool:
    """Is the baseline rate ``key`` far enough above zero (2 SE, at least 2 points) for a drop to show?"""
    return baseline[key] >= 2 * max(baseline[f"{key}_se"], 1.0)


def chapter_runs(collected: Mapping[str, Mapping[str, dict]], chapter: str) -> Iterator[tuple[str, dict]]:
    """``(model, summary)`` of every model that ran ``chapter``, by model id: what each results-page
    table walks. ``collected`` is :func:`vlmloc.report.summary.collect_summaries`'s output."""
    for model, chapters in sorted(collected.items()):
        summary = chapters.get(chapter)
        if summary:
            yield model, summary
