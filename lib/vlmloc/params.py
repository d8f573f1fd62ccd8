"""Validate notebook parameters before anything expensive runs.

Chapters are run with papermill (``-p name value``). A wrong parameter should stop the first cell
with one sentence saying what to fix, not an obscure traceback after a 15 GB model download.
Only keys that are present are checked; unknown keys are ignored so that chapters can add their own.

A chapter declares its parameters as a schema of :class:`Param` entries (in
:mod:`vlmloc.chapter_registry`): the shared ones are checked here by :func:`validate_params`, a
chapter's own by a :class:`Rule` (or a function of the same signature); :func:`check_schema` runs
both, the shared checks first, then the chapter's in schema order.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEVICES",
    "DTYPES",
    "SHARED",
    "UNCHECKED",
    "Param",
    "ParameterError",
    "Rule",
    "check_schema",
    "flag",
    "int_at_least",
    "number",
    "one_of",
    "positive_int",
    "positive_int_or_none",
    "validate_params",
]

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


# --------------------------------------------------------------------------- chapter schemas

#: A parameter :func:`validate_params` checks under its own name (model_id, n_samples, ...).
SHARED = "shared"
#: A parameter nothing checks (the summary page's model_id: it reads every model).
UNCHECKED = "unchecked"

#: A chapter's own check: ``check(name, value, params)`` raises :class:`ParameterError` or returns.
Check = Callable[[str, Any, Mapping[str, Any]], None]


@dataclass(frozen=True)
class Param:
    """One parameter of a chapter: what its notebook's ``parameters`` cell sets and how it is checked.

    ``type`` is for people (the registry's table); ``default`` is the notebook's value (a test
    compares them); ``check`` is :data:`SHARED`, :data:`UNCHECKED` or a :data:`Check`.
    """

    name: str
    type: str
    default: Any
    check: str | Check = SHARED


@dataclass(frozen=True)
class Rule:
    """A check as data: ``ok(value)`` holds, or '<name> must be <must>, got <value>; <hint>.' is raised.

    ``hint`` may name the parameter as ``{name}``; without a hint the sentence ends after the value.
    """

    ok: Callable[[Any], bool]
    must: str
    hint: str | None = None

    def __call__(self, name: str, value: Any, params: Mapping[str, Any]) -> None:
        if not self.ok(value):
            tail = f"; {self.hint.format(name=name)}" if self.hint else ""
            raise ParameterError(f"{name} must be {self.must}, got {value!r}{tail}.")


def _plain_int(value: Any) -> bool:
    """An ``int`` and not a ``bool``: what the chapters' own checks have always accepted."""
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def positive_int(example: Any) -> Rule:
    """A positive integer; the hint passes ``example``."""
    return Rule(lambda v: _plain_int(v) and v > 0, "a positive integer", f"pass e.g. -p {{name}} {example}")


def positive_int_or_none(example: Any) -> Rule:
    """None (a default chosen later, e.g. by the model's family) or a positive integer."""
    return Rule(
        lambda v: v is None or (_plain_int(v) and v > 0),
        "None or a positive integer",
        f"pass e.g. -p {{name}} {example}",
    )


def int_at_least(low: int, example: Any) -> Rule:
    """An integer >= ``low``."""
    return Rule(
        lambda v: _plain_int(v) and v >= low, f"an integer >= {low}", f"pass e.g. -p {{name}} {example}"
    )


def flag(hint: str = "pass e.g. -p {name} True") -> Rule:
    """True or False."""
    return Rule(lambda v: isinstance(v, bool), "True or False", hint)


def one_of(options: Sequence[str], example: str) -> Rule:
    """One of ``options``, named as 'a' or 'b'."""
    return Rule(lambda v: v in options, " or ".join(map(repr, options)), f"pass e.g. -p {{name}} {example}")


def number(ok: Callable[[float], bool], must: str, hint: str | None = None) -> Rule:
    """A number (int or float, not bool) for which ``ok`` holds."""
    return Rule(lambda v: _plain_number(v) and ok(v), must, hint)


def check_schema(
    schema: Sequence[Param], namespace: Mapping[str, Any], known_model_ids: Iterable[str]
) -> dict[str, Any]:
    """Check the values ``namespace`` holds for ``schema``; return them by name.

    The shared parameters go through :func:`validate_params` first (a bad model id or data path
    stops before anything else), then each chapter check runs in schema order. A parameter the
    namespace lacks is a bug in the notebook, not in the input, so it raises ``KeyError``.
    """
    params = {p.name: namespace[p.name] for p in schema}
    validate_params({p.name: params[p.name] for p in schema if p.check == SHARED}, known_model_ids)
    for p in schema:
        if callable(p.check):
            p.check(p.name, params[p.name], params)
    return params
