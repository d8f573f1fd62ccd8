"""The book's chapters as data: their names, titles, models and parameters.

:data:`CHAPTERS` is the one list of the book's chapters: the papermill runs and the staging
(:mod:`vlmloc.chapters`), the notebooks' first cells (:mod:`vlmloc.preamble`), the
table-of-contents check, the tests, the chapter map and the README's chapter table all read it.
Adding a chapter is one :class:`Chapter` entry here (with its parameter schema), one notebook in
``notebooks/``, one experiment module in :mod:`vlmloc.experiments` and one line in ``_toc.yml``.

Each chapter's ``params`` is the schema of its notebook's ``parameters`` cell: every name, its
type, its default (``tests/test_chapter_registry.py`` checks it against the cell) and its check
(:mod:`vlmloc.params`). The messages are the notebooks' own: a bad value stops the validation
cell with one sentence naming what to pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .params import (
    UNCHECKED,
    Param,
    ParameterError,
    Rule,
    flag,
    int_at_least,
    number,
    one_of,
    positive_int,
    positive_int_or_none,
)
from .registry import UnknownModelError, get_spec

__all__ = [
    "CHAPTERS",
    "DEFAULT_MODEL",
    "PLANNED",
    "TOYS",
    "Chapter",
    "Planned",
    "get",
    "names",
    "plan",
]

#: The toys every chapter runs on by default (``make chapters``, CI): one per family. toy-qwen adds
#: about 8 CPU minutes at the chapters' defaults (chapter 3 skips it: one view).
TOYS: tuple[str, ...] = ("toy-llava", "toy-internvl", "toy-qwen")
#: The model whose executed chapters the book shows, unless a chapter says otherwise.
DEFAULT_MODEL = "toy-llava"

# --------------------------------------------------------------------------- parameters

_MODEL_ID = Param("model_id", "str", "toy-llava")
_ANNOTATIONS = Param("annotations", "path | None", None)
_IMAGES = Param("images", "path | None", None)
_N_SAMPLES = Param("n_samples", "int", 200)
_BATCH_SIZE = Param("batch_size", "int", 16)
_DEVICE = Param("device", "str", "auto")
_DTYPE = Param("dtype", "str", "auto")
_SEED = Param("seed", "int", 0)
_RESULTS_DIR = Param("results_dir", "path", "results")
_PROGRESS = Param("progress", "bool", True)


def _data(n_samples: int | None, batch_size: int = 16, model_id: str = "toy-llava") -> tuple[Param, ...]:
    """The parameters every object-level chapter opens with, in its cell's order (``n_samples`` None: none)."""
    head = (replace(_MODEL_ID, default=model_id), _ANNOTATIONS, _IMAGES)
    count = () if n_samples is None else (replace(_N_SAMPLES, default=n_samples),)
    return (*head, *count, replace(_BATCH_SIZE, default=batch_size), _DEVICE, _DTYPE, _SEED, _RESULTS_DIR)


def _verdict_k(name: str, value: Any, params: Mapping[str, Any]) -> None:
    """Chapter 7's verdict is spelled out for one of the ``ks`` it ran."""
    ks = params["ks"]
    if value not in ks:
        raise ParameterError(
            f"{name} must be one of ks {list(ks)}, got {value!r}; pass e.g. -p {name} {ks[-1]}."
        )


_KS = Rule(
    lambda ks: isinstance(ks, list | tuple) and bool(ks) and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks),
    "a list of positive integers",
    "pass e.g. -p ks '[1, 5, 10, 20]'",
)  # fmt: skip
_CACHE_MB = number(lambda v: v >= 0, "0 (stream) or a positive budget in MB")

# --------------------------------------------------------------------------- chapters


@dataclass(frozen=True)
class Chapter:
    """One chapter of the book.

    ``name`` is both the notebook (``notebooks/<name>.ipynb``) and the results file
    (``<results_dir>/<model>/<name>.json``). ``models`` are what ``run`` executes it on by
    default; ``book_model`` is the model whose executed copy the book shows (a chapter that
    applies to one family only, e.g. InternVL's views, runs and is shown on that family's toy).
    ``experiment`` names its module in :mod:`vlmloc.experiments`, if it has one. ``families``
    limits the chapter to models of those families (None: every family), so ``--models`` never
    runs InternVL's views on LLaVA. A chapter that runs ``once`` (the results page, which reads
    every model) ignores ``--models``. ``params`` is its ``parameters`` cell's schema;
    ``quiet`` the loggers its notebook silences (what they would say is counted in the chapter).
    """

    name: str
    title: str
    question: str
    tools: str
    models: tuple[str, ...] = TOYS
    book_model: str = DEFAULT_MODEL
    experiment: str | None = None
    families: tuple[str, ...] | None = None
    once: bool = False
    params: tuple[Param, ...] = ()
    quiet: tuple[str, ...] = ("vlmloc.answers",)

    def applies_to(self, model_id: str) -> bool:
        """Whether the chapter runs on ``model_id``: its family is one of ``families``.

        An unknown id is let through: the notebook's parameter check then says what is wrong.
        """
        if self.families is None:
            return True
        try:
            return get_spec(model_id).family in self.families
        except UnknownModelError:
            return True

    @property
    def number(self) -> int | None:
        """The chapter number of an ``NN_name`` chapter; None for unnumbered pages."""
        head = self.name.split("_", 1)[0]
        return int(head) if head.isdigit() else None

    @property
    def defaults(self) -> dict[str, Any]:
        """Its parameters' defaults by name, as the notebook's ``parameters`` cell sets them."""
        return {p.name: p.default for p in self.params}


@dataclass(frozen=True)
class Planned:
    """A chapter of the study that has no notebook yet: drawn dashed on the chapter map."""

    number: int
    title: str
    question: str
    tools: str


#: The book's chapters in reading order. ``summary`` reads every model's results, so it runs
#: once, after the others.
CHAPTERS: tuple[Chapter, ...] = (
    Chapter(
        "01_data_and_baselines",
        "Data and baselines",
        "Can the model classify and localize at all?",
        "COCO, IoU, LaMa controls",
        experiment="ch01_baselines",
        params=(*_data(200), _PROGRESS),
    ),
    Chapter(
        "02_containerization",
        "Containerization",
        "Which tokens carry the box?",
        "ablation, padding, shuffle",
        experiment="ch02_containerization",
        params=(
            *_data(100),
            Param("ig_steps", "int", 16, positive_int(16)),
            Param("n_reference", "int", 64, positive_int(16)),
            Param("contrast_model_id", "str", "auto", UNCHECKED),  # checked by contrast_model()
            _PROGRESS,
        ),
    ),
    Chapter(
        "03_views",
        "Global vs local views",
        "Which InternVL view carries space?",
        "view-wise ablation",
        models=("toy-internvl",),
        book_model="toy-internvl",
        experiment="ch03_views",
        families=("internvl",),
        params=(*_data(105, model_id="toy-internvl"), Param("n_reference", "int", 64, positive_int(64))),
    ),
    Chapter(
        "04_position_decoding",
        "Position decoding",
        "Where is the 2-D grid rebuilt?",
        "linear probes per layer",
        experiment="ch04_position_decoding",
        params=(
            _MODEL_ID,
            _ANNOTATIONS,
            _IMAGES,
            Param("n_train", "int", 96, positive_int(10)),
            Param("n_test", "int", 64, positive_int(10)),
            Param("epochs", "int", 10, positive_int(10)),
            *_data(None)[3:],
            Param(
                "lr",
                "float",
                0.01,
                number(lambda v: 0 < v < 10, "a positive number below 10", "pass e.g. -p lr 0.01"),
            ),
            Param("token_batch", "int", 1024, positive_int(10)),
            Param("cache_mb", "float", 0, _CACHE_MB),
            Param("control", "bool", True, flag("pass -p {name} True")),
            Param("control_cache_mb", "float", 1024, _CACHE_MB),
            Param("progress", "bool", True, UNCHECKED),
        ),  # fmt: skip
    ),
    Chapter(
        "05_attention_knockout",
        "Attention knockout",
        "Which layers read the object tokens?",
        "attention knockout",
        experiment="ch05_attention_knockout",
        params=(
            *_data(64, batch_size=64),
            Param("window", "int", 4, positive_int(4)),
            Param("stride", "int", 1, positive_int(4)),
            Param("max_new_tokens", "int | None", None, positive_int_or_none(32)),
            Param("reuse_prefix", "bool", True, flag("pass -p {name} True")),
            Param("progress", "bool", True, flag("pass -p {name} True")),
        ),
    ),
    Chapter(
        "06_mediation",
        "Causal mediation",
        "Which heads carry the effect?",
        "activation patching, MF",
        experiment="ch06_mediation",
        params=(
            *_data(200, batch_size=64),
            Param("n_pairs", "int", 50, int_at_least(1, 10)),
            Param("n_control_pairs", "int", 10, int_at_least(0, 10)),
            Param(
                "min_rel_gap",
                "float",
                0.05,
                number(lambda v: 0 <= v < 1, "a number in [0, 1)", "pass e.g. -p min_rel_gap 0.05"),
            ),
            Param("drop_reversed", "bool", True, flag()),
            Param("patch_positions", "str", "after_image", one_of(("after_image", "all"), "after_image")),
            Param("compare_positions", "bool", True, flag()),
            Param("build_control_set", "bool", True, flag()),
            _PROGRESS,
        ),  # fmt: skip
    ),
    Chapter(
        "07_head_ablation",
        "Head ablation",
        "Does localization need recognition first?",
        "ablate top heads",
        experiment="ch07_head_ablation",
        params=(
            *_data(120),
            Param("ks", "list[int]", [5, 10, 20], _KS),
            Param("n_draws", "int", 3, positive_int(3)),
            Param("ablation", "str", "zero", one_of(("zero", "mean"), "zero")),
            Param("verdict_k", "int", 10, _verdict_k),
            Param(
                "min_effect",
                "float",
                5.0,
                number(lambda v: v > 0, "a positive number of points", "pass e.g. -p min_effect 5"),
            ),
            _PROGRESS,
        ),  # fmt: skip
        quiet=("vlmloc.answers", "vlmloc.evaluate"),
    ),
    Chapter(
        "summary",
        "Results across models",
        "Toy vs LLaVA vs InternVL, beside the paper",
        "summary tables",
        models=(DEFAULT_MODEL,),
        once=True,
        params=(Param("model_id", "str", DEFAULT_MODEL, UNCHECKED), _RESULTS_DIR),
        quiet=(),
    ),
)

#: The study's chapters still to write; an entry moves to :data:`CHAPTERS` with its notebook.
PLANNED: tuple[Planned, ...] = ()


def names() -> list[str]:
    """The registry's chapter names, in reading order."""
    return [c.name for c in CHAPTERS]


def get(name: str) -> Chapter:
    """The registry entry of chapter ``name``."""
    for c in CHAPTERS:
        if c.name == name:
            return c
    raise ValueError(f"unknown chapter {name!r}; chapters are: {', '.join(names())}")


def plan(chapters: Iterable[str] | None = None, models: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """The (chapter, model) runs in execution order.

    ``models`` replaces each chapter's default models (chapters that run ``once`` keep theirs;
    a chapter limited to some families skips the others); ``chapters`` selects chapters by name.
    Unknown chapter names are an error.
    """
    wanted = list(chapters) if chapters else names()
    unknown = [c for c in wanted if c not in names()]
    if unknown:
        raise ValueError(f"unknown chapter(s) {', '.join(unknown)}; chapters are: {', '.join(names())}")
    models = list(models) if models else None
    return [
        (c.name, model)
        for c in CHAPTERS
        if c.name in wanted
        for model in (c.models if (models is None or c.once) else models)
        if c.once or c.applies_to(model)
    ]
