"""The chapter registry and what mirrors it: the run plan, staging, _toc.yml, the README table, the map.

All fast: nothing here executes a notebook (tests/test_notebooks.py does).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from vlmloc import chapter_registry, chapters

ROOT = Path(__file__).resolve().parents[1]


def _source(name: str) -> str:
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8"))
    return "\n".join("".join(c["source"]) for c in nb["cells"])


# --------------------------------------------------------------------------- the registry itself


def test_registry_names_are_unique_and_each_book_model_is_run():
    assert len(set(chapter_registry.names())) == len(chapter_registry.CHAPTERS)
    for c in chapter_registry.CHAPTERS:
        assert c.book_model in c.models, f"{c.name}: the book shows {c.book_model}, which run never executes"
    numbers = [c.number for c in chapter_registry.CHAPTERS if c.number is not None] + [
        p.number for p in chapter_registry.PLANNED
    ]
    assert len(numbers) == len(set(numbers)), "a planned chapter shares its number with a registered one"


def test_each_experiment_module_exists_and_its_notebook_uses_it():
    for c in chapter_registry.CHAPTERS:
        if c.experiment is None:
            continue
        module = importlib.import_module(f"vlmloc.experiments.{c.experiment}")
        assert module.__doc__, f"{c.experiment} needs a docstring saying what the chapter runs"
        assert f"vlmloc.experiments.{c.experiment}" in _source(c.name), (
            f"{c.name} does not import its experiment"
        )


def test_get_finds_a_chapter_and_names_the_others_when_unknown():
    assert chapter_registry.get(chapter_registry.names()[0]) is chapter_registry.CHAPTERS[0]
    with pytest.raises(ValueError, match=chapter_registry.names()[0]):
        chapter_registry.get("03_nope")


# --------------------------------------------------------------------------- the run plan


def test_plan_runs_every_chapter_on_its_models_in_registry_order():
    expected = [(c.name, m) for c in chapter_registry.CHAPTERS for m in c.models]
    assert chapter_registry.plan() == expected
    once = [c for c in chapter_registry.CHAPTERS if c.once]
    assert once and chapter_registry.plan()[-1][0] == once[-1].name, (
        "the results page runs after the chapters"
    )
    per_model = chapter_registry.plan(models=["x"])
    assert per_model == [
        (c.name, m) for c in chapter_registry.CHAPTERS for m in (c.models if c.once else ("x",))
    ]
    assert chapter_registry.plan(chapters=[once[0].name]) == [(once[0].name, m) for m in once[0].models]
    with pytest.raises(ValueError, match="unknown chapter"):
        chapter_registry.plan(chapters=["03_nope"])


def test_a_chapter_limited_to_a_family_skips_the_other_models():
    views = chapter_registry.get("03_views")
    assert views.families == ("internvl",)
    runs = chapter_registry.plan(
        chapters=["03_views"], models=["toy-llava", "toy-internvl", "not-registered"]
    )
    assert runs == [("03_views", "toy-internvl"), ("03_views", "not-registered")]
    assert views.applies_to("toy-internvl") and not views.applies_to("toy-llava")


def test_repo_root_is_found_from_the_package_and_from_a_subfolder():
    assert chapters.repo_root() == ROOT
    assert chapters.repo_root(ROOT / "lib" / "vlmloc") == ROOT
    with pytest.raises(FileNotFoundError, match="_toc.yml"):
        chapters.repo_root("/")


# --------------------------------------------------------------------------- staging


def _fake_run(runs: Path, chapter: str, model: str = "toy-llava", failed: bool = False) -> Path:
    path = chapters.executed_path(runs, chapter, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"papermill": {"exception": failed, "parameters": {"model_id": model}}}
    path.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_stage_fails_naming_the_missing_run_and_copies_nothing(tmp_path):
    runs, book = tmp_path / "runs", tmp_path / "book" / "notebooks"
    last = chapter_registry.CHAPTERS[-1]
    _fake_run(runs, last.name, last.book_model)
    with pytest.raises(chapters.StageError) as info:
        chapters.stage(runs, book, root=tmp_path)
    msg = str(info.value)
    first = chapter_registry.CHAPTERS[0]
    assert f"missing run: {first.name} on {first.book_model}" in msg
    assert f"missing run: {last.name}" not in msg
    by_model: dict[str, list[str]] = {}
    for c in chapter_registry.CHAPTERS[:-1]:
        by_model.setdefault(c.book_model, []).append(c.name)
    for model, names in by_model.items():
        assert f"python -m vlmloc.chapters run --chapters {' '.join(names)} --models {model}" in msg
    assert not book.exists() or not any(book.iterdir()), "a partial book must not be staged"


def test_stage_refuses_a_failed_run(tmp_path):
    runs, book = tmp_path / "runs", tmp_path / "book"
    last = chapter_registry.CHAPTERS[-1]
    for c in chapter_registry.CHAPTERS:
        _fake_run(runs, c.name, c.book_model, failed=c is last)
    with pytest.raises(chapters.StageError, match=f"failed run: {last.name} on {last.book_model}"):
        chapters.stage(runs, book, root=tmp_path)


def test_stage_copies_each_chapters_book_model(tmp_path, monkeypatch):
    """A chapter shown on another model (e.g. InternVL's views) is staged from that model's runs."""
    internvl_only = chapter_registry.Chapter(
        "03_views", "Views", "q", "t", models=("toy-internvl",), book_model="toy-internvl"
    )
    registry = (*chapter_registry.CHAPTERS[:-1], internvl_only, chapter_registry.CHAPTERS[-1])
    monkeypatch.setattr(chapter_registry, "CHAPTERS", registry)  # what chapters.stage reads
    runs, book = tmp_path / "runs", tmp_path / "book"
    for c in registry:
        _fake_run(runs, c.name, c.book_model)
        other = "toy-llava" if c.book_model != "toy-llava" else "toy-internvl"
        _fake_run(runs, c.name, other, failed=True)  # the copies of the other model are never staged
    staged = chapters.stage(runs, book, root=tmp_path)
    assert [p.name for p in staged] == [f"{c.name}.ipynb" for c in registry]
    meta = json.loads((book / "03_views.ipynb").read_text())["metadata"]["papermill"]
    assert meta["parameters"]["model_id"] == "toy-internvl" and not meta["exception"]


def test_stage_cli_exits_1_with_the_message(tmp_path, capsys):
    rc = chapters.main(["stage", "--runs-dir", str(tmp_path / "runs"), "--book-dir", str(tmp_path / "book")])
    assert rc == 1
    first = chapter_registry.CHAPTERS[0]
    assert f"missing run: {first.name} on {first.book_model}" in capsys.readouterr().err


# --------------------------------------------------------------------------- what mirrors the registry


def test_toc_and_notebooks_list_exactly_the_registry():
    assert chapters.toc_problems() == []
    assert chapters.toc_chapters(ROOT / "_toc.yml") == chapter_registry.names()
    assert chapters.main(["check"]) == 0


def _copy_book_skeleton(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "_toc.yml", tmp_path / "_toc.yml")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    return tmp_path


def test_toc_problems_name_what_is_missing_or_extra(tmp_path):
    root = _copy_book_skeleton(tmp_path)
    first, second = chapter_registry.names()[:2]
    toc = (root / "_toc.yml").read_text()
    (root / "_toc.yml").write_text(toc.replace(f"notebooks/{first}\n", "notebooks/99_extra\n"))
    (root / "notebooks" / f"{second}.ipynb").unlink()
    problems = "\n".join(chapters.toc_problems(root))
    assert f"_toc.yml lacks the chapter {first}" in problems
    assert "_toc.yml lists 99_extra, which is not in vlmloc.chapter_registry.CHAPTERS" in problems
    assert f"notebooks/{second}.ipynb is missing" in problems


def test_toc_problems_catch_the_wrong_order(tmp_path):
    root = _copy_book_skeleton(tmp_path)
    first, second = chapter_registry.names()[:2]
    toc = (root / "_toc.yml").read_text()
    swapped = toc.replace(f"notebooks/{first}\n", "@@\n").replace(
        f"notebooks/{second}\n", f"notebooks/{first}\n"
    )
    (root / "_toc.yml").write_text(swapped.replace("@@\n", f"notebooks/{second}\n"))
    assert any("order" in p for p in chapters.toc_problems(root))


def test_readme_chapter_table_is_the_generated_one():
    assert chapters.readme_chapter_table(ROOT / "README.md") == chapters.readme_table(), (
        "README.md's chapter table is stale; run: python -m vlmloc.chapters readme-table --write"
    )
    table = chapters.readme_table()
    assert all(f"`{c.name}`" in table for c in chapter_registry.CHAPTERS)
    assert all(f"{p.title} (planned)" in table for p in chapter_registry.PLANNED)


def test_write_readme_table_replaces_only_the_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{chapters.README_BEGIN}\nold table\n{chapters.README_END}\nrest\n")
    assert chapters.write_readme_table(readme) is True
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{chapters.README_END}\nrest\n")
    assert chapters.readme_chapter_table(readme) == chapters.readme_table()
    assert chapters.write_readme_table(readme) is False  # already up to date


def test_chapter_map_draws_the_registry_and_the_plan():
    spec = importlib.util.spec_from_file_location(
        "make_chapter_map", ROOT / "scripts" / "make_chapter_map.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    boxes = script.chapter_boxes()
    available = [title for _, title, _, _, ok in boxes if ok]
    planned = [title for _, title, _, _, ok in boxes if not ok]
    assert sorted(available) == sorted(c.title for c in chapter_registry.CHAPTERS)
    assert planned == [p.title for p in chapter_registry.PLANNED]
    assert [n for n, *_ in boxes] == list(range(1, len(boxes) + 1)), "boxes are numbered in reading order"
