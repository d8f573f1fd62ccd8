"""Validate notebook parameters before anything expensive runs.

Chapters are run with papermill (``-p name value``). A wrong parameter should stop the first cell
with one sentence saying what to fix, not an obscure traceback after a 15 GB model download.
Only keys that are present are checked; unknown keys are ignored so that chapters can add their own.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["DEVICES", "DTYPES", "ParameterError", "validate_params"]

DEVICES = frozenset({"cpu", "cuda", "mps", "auto"})
#: "auto": bfloat16 where the GPU has it, float16 on an older GPU (a T4), float32 on the CPU.
DTYPES = frozenset({"auto", "float32", "float16", "bfloat16"})

_EXAMPLES = {"n_samples": 200, "batch_size": 8, "seed": 0}
_DATA_HINT = (
    "pass -p annotations /path/to/instances_val2017.json -p images /path/to/val2017, "
    "or leave both as None for the embedded synthetic set"
)


class ParameterError(ValueError):
    """A notebook parameter has a value the chapter cannot use; the message says what to pass."""


def _is_int(value: Any) -> bool:
    """True for integers but not for booleans (``True`` is an ``int`` in Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_model_id(value: Any, known: list[str]) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(
            f"model_id must be a non-empty string, got {value!r}; pass e.g. -p model_id toy-llava."
        )
    if value not in known:
        raise ParameterError(
            f"model_id {value!r} is not supported; pass -p model_id with one of: {', '.join(known)}."
        )


def _check_positive_int(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not _is_int(value) or value <= 0:
            raise ParameterError(
                f"{name} must be a positive integer, got {value!r}; pass e.g. -p {name} {_EXAMPLES[name]}."
            )

    return check


def _check_seed(value: Any) -> None:
    if not _is_int(value) or value < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {value!r}; pass e.g. -p seed 0.")


def _check_device(value: Any) -> None:
    ok = isinstance(value, str) and (value in DEVICES or re.fullmatch(r"cuda:\d+", value) is not None)
    if not ok:
        raise ParameterError(
            f"device must be one of {', '.join(sorted(DEVICES))} or cuda:N, got {value!r}; "
            "pass e.g. -p device auto."
        )


def _check_dtype(value: Any) -> None:
    if value not in DTYPES:
        raise ParameterError(
            f"dtype must be one of {', '.join(sorted(DTYPES))}, got {value!r}; pass e.g. -p dtype auto."
        )


def _check_max_tiles(value: Any) -> None:
    if value is not None and (not _is_int(value) or value < 1):
        raise ParameterError(
            f"max_tiles must be None (the model's own, 12 for InternVL) or a positive integer, got {value!r}; "
            "pass e.g. -p max_tiles 6."
        )


def _check_results_dir(value: Any) -> None:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise ParameterError(
            f"results_dir must be a directory path string, got {value!r}; pass e.g. -p results_dir results."
        )


def _check_progress(value: Any) -> None:
    if not isinstance(value, bool):
        raise ParameterError(f"progress must be True or False, got {value!r}; pass e.g. -p progress False.")


def _check_data(params: Mapping[str, Any]) -> None:
    """COCO needs both files; the synthetic default needs neither."""
    if "annotations" not in params and "images" not in params:
        return
    annotations, images = params.get("annotations"), params.get("images")
    if annotations is None and images is None:
        return
    if annotations is None or images is None:
        missing = "annotations" if annotations is None else "images"
        raise ParameterError(f"{missing} is None but the other data parameter is set; {_DATA_HINT}.")
    for name, value in (("annotations", annotations), ("images", images)):
        if not isinstance(value, str | os.PathLike):
            raise ParameterError(f"{name} must be a path string or None, got {value!r}; {_DATA_HINT}.")
    if not Path(annotations).is_file():
        raise ParameterError(
            f"annotations file {os.fspath(annotations)!r} does not exist or is not a file; "
            "pass -p annotations /path/to/instances_val2017.json."
        )
    if not Path(images).is_dir():
        raise ParameterError(
            f"images directory {os.fspath(images)!r} does not exist or is not a directory; "
            "pass -p images /path/to/val2017."
        )


def validate_params(params: Mapping[str, Any], known_model_ids: Iterable[str]) -> None:
    """Raise ``ParameterError`` with one sentence naming the first bad parameter; return None if all are fine.

    Checked when present: model_id, n_samples, batch_size, seed, device, dtype, max_tiles, annotations and
    images (both None, or an existing file and directory), results_dir, progress.
    """
    known = sorted(known_model_ids)
    checks: dict[str, Callable[[Any], None]] = {
        "model_id": lambda v: _check_model_id(v, known),
        "n_samples": _check_positive_int("n_samples"),
        "batch_size": _check_positive_int("batch_size"),
        "seed": _check_seed,
        "device": _check_device,
        "dtype": _check_dtype,
        "max_tiles": _check_max_tiles,
        "results_dir": _check_results_dir,
        "progress": _check_progress,
    }
    for name, check in checks.items():
        if name in params:
            check(params[name])
    _check_data(params)
