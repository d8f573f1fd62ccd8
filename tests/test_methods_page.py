"""The book explains its own decisions: a methods page its readers have, linked from every chapter.

The project's internal notes are not in the repository, so no file may send a reader to them; every
chapter links its section of ``book/methods.md``, and every such link resolves.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from vlmloc.chapter_registry import CHAPTERS

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "book" / "methods.md"
#: The internal notes' file name, built from parts so that this file does not name it.
INTERNAL = "METHODS" + ".md"


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    keep = ("lib/", "notebooks/", "book/", "tests/", "scripts/", ".github/")
    tops = {"README.md", "_toc.yml", "_config.yml", "Makefile", "pyproject.toml"}
    return [ROOT / f for f in out.splitlines() if f.startswith(keep) or f in tops]


def _labels() -> set[str]:
    return set(re.findall(r"^\(([\w-]+)\)=\s*$", METHODS.read_text(encoding="utf-8"), flags=re.M))


def _methods_refs(text: str) -> set[str]:
    return set(re.findall(r"\{ref\}`(methods-[\w-]+)`", text))


def _names_internal(paths: list[Path], root: Path = ROOT) -> list[str]:
    hits = []
    for p in paths:
        if p.suffix in {".png", ".safetensors", ".jpg", ".bin"} or not p.is_file():
            continue
        if INTERNAL in p.read_text(encoding="utf-8", errors="ignore"):
            hits.append(str(p.relative_to(root)))
    return hits


def test_no_file_sends_readers_to_the_internal_notes():
    hits = _names_internal(_tracked())
    assert not hits, f"these name {INTERNAL}: {hits}"


def test_the_check_catches_a_file_that_names_them(tmp_path):
    leak, clean = tmp_path / "leak.md", tmp_path / "clean.md"
    leak.write_text(f"the decisions are in {INTERNAL}")
    clean.write_text("the decisions are on the methods page")
    assert _names_internal([leak, clean], tmp_path) == ["leak.md"]


def test_the_methods_page_has_a_section_per_chapter_and_is_in_the_toc():
    labels = _labels()
    want = {"methods-data", "methods-checks"} | {f"methods-ch{c.number:02d}" for c in CHAPTERS if c.number}
    assert want <= labels, f"missing sections: {sorted(want - labels)}"
    assert "file: methods" in (ROOT / "_toc.yml").read_text(encoding="utf-8")


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if c.number], ids=lambda c: c.name)
def test_every_chapter_links_its_section_and_every_link_resolves(chapter):
    text = (ROOT / "notebooks" / f"{chapter.name}.ipynb").read_text(encoding="utf-8")
    used = _methods_refs(text)
    assert f"methods-ch{chapter.number:02d}" in used, f"{chapter.name} does not link its methods section"
    assert used <= _labels(), f"{chapter.name} links missing sections: {sorted(used - _labels())}"


def test_every_methods_link_in_any_notebook_or_page_resolves():
    pages = [*sorted((ROOT / "notebooks").glob("*.ipynb")), *sorted((ROOT / "book").glob("*.md"))]
    missing = {
        str(p.relative_to(ROOT)): sorted(bad)
        for p in pages
        if (bad := _methods_refs(p.read_text(encoding="utf-8")) - _labels())
    }
    assert not missing, f"links to sections book/methods.md does not have: {missing}"
