"""The chapters execute end to end on the toy models, stop early on bad parameters, and stage cleanly.

Tests marked ``notebooks`` run papermill (a kernel per run, tens of seconds each); they are part of
the default run. Select or skip them with ``-m notebooks`` / ``-m "not notebooks"``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from vlmloc import chapters
from vlmloc.store import model_dirname, read_summary, write_summary

ROOT = Path(__file__).resolve().parents[1]
CH1 = "01_data_and_baselines"
CH3 = "03_views"
SMALL = 24  # objects per chapter run in the tests


def _nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _outputs_text(nb: dict) -> str:
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            parts.append(
                out.get("text", "") if isinstance(out.get("text"), str) else "".join(out.get("text", []))
            )
            for v in out.get("data", {}).values():
                parts.append(v if isinstance(v, str) else "".join(v) if isinstance(v, list) else "")
    return "\n".join(parts)


def _check_chapter1(out_nb: Path, results: Path, model_id: str) -> None:
    summary = read_summary(results, model_id, CH1)
    assert summary["model_id"] == model_id
    assert summary["n_samples"] == SMALL and summary["seed"] == 0
    for key in ("loc", "loc_se", "cls", "cls_se"):
        assert 0.0 <= summary["baseline"][key] <= 100.0
    cs = summary["control_set"]
    assert set(cs) >= {"n_candidates", "n_kept", "n_images", "method", "path"}
    assert cs["method"] in ("lama", "opencv-telea")
    assert 0 <= cs["n_kept"] <= cs["n_candidates"] <= SMALL
    manifest = json.loads(Path(cs["path"]).read_text())
    assert len(manifest["pairs"]) == cs["n_candidates"]
    assert Path(cs["path"]).parent == results / model_dirname(model_id) / "control_set"
    nb = _nb(out_nb)
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4, "the chapter should show its figures (coverage, IoU, gallery, size, inpainting)"
    assert "Finding." in _outputs_text(nb)


# --------------------------------------------------------------------------- chapter 1 end to end


@pytest.mark.notebooks
def test_chapter1_runs_on_toy_llava(tmp_path):
    out = chapters.execute(
        CH1, "toy-llava", out_dir=tmp_path / "runs", results_dir=tmp_path / "results", n_samples=SMALL
    )
    assert out == tmp_path / "runs" / "toy-llava" / f"{CH1}.ipynb"
    _check_chapter1(out, tmp_path / "results", "toy-llava")


@pytest.mark.notebooks
def test_chapter1_runs_on_toy_internvl_from_the_command_line(tmp_path):
    """``-p model_id toy-internvl`` through the CLI: the same notebook on the other family."""
    cmd = [
        sys.executable, "-m", "vlmloc.chapters", "run", "--chapters", CH1, "--models", "toy-internvl",
        "--out-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), "-p", "n_samples", str(SMALL),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1/1 runs passed" in proc.stdout
    out = tmp_path / "runs" / "toy-internvl" / f"{CH1}.ipynb"
    assert _nb(out)["metadata"]["papermill"]["parameters"]["model_id"] == "toy-internvl"
    _check_chapter1(out, tmp_path / "results", "toy-internvl")


# --------------------------------------------------------------------------- chapter 3 (InternVL's views)


@pytest.mark.notebooks
def test_chapter3_runs_on_toy_internvl(tmp_path):
    results = tmp_path / "results"
    out = chapters.execute(
        CH3, "toy-internvl", out_dir=tmp_path / "runs", results_dir=results, n_samples=SMALL
    )
    summary = read_summary(results, "toy-internvl", CH3)
    assert summary["model_id"] == "toy-internvl" and summary["n_samples"] == SMALL
    assert set(summary["ablation"]) == {"global", "local", "both", "random_global", "random_local"}
    for entry in [summary["baseline"], *summary["ablation"].values()]:
        assert entry["n"] == SMALL and 0.0 <= entry["loc"] <= 100.0 and 0.0 <= entry["cls"] <= 100.0
        assert {"loc_se", "cls_se"} <= set(entry)
        assert set(entry["by_size"]) == {"small", "medium", "large"}
        assert sum(e["n"] for e in entry["by_size"].values()) == SMALL
        for e in entry["by_size"].values():
            assert {"loc", "cls", "loc_se", "cls_se", "n"} <= set(e)
    assert summary["selection"]["drawn"] == {"small": 8, "medium": 8, "large": 8}  # stratified
    assert all(summary["selection"]["multi_view"][c] >= 8 for c in ("small", "medium", "large"))
    nb = _nb(out)
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the chapter should show the bars by size and the example's views"
    text = _outputs_text(nb)
    assert "Finding." in text and "72.64" in text and "36.20" in text


@pytest.mark.notebooks
def test_chapter3_stops_on_a_single_view_model_before_loading_it(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as info:
        chapters.execute(CH3, "toy-llava", out_dir=tmp_path / "runs", results_dir=tmp_path / "results")
    err = info.value
    assert err.ename == "SingleViewModelError"
    assert "toy-llava" in err.evalue and "toy-internvl" in err.evalue and err.evalue.count(". ") == 0
    cells = _nb(chapters.executed_path(tmp_path / "runs", CH3, "toy-llava"))["cells"]
    failing = [
        i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    injected = next(
        i for i, c in enumerate(cells) if "injected-parameters" in c.get("metadata", {}).get("tags", [])
    )
    first_code = next(i for i, c in enumerate(cells) if i > injected and c["cell_type"] == "code")
    loading = next(i for i, c in enumerate(cells) if "load_model(" in _source(c))
    assert failing == [first_code], "the check must fail in the validation cell right after the parameters"
    assert "require_multi_view(" in _source(cells[first_code])
    assert failing[0] < loading
    assert all(c.get("execution_count") is None for c in cells[failing[0] + 1 :] if c["cell_type"] == "code")
    assert not (tmp_path / "results").exists(), "nothing may be written for a model the chapter cannot run"


# --------------------------------------------------------------------------- bad parameters stop early

BAD_PARAMETERS = {
    "unknown model_id": ({"model_id": "no-such-model"}, "model_id 'no-such-model' is not supported"),
    "missing annotations": (
        {"annotations": "/nonexistent/instances_val2017.json", "images": "."},
        "annotations file '/nonexistent/instances_val2017.json' does not exist",
    ),
    "negative n_samples": ({"n_samples": -5}, "n_samples must be a positive integer, got -5"),
}


@pytest.mark.notebooks
@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_bad_parameter_stops_before_the_model_loads(case, tmp_path):
    import papermill as pm

    params, sentence = BAD_PARAMETERS[case]
    model_id = params.pop("model_id", "toy-llava")
    with pytest.raises(pm.PapermillExecutionError) as info:
        chapters.execute(CH1, model_id, out_dir=tmp_path / "runs", results_dir=tmp_path / "results", **params)
    err = info.value
    assert err.ename == "ParameterError"
    assert sentence in err.evalue and sentence in str(err)
    assert err.evalue.count(". ") <= 1, f"one clear sentence, got: {err.evalue}"

    nb = _nb(chapters.executed_path(tmp_path / "runs", CH1, model_id))
    cells = nb["cells"]
    failing = [
        i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    loading = [i for i, c in enumerate(cells) if "load_model(" in _source(c)]
    assert failing and loading
    assert failing[0] < loading[0], "the parameter check must fail before the model-loading cell"
    assert all(c.get("execution_count") is None for c in cells[loading[0] :] if c["cell_type"] == "code")
    assert not (tmp_path / "results").exists(), "nothing may be written before the parameters are checked"


# --------------------------------------------------------------------------- the summary page


@pytest.mark.notebooks
def test_summary_renders_without_chapter2_results(tmp_path):
    results = tmp_path / "results"
    write_summary(
        results,
        "toy-llava",
        CH1,
        {
            "model_id": "toy-llava",
            "n_samples": 10,
            "seed": 0,
            "baseline": {"loc": 12.5, "loc_se": 3.0, "cls": 40.0, "cls_se": 5.0},
            "control_set": {
                "n_candidates": 4,
                "n_kept": 2,
                "n_images": 2,
                "method": "opencv-telea",
                "path": "x",
            },
        },
    )
    out = chapters.execute("summary", "toy-llava", out_dir=tmp_path / "runs", results_dir=results)
    text = _outputs_text(_nb(out))
    assert "No results of chapter 2" in text
    assert "toy-llava" in text and "LLaVA-1.5-7B" in text
    assert any("image/png" in o.get("data", {}) for c in _nb(out)["cells"] for o in c.get("outputs", []))


# --------------------------------------------------------------------------- the runner itself (fast)


def test_plan_runs_every_chapter_on_its_models_summary_last():
    runs = chapters.plan()
    assert runs == [
        (CH1, "toy-llava"),
        (CH1, "toy-internvl"),
        ("02_containerization", "toy-llava"),
        ("02_containerization", "toy-internvl"),
        (CH3, "toy-internvl"),
        ("summary", "toy-llava"),
    ]
    assert chapters.plan(models=["x"]) == [
        (CH1, "x"),
        ("02_containerization", "x"),
        (CH3, "x"),
        ("summary", "toy-llava"),
    ]
    assert chapters.plan(chapters=["summary"]) == [("summary", "toy-llava")]
    with pytest.raises(ValueError, match="unknown chapter"):
        chapters.plan(chapters=["03_nope"])


def test_every_planned_chapter_has_a_source_notebook_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    for name, _ in chapters.CHAPTERS:
        assert f"notebooks/{name}" in toc, f"{name} is run but not in _toc.yml"


def test_repo_root_is_found_from_the_package_and_from_a_subfolder():
    assert chapters.repo_root() == ROOT
    assert chapters.repo_root(ROOT / "lib" / "vlmloc") == ROOT
    with pytest.raises(FileNotFoundError, match="_toc.yml"):
        chapters.repo_root("/")


def _fake_run(runs: Path, chapter: str, model: str = "toy-llava", failed: bool = False) -> Path:
    path = chapters.executed_path(runs, chapter, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"papermill": {"exception": failed, "parameters": {"model_id": model}}}
    path.write_text(json.dumps({"cells": [], "metadata": meta, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_stage_fails_naming_the_missing_run_and_copies_nothing(tmp_path):
    runs, book = tmp_path / "runs", tmp_path / "book" / "notebooks"
    _fake_run(runs, "summary")
    with pytest.raises(chapters.StageError) as info:
        chapters.stage(runs, book, root=tmp_path)
    msg = str(info.value)
    assert f"missing run: {CH1} on toy-llava" in msg
    assert f"missing run: {CH3} on toy-internvl" in msg  # the chapter's own book model
    assert "missing run: summary" not in msg
    missing = " ".join(name for name, _ in chapters.CHAPTERS if name not in ("summary", CH3))
    assert f"python -m vlmloc.chapters run --chapters {missing} --models toy-llava" in msg
    assert f"python -m vlmloc.chapters run --chapters {CH3} --models toy-internvl" in msg
    assert not book.exists() or not any(book.iterdir()), "a partial book must not be staged"


def test_stage_refuses_a_failed_run(tmp_path):
    runs, book = tmp_path / "runs", tmp_path / "book"
    for name, _ in chapters.CHAPTERS:
        _fake_run(runs, name, failed=name == "summary")
    with pytest.raises(chapters.StageError, match="failed run: summary on toy-llava"):
        chapters.stage(runs, book, root=tmp_path)


def test_stage_copies_every_chapter_of_its_book_model(tmp_path):
    runs, book = tmp_path / "runs", tmp_path / "book"
    for name, _ in chapters.CHAPTERS:
        _fake_run(runs, name, failed=name == CH3)  # toy-llava cannot run chapter 3
        _fake_run(runs, name, model="toy-internvl", failed=name != CH3)  # only its chapter 3 is staged
    staged = chapters.stage(runs, book, root=tmp_path)
    assert [p.name for p in staged] == [f"{n}.ipynb" for n, _ in chapters.CHAPTERS]
    for p in staged:
        model = json.loads(p.read_text())["metadata"]["papermill"]["parameters"]["model_id"]
        assert model == ("toy-internvl" if p.stem == CH3 else "toy-llava"), p.name
    # a book staged for one model takes every chapter from it
    assert chapters.book_model(CH3, "OpenGVLab/InternVL3_5-8B-HF") == "OpenGVLab/InternVL3_5-8B-HF"
    assert chapters.book_model(CH1) == "toy-llava" and chapters.book_model(CH3) == "toy-internvl"


def test_stage_cli_exits_1_with_the_message(tmp_path, capsys):
    rc = chapters.main(["stage", "--runs-dir", str(tmp_path / "runs"), "--book-dir", str(tmp_path / "book")])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"missing run: {CH1} on toy-llava" in err
