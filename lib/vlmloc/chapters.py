"""Execute the chapter notebooks with papermill and stage the executed copies for the book.

The book never executes anything itself (``execute_notebooks: off``): it renders copies executed
beforehand. This module is that step::

    python -m vlmloc.chapters run                      # every chapter on every model it applies to
    python -m vlmloc.chapters run --models toy-internvl --chapters 01_data_and_baselines
    python -m vlmloc.chapters run --models llava-hf/llava-1.5-7b-hf -p device cuda -p dtype float16
    python -m vlmloc.chapters stage                    # each chapter's book model -> book/notebooks/

Executed copies go to ``build/runs/<model>/<chapter>.ipynb``; results to ``results/<model>/``.
The kernel runs in the repository root, so relative paths in parameters mean the same thing in
the notebook as on the command line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .store import model_dirname

__all__ = [
    "BOOK_MODELS",
    "CHAPTERS",
    "DEFAULT_MODEL",
    "book_model",
    "TOYS",
    "StageError",
    "execute",
    "main",
    "plan",
    "repo_root",
    "stage",
]

TOYS: tuple[str, ...] = ("toy-llava", "toy-internvl")
#: The model whose executed chapters the book shows.
DEFAULT_MODEL = "toy-llava"
#: Chapters in reading order, each with the models ``run`` executes it on by default. ``summary``
#: reads every model's results, so it runs once (with the default model) after the others.
CHAPTERS: list[tuple[str, tuple[str, ...]]] = [
    ("01_data_and_baselines", TOYS),
    ("02_containerization", TOYS),
    ("03_views", ("toy-internvl",)),  # needs several views: InternVL only
    ("summary", (DEFAULT_MODEL,)),
]
#: The book shows ``DEFAULT_MODEL``'s copy of every chapter except these, which it cannot run.
BOOK_MODELS: dict[str, str] = {"03_views": "toy-internvl"}
#: Chapters that run once whatever ``--models`` says.
ONCE = frozenset({"summary"})
EXECUTION_TIMEOUT = 1200


class StageError(RuntimeError):
    """An executed chapter needed by the book is missing or failed; the message says which and how to run it."""


def repo_root(start: str | Path | None = None) -> Path:
    """The folder holding ``_toc.yml``: searched upwards from ``start``, the package, then the cwd."""
    starts = [Path(start)] if start is not None else [Path(__file__).resolve().parent, Path.cwd()]
    for s in starts:
        for d in (s.resolve(), *s.resolve().parents):
            if (d / "_toc.yml").is_file() and (d / "notebooks").is_dir():
                return d
    raise FileNotFoundError(
        f"no repository root (a folder with _toc.yml and notebooks/) above {', '.join(map(str, starts))}; "
        "run this from a clone of the vlmloc repository"
    )


def _chapter_names() -> list[str]:
    return [name for name, _ in CHAPTERS]


def plan(chapters: Iterable[str] | None = None, models: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """The (chapter, model) runs in execution order.

    ``models`` replaces each chapter's default models (chapters in ``ONCE`` keep theirs);
    ``chapters`` selects chapters by name. Unknown chapter names are an error.
    """
    names = _chapter_names()
    wanted = list(chapters) if chapters else names
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ValueError(f"unknown chapter(s) {', '.join(unknown)}; chapters are: {', '.join(names)}")
    models = list(models) if models else None
    runs = []
    for name, defaults in CHAPTERS:
        if name not in wanted:
            continue
        for model in defaults if (models is None or name in ONCE) else models:
            runs.append((name, model))
    return runs


def book_model(chapter: str, model_id: str = DEFAULT_MODEL) -> str:
    """The model whose executed copy of ``chapter`` the book shows when staging ``model_id``'s book.

    The default book takes each chapter from :data:`DEFAULT_MODEL` except those in
    :data:`BOOK_MODELS`; a book staged for another model takes every chapter from it.
    """
    return BOOK_MODELS.get(chapter, model_id) if model_id == DEFAULT_MODEL else model_id


def executed_path(out_dir: str | Path, chapter: str, model_id: str) -> Path:
    """``<out_dir>/<model>/<chapter>.ipynb``."""
    return Path(out_dir) / model_dirname(model_id) / f"{chapter}.ipynb"


def execute(
    chapter: str,
    model_id: str,
    out_dir: str | Path = "build/runs",
    results_dir: str | Path = "results",
    root: str | Path | None = None,
    **params: Any,
) -> Path:
    """Run ``notebooks/<chapter>.ipynb`` with papermill for ``model_id``; returns the executed copy.

    Relative ``out_dir`` and ``results_dir`` are taken from the repository root (``root``, found
    with :func:`repo_root` when None). The notebook gets ``model_id``, the absolute
    ``results_dir`` and ``params``. A failing cell raises ``papermill.PapermillExecutionError``;
    the executed copy, with the traceback, is written either way.
    """
    import papermill as pm

    root = repo_root() if root is None else Path(root).resolve()
    source = root / "notebooks" / f"{chapter}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"no chapter notebook {source}; chapters are: {', '.join(_chapter_names())}")
    out = executed_path(root / out_dir, chapter, model_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    parameters = {"model_id": model_id, "results_dir": str((root / results_dir).resolve()), **params}
    pm.execute_notebook(
        str(source),
        str(out),
        parameters=parameters,
        kernel_name="python3",
        cwd=str(root),
        progress_bar=False,
        log_output=False,
        execution_timeout=EXECUTION_TIMEOUT,
    )
    return out


def _failed(nb_path: Path) -> bool:
    """Whether papermill recorded an exception in an executed notebook."""
    meta = json.loads(nb_path.read_text(encoding="utf-8")).get("metadata", {})
    return bool(meta.get("papermill", {}).get("exception"))


def stage(
    runs_dir: str | Path = "build/runs",
    book_dir: str | Path = "book/notebooks",
    model_id: str = DEFAULT_MODEL,
    root: str | Path | None = None,
    chapters: Sequence[str] | None = None,
) -> list[Path]:
    """Copy the executed chapters into ``book_dir``; refuse if any is missing or failed.

    Each chapter comes from :func:`book_model` (``model_id``'s copy, or for the default book the
    chapter's own book model). Relative paths are taken from the repository root. Nothing is
    copied unless every chapter is present, so the book never mixes a fresh chapter with a stale one.
    """
    base = repo_root() if root is None else Path(root).resolve()
    runs, book = base / runs_dir, base / book_dir
    names = list(chapters) if chapters is not None else _chapter_names()
    models = {name: book_model(name, model_id) for name in names}
    missing, failed = [], []
    for name in names:
        src = executed_path(runs, name, models[name])
        if not src.is_file():
            missing.append((name, src))
        elif _failed(src):
            failed.append((name, src))
    if missing or failed:
        lines = [f"cannot stage the book from {runs}:"]
        lines += [f"  missing run: {n} on {models[n]} (no {p})" for n, p in missing]
        lines += [f"  failed run: {n} on {models[n]} ({p} holds the traceback)" for n, p in failed]
        for model in dict.fromkeys(models[n] for n, _ in missing + failed):
            todo = " ".join(n for n, _ in missing + failed if models[n] == model)
            lines.append(f"execute it with: python -m vlmloc.chapters run --chapters {todo} --models {model}")
        raise StageError("\n".join(lines))
    book.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        dst = book / f"{name}.ipynb"
        shutil.copyfile(executed_path(runs, name, models[name]), dst)
        out.append(dst)
    return out


def _parse_value(text: str) -> Any:
    """papermill's ``-p`` typing: True/False/None, int, float, else the string."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmloc.chapters", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute chapters with papermill into build/runs/<model>/")
    r.add_argument("--chapters", nargs="+", help=f"default: all ({', '.join(_chapter_names())})")
    r.add_argument("--models", nargs="+", help=f"default: each chapter's models ({', '.join(TOYS)})")
    r.add_argument("--out-dir", default="build/runs")
    r.add_argument("--results-dir", default="results")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    s = sub.add_parser("stage", help="copy each chapter's executed book copy into book/notebooks/")
    s.add_argument("--runs-dir", default="build/runs")
    s.add_argument("--book-dir", default="book/notebooks")
    s.add_argument("--model", default=DEFAULT_MODEL)
    a = p.parse_args(argv)

    if a.command == "stage":
        try:
            paths = stage(a.runs_dir, a.book_dir, a.model)
        except StageError as err:
            print(err, file=sys.stderr)
            return 1
        for path in paths:
            print(f"staged {path}")
        return 0

    import papermill as pm

    try:
        runs = plan(a.chapters, a.models)
    except ValueError as err:
        p.error(str(err))
    params = {k: _parse_value(v) for k, v in a.param}
    failures, total = [], time.perf_counter()
    for chapter, model in runs:
        t0 = time.perf_counter()
        print(f"run {chapter} on {model} ...", flush=True)
        try:
            out = execute(chapter, model, a.out_dir, a.results_dir, **params)
            print(f"  ok in {time.perf_counter() - t0:.0f} s -> {out}", flush=True)
        except Exception as err:  # a failed or timed-out run must not stop the others
            failures.append((chapter, model))
            if isinstance(err, pm.PapermillExecutionError):
                what = f"{err.ename}: {err.evalue}"
            else:
                what = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            print(f"  FAILED in {time.perf_counter() - t0:.0f} s: {what}", flush=True)
    print(f"{len(runs) - len(failures)}/{len(runs)} runs passed in {time.perf_counter() - total:.0f} s")
    for chapter, model in failures:
        print(f"  failed: {chapter} on {model} (see {executed_path(a.out_dir, chapter, model)})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
