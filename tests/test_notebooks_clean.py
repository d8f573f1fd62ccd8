"""Source notebooks are kept in git clean: no outputs, one parameters cell, a Colab badge.

Executed copies are build products (build/runs/, book/notebooks/); only the clean sources live
in notebooks/. papermill needs exactly one cell tagged ``parameters`` to inject its values, and
the first markdown cell must carry a Colab badge that opens this very file from GitHub.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vlmloc import chapter_registry

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/vlmloc/vlmloc/blob/main/notebooks/{name}"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def test_every_registered_chapter_has_a_notebook():
    names = {p.stem for p in NOTEBOOKS}
    missing = [c for c in chapter_registry.names() if c not in names]
    assert not missing, f"notebooks/ lacks the chapter(s): {', '.join(c + '.ipynb' for c in missing)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_no_outputs(path: Path):
    nb = _load(path)
    dirty = [
        i
        for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; "
        "clear them before committing (executed copies belong in build/)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_not_a_papermill_output(path: Path):
    nb = _load(path)
    assert "papermill" not in nb.get("metadata", {}), f"{path.name} is an executed papermill copy"
    injected = [
        i for i, c in enumerate(nb["cells"]) if "injected-parameters" in c.get("metadata", {}).get("tags", [])
    ]
    assert not injected, f"{path.name}: cells {injected} are papermill's injected parameters"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_exactly_one_parameters_cell(path: Path):
    nb = _load(path)
    tagged = [i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found cells {tagged}"
    assert nb["cells"][tagged[0]]["cell_type"] == "code", f"{path.name}: the parameters cell must be code"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_first_markdown_cell_has_colab_badge_for_this_file(path: Path):
    nb = _load(path)
    markdown = [c for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert markdown, f"{path.name} has no markdown cell"
    first = _source(markdown[0])
    link = COLAB.format(name=path.name)
    assert f"]({link})" in first, (
        f"{path.name}: the first markdown cell should link the Colab badge to {link}"
    )
    assert BADGE_IMAGE in first, f"{path.name}: the first markdown cell should show the badge {BADGE_IMAGE}"
