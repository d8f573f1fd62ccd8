"""The chapters' command line: execute them, stage them for the book, check their mirrors.

The chapters themselves (names, models, parameter schemas) are data in
:mod:`vlmloc.chapter_registry`; this module holds only the steps that act on them.

The book never executes anything itself (``execute_notebooks: off``): it renders copies executed
beforehand. This module is that step::

    python -m vlmloc.chapters run                      # every chapter on every model it applies to
    python -m vlmloc.chapters run --models toy-internvl --chapters 01_data_and_baselines
    python -m vlmloc.chapters run --models llava-hf/llava-1.5-7b-hf -p device cuda -p dtype float16
    python -m vlmloc.chapters stage                    # each chapter's book model -> book/notebooks/
    python -m vlmloc.chapters check                    # _toc.yml and notebooks/ match the registry
    python -m vlmloc.chapters readme-table [--write]   # the README's chapter table

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .chapter_registry import CHAPTERS, PLANNED, TOYS, get, names, plan
from .store import model_dirname

__all__ = [
    "StageError",
    "execute",
    "main",
    "readme_table",
    "repo_root",
    "stage",
    "toc_problems",
]

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
    ``results_dir`` and ``params`` (``progress=False`` unless given: the book shows no progress
    bars). A failing cell raises ``papermill.PapermillExecutionError``;
    the executed copy, with the traceback, is written either way.
    """
    import papermill as pm

    root = repo_root() if root is None else Path(root).resolve()
    source = root / "notebooks" / f"{chapter}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"no chapter notebook {source}; chapters are: {', '.join(names())}")
    out = executed_path(root / out_dir, chapter, model_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    parameters = {"model_id": model_id, "results_dir": str((root / results_dir).resolve()), **params}
    if "progress" in pm.inspect_notebook(str(source)):  # progress bars help a person, not the book
        parameters.setdefault("progress", False)
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


def _stage_problems(runs: Path, todo: Sequence[tuple[str, str]]) -> list[str]:
    """One line per (chapter, model) whose executed copy is missing or failed, and how to run them."""
    lines, redo = [], {}
    for name, model in todo:
        src = executed_path(runs, name, model)
        if not src.is_file():
            lines.append(f"  missing run: {name} on {model} (no {src})")
        elif _failed(src):
            lines.append(f"  failed run: {name} on {model} ({src} holds the traceback)")
        else:
            continue
        redo.setdefault(model, []).append(name)
    for model, chapters in redo.items():
        lines.append(
            f"execute it with: python -m vlmloc.chapters run --chapters {' '.join(chapters)} --models {model}"
        )
    return lines


def stage(
    runs_dir: str | Path = "build/runs",
    book_dir: str | Path = "book/notebooks",
    model_id: str | None = None,
    root: str | Path | None = None,
    chapters: Sequence[str] | None = None,
) -> list[Path]:
    """Copy each chapter's executed copy into ``book_dir``; refuse if any is missing or failed.

    Each chapter's copy comes from its ``book_model``, or from ``model_id`` for all when given.
    Relative paths are taken from the repository root. Nothing is copied unless every chapter
    is present, so the book never mixes a fresh chapter with a stale one.
    """
    base = repo_root() if root is None else Path(root).resolve()
    runs, book = base / runs_dir, base / book_dir
    wanted = list(chapters) if chapters is not None else names()
    todo = [(name, model_id or get(name).book_model) for name in wanted]
    problems = _stage_problems(runs, todo)
    if problems:
        raise StageError("\n".join([f"cannot stage the book from {runs}:", *problems]))
    book.mkdir(parents=True, exist_ok=True)
    out = []
    for name, model in todo:
        dst = book / f"{name}.ipynb"
        shutil.copyfile(executed_path(runs, name, model), dst)
        out.append(dst)
    return out


# --------------------------------------------------------------------------- the registry's mirrors


def toc_chapters(toc_path: str | Path) -> list[str]:
    """The notebooks a jb-book ``_toc.yml`` lists (``notebooks/<name>`` entries), in order."""
    toc = yaml.safe_load(Path(toc_path).read_text(encoding="utf-8"))
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            f = node.get("file")
            if isinstance(f, str) and f.startswith("notebooks/"):
                found.append(f.removeprefix("notebooks/").removesuffix(".ipynb"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return found


def toc_problems(root: str | Path | None = None) -> list[str]:
    """What keeps ``_toc.yml`` and ``notebooks/`` from matching the registry, one line each; [] if none."""
    base = repo_root() if root is None else Path(root).resolve()
    listed, registry = toc_chapters(base / "_toc.yml"), names()
    sources = sorted(p.stem for p in (base / "notebooks").glob("*.ipynb"))
    problems = [
        f"_toc.yml lacks the chapter {n} (add '- file: notebooks/{n}')" for n in registry if n not in listed
    ]
    problems += [
        f"_toc.yml lists {n}, which is not in vlmloc.chapter_registry.CHAPTERS"
        for n in listed
        if n not in registry
    ]
    if not problems and listed != registry:
        problems.append(f"_toc.yml lists the chapters in the order {listed}, the registry in {registry}")
    problems += [f"notebooks/{n}.ipynb is missing" for n in registry if n not in sources]
    problems += [
        f"notebooks/{n}.ipynb is not in vlmloc.chapter_registry.CHAPTERS"
        for n in sources
        if n not in registry
    ]
    return problems


README_BEGIN = "<!-- chapters: generated by python -m vlmloc.chapters readme-table --write -->"
README_END = "<!-- /chapters -->"


def readme_table() -> str:
    """The README's chapter table: each chapter, what it asks, how, where it runs, which copy the book shows."""
    lines = ["| notebook | asks | with | runs on | the book shows |", "|---|---|---|---|---|"]
    for c in CHAPTERS:
        lines.append(f"| `{c.name}` | {c.question} | {c.tools} | {', '.join(c.models)} | {c.book_model} |")
    lines += [f"| {p.number}. {p.title} (planned) | {p.question} | {p.tools} | | |" for p in PLANNED]
    return "\n".join(lines)


def _readme_block(text: str) -> tuple[int, int]:
    """Start and end offsets of the generated table between the README's markers."""
    try:
        start = text.index(README_BEGIN) + len(README_BEGIN)
        return start, text.index(README_END, start)
    except ValueError:
        raise ValueError(f"README.md has no chapter table between {README_BEGIN} and {README_END}") from None


def readme_chapter_table(readme: str | Path) -> str:
    """The chapter table as it stands in ``readme``."""
    text = Path(readme).read_text(encoding="utf-8")
    start, end = _readme_block(text)
    return text[start:end].strip()


def write_readme_table(readme: str | Path) -> bool:
    """Replace the README's chapter table by :func:`readme_table`; whether the file changed."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    start, end = _readme_block(text)
    new = text[:start] + "\n" + readme_table() + "\n" + text[end:]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlmloc.chapters", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute chapters with papermill into build/runs/<model>/")
    r.add_argument("--chapters", nargs="+", help=f"default: all ({', '.join(names())})")
    r.add_argument("--models", nargs="+", help=f"default: each chapter's models ({', '.join(TOYS)})")
    r.add_argument("--out-dir", default="build/runs")
    r.add_argument("--results-dir", default="results")
    r.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    s = sub.add_parser(
        "stage", help="copy each chapter's executed copy (its book model's) into book/notebooks/"
    )
    s.add_argument("--runs-dir", default="build/runs")
    s.add_argument("--book-dir", default="book/notebooks")
    s.add_argument("--model", default=None, help="stage this model's copies of every chapter instead")
    sub.add_parser("check", help="check that _toc.yml and notebooks/ list exactly the registry's chapters")
    t = sub.add_parser("readme-table", help="print the README's chapter table")
    t.add_argument("--write", action="store_true", help="write it into README.md between its markers")
    return p


def _stage_command(a: argparse.Namespace) -> int:
    try:
        paths = stage(a.runs_dir, a.book_dir, a.model)
    except StageError as err:
        print(err, file=sys.stderr)
        return 1
    for path in paths:
        print(f"staged {path}")
    return 0


def _check_command() -> int:
    problems = toc_problems()
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"_toc.yml and notebooks/ match the registry: {', '.join(names())}")
    return 1 if problems else 0


def _readme_command(a: argparse.Namespace) -> int:
    if not a.write:
        print(readme_table())
        return 0
    readme = repo_root() / "README.md"
    print(f"{'updated' if write_readme_table(readme) else 'unchanged'}: {readme}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    if a.command == "stage":
        return _stage_command(a)
    if a.command == "check":
        return _check_command()
    if a.command == "readme-table":
        return _readme_command(a)
    try:
        runs = plan(a.chapters, a.models)
    except ValueError as err:
        p.error(str(err))
    return _run_command(runs, a)


def _run_command(runs: list[tuple[str, str]], a: argparse.Namespace) -> int:
    """Execute ``runs`` one after the other; a failed run is reported and the others go on."""
    import papermill as pm

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
