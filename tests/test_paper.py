"""Every paper number comes from vlmloc.paper: code, notebooks and the book's prose read it from there."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from vlmloc import paper

ROOT = Path(__file__).resolve().parents[1]


def _typed_forms() -> set[str]:
    """How a paper number would look if someone typed it: rates with two decimals, counts with commas."""
    forms = {f"{v:.2f}" for rows in paper.RESULTS.values() for r in rows.values() for v in r.values() if v}
    forms |= {f"{paper.CONTROL_SET[k]:,}" for k in ("n_kept", "n_images")}
    return forms


def test_no_paper_number_is_typed_outside_paper_py():
    files = [p for p in (ROOT / "lib" / "vlmloc").rglob("*.py") if p.name != "paper.py"]
    files += [*(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "book").glob("*.md"), ROOT / "_config.yml"]
    pattern = re.compile(r"(?<![\d.])(" + "|".join(re.escape(f) for f in _typed_forms()) + r")(?![\d])")
    found = [
        f"{p.relative_to(ROOT)}: {m.group(1)}"
        for p in files
        for m in pattern.finditer(p.read_text(encoding="utf-8"))
    ]
    assert not found, f"paper numbers typed by hand; read them from vlmloc.paper: {found}"


def test_the_books_substitutions_are_the_papers_numbers():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["parse"]["myst_substitutions"] == paper.substitutions(), (
        "_config.yml's myst_substitutions differ from vlmloc.paper.substitutions(); copy them from there"
    )
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", (ROOT / "book" / "intro.md").read_text(encoding="utf-8")))
    assert used and used <= set(paper.substitutions()), (
        f"undefined substitutions: {used - set(paper.substitutions())}"
    )


def test_readme_quotes_the_papers_baseline():
    b = paper.RESULTS[paper.LLAVA_7B]["baseline"]
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert (
        f"{paper.MODELS[paper.LLAVA_7B]} has classification {b['cls']:.1f}% and Loc {b['loc']:.1f}%" in text
    )


def test_conditions_of_maps_bare_names_within_the_sections_asked_for():
    ch2 = paper.conditions_of("baseline", "ablation", "shuffle")
    for key, name in paper.SUMMARY_CONDITIONS.items():
        section, _, bare = key.rpartition(".")
        if section in ("ablation", "shuffle") or key == "baseline":
            assert ch2[bare] == name
    assert paper.conditions_of("views")["global"] == paper.SUMMARY_CONDITIONS["views.global"]
    assert paper.paper_result(paper.LLAVA_7B, None) is None
    assert paper.paper_result("no-such-model", "baseline") is None
