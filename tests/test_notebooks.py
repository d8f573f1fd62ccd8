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
from vlmloc import chapters, paper
from vlmloc.store import model_dirname, read_summary, write_summary

ROOT = Path(__file__).resolve().parents[1]
CH1 = "01_data_and_baselines"
CH4 = "04_position_decoding"
CH3 = "03_views"
CH6 = "06_mediation"
CH7 = "07_head_ablation"
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


# --------------------------------------------------------------------------- chapter 4 end to end


def paper_peak_of(model_id: str) -> dict:
    """The paper's peak the chapter puts beside a toy: its family's paper model, from vlmloc.paper."""
    mid = paper.LLAVA_7B if "llava" in model_id else paper.INTERNVL_8B
    return {"model": paper.MODELS[mid], **paper.POSITION_PEAKS[mid]}


@pytest.mark.notebooks
@pytest.mark.parametrize("model_id", ["toy-llava", "toy-internvl"])
def test_chapter4_runs_on_both_toys(model_id, tmp_path):
    out = chapters.execute(
        CH4, model_id, out_dir=tmp_path / "runs", results_dir=tmp_path / "results",
        n_train=24, n_test=12, epochs=2, progress=False,
    )  # fmt: skip
    s = read_summary(tmp_path / "results", model_id, CH4)
    assert s["model_id"] == model_id and s["n_train"] == 24 and s["n_test"] == 12 and s["streamed"]
    stages = [x["stage"] for x in s["sites"]]
    assert stages == sorted(stages, key=["tower", "projector", "llm"].index), "sites in path order"
    assert stages.count("projector") == 1 and stages.count("llm") == 9 and stages.count("tower") == 4
    for x in s["sites"]:
        assert {"stage", "layer", "row_acc", "col_acc", "cell_acc"} <= set(x)
        assert 0 <= x["cell_acc"] <= min(x["row_acc"], x["col_acc"]) <= 100
    assert set(s["chance"]) == {"row", "col", "cell"}
    assert set(s["corners"]) == {"projector", "best_llm"}
    for region in s["corners"].values():  # corners against the other border cells and the interior
        assert set(region["cell_acc"]) == {"corners", "edges", "interior", "se"}
    assert s["paper_peak"] == paper_peak_of(model_id)
    # the random-init control: every stage checked at its peak, the LLM's passes (the notebook stops if not)
    c = s["control"]
    assert set(c["stages"]) == set(s["control_ok"]) == {"tower", "projector", "llm"}
    assert s["control_ok"]["llm"] is True and c["stages"]["llm"]["site"] == s["peaks"]["llm"]["site"]
    probed = {x["site"] for x in s["sites"] if "random_init" in x}
    assert probed == set(c["sites"]) == {x["site"] for x in s["sites"]} - {"llm.input"}
    for x in c["sites"].values():
        assert x["selectivity"] == pytest.approx(x["acc"] - x["random_init_acc"], abs=0.01) and x["se"] > 0
    assert set(s["control_work"]) == {"tower", "projector", "llm"}
    nb = _nb(out)
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the path plot and the per-cell heatmaps"
    assert _outputs_text(nb).count("Finding.") >= 3


@pytest.mark.notebooks
def test_chapter4_stops_on_bad_probe_parameters(tmp_path):
    import papermill as pm
    import vlmloc

    ann, img = vlmloc.resolve_data(None, None)
    cases = [
        ({"n_train": 600, "n_test": 10, "annotations": str(ann), "images": str(img)}, "lists 500 that exist"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"control": "yes"}, "control must be True or False"),
        ({"control_cache_mb": -1}, "control_cache_mb must be 0 (stream)"),
    ]
    for params, sentence in cases:
        with pytest.raises(pm.PapermillExecutionError) as info:
            chapters.execute(
                CH4, "toy-llava", out_dir=tmp_path / "runs", results_dir=tmp_path / "results", **params
            )
        assert info.value.ename == "ParameterError" and sentence in info.value.evalue
    assert not (tmp_path / "results").exists()


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
    views = paper.RESULTS[paper.INTERNVL_8B]
    assert "Finding." in text and f"{views['baseline']['loc']:.2f}" in text
    assert f"{views['global_view_object_tokens']['loc']:.2f}" in text  # the paper's Table 3 beside ours


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


# --------------------------------------------------------------------------- chapters 6 and 7 (heads)


def _check_chapter6(out_nb: Path, results: Path, model_id: str, n_pairs: int) -> None:
    summary = read_summary(results, model_id, CH6)
    n_layers, n_heads = summary["n_layers"], summary["n_heads"]
    for task in ("classification", "localization"):
        mf = summary["mf"][task]
        assert len(mf) == n_layers and all(len(row) == n_heads for row in mf)
        top = summary["top10"][task]
        assert len(top) == 10 and all(0 <= la < n_layers and 0 <= h < n_heads for la, h in top)
        best = max(v for row in mf for v in row)
        assert mf[top[0][0]][top[0][1]] == best
        counts = summary["n_pairs"][task]
        assert counts["used"] + counts["dropped"] == n_pairs and counts["used"] > 0
        assert -1.0 <= summary["attribution"][task]["spearman"] <= 1.0
        assert 0 <= summary["attribution"][task]["top10_overlap"] <= 10
        assert summary["null"][task]["loop_exact"]
        assert {"top1", "top5", "top10"} <= set(summary["sparsity"][task])
    assert summary["overlap"] == len(summary["overlap_heads"]) <= 10
    assert summary["seconds"]["exact"] > 0 and summary["seconds"]["attribution"] > 0
    assert summary["patch_positions"] == "after_image"
    assert set(summary["positions_robustness"]) == {"classification", "localization"}
    for r in summary["positions_robustness"].values():
        assert r["other"] == "all" and 0 <= r["top10_overlap"] <= 10 and len(r["top10_other"]) == 10
    pairs = summary["ranking_data"]
    assert len(pairs["objects"]) >= n_pairs and len(pairs["images"]) >= 1
    nb = _nb(out_nb)
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 5, "pairs, MF maps, sparsity, controls and attribution figures"
    text = _outputs_text(nb)
    assert text.count("Finding.") >= 5 and "paper" in text


@pytest.mark.notebooks
@pytest.mark.parametrize("model_id", ["toy-llava", "toy-internvl"])
def test_chapter6_builds_its_pairs_and_runs(model_id, tmp_path):
    """On a clean results folder chapter 6 builds chapter 1's control set itself, then sweeps."""
    results = tmp_path / "results"
    out = chapters.execute(
        CH6, model_id, out_dir=tmp_path / "runs", results_dir=results,
        n_samples=SMALL, n_pairs=6, n_control_pairs=2,
    )  # fmt: skip
    assert (results / model_dirname(model_id) / "control_set" / "pairs.json").is_file()
    _check_chapter6(out, results, model_id, 6)


@pytest.mark.notebooks
@pytest.mark.parametrize("model_id", ["toy-llava", "toy-internvl"])
def test_chapter7_reads_chapter6_and_runs(model_id, tmp_path):
    results = tmp_path / "results"
    chapters.execute(
        CH6, model_id, out_dir=tmp_path / "runs", results_dir=results,
        n_samples=SMALL, n_pairs=4, n_control_pairs=1, compare_positions=False,
    )  # fmt: skip
    out = chapters.execute(
        CH7, model_id, out_dir=tmp_path / "runs", results_dir=results,
        n_samples=8, ks=[2, 5], n_draws=2, verdict_k=5,
    )  # fmt: skip
    s = read_summary(results, model_id, CH7)
    ch6 = read_summary(results, model_id, CH6)
    assert s["by_k"]["2"]["heads"]["cls_top"] == ch6["top10"]["classification"][:2]
    assert s["mediation_overlap"] == {"objects": 0, "images": 0}
    assert s["evaluation_set"]["n"] == 8 and s["ks_source"].startswith("ours")
    assert {"loc", "cls", "loc_se", "cls_se", "n"} <= set(s["baseline"])
    for k in ("2", "5"):
        block = s["by_k"][k]
        for name, e in block["conditions"].items():
            assert {"loc", "cls", "loc_se", "cls_se", "n"} <= set(e), name
            assert 0 <= e["loc"] <= 100 and 0 <= e["cls"] <= 100 and e["n"] == 8
        assert (
            s["verdict"][k] == block["verdict"]["outcome"] in ("supported", "not supported", "inconclusive")
        )
    nb = _nb(out)
    assert any("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert _outputs_text(nb).count("Finding.") >= 4


@pytest.mark.notebooks
def test_chapter7_stops_when_too_few_objects_are_left_outside_chapter6(tmp_path):
    import papermill as pm

    results = tmp_path / "results"
    chapters.execute(
        CH6, "toy-llava", out_dir=tmp_path / "runs", results_dir=results,
        n_samples=SMALL, n_pairs=4, n_control_pairs=0, compare_positions=False,
    )  # fmt: skip
    with pytest.raises(pm.PapermillExecutionError) as info:
        chapters.execute(CH7, "toy-llava", out_dir=tmp_path / "runs", results_dir=results, n_samples=100_000)
    assert info.value.ename == "InsufficientDataError"
    assert "objects lie outside the" in info.value.evalue and "pass -p n_samples" in info.value.evalue
    assert not (results / model_dirname("toy-llava") / f"{CH7}.json").exists()


@pytest.mark.notebooks
def test_chapter7_without_chapter6_names_the_command(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as info:
        chapters.execute(CH7, "toy-llava", out_dir=tmp_path / "runs", results_dir=tmp_path / "results")
    assert info.value.ename == "FileNotFoundError"
    assert f"--chapters {CH1} {CH6} --models toy-llava" in info.value.evalue


@pytest.mark.notebooks
def test_chapter6_without_a_control_set_names_the_command(tmp_path):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as info:
        chapters.execute(
            CH6, "toy-llava", out_dir=tmp_path / "runs", results_dir=tmp_path / "results",
            build_control_set=False,
        )  # fmt: skip
    assert info.value.ename == "FileNotFoundError"
    assert f"python -m vlmloc.chapters run --chapters {CH1} --models toy-llava" in info.value.evalue


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

    _assert_stopped_before_the_model(tmp_path, CH1, model_id)


def _assert_stopped_before_the_model(tmp_path: Path, chapter: str, model_id: str) -> None:
    """The failing cell comes before the model-loading cell, which never ran, and nothing was written."""
    nb = _nb(chapters.executed_path(tmp_path / "runs", chapter, model_id))
    cells = nb["cells"]
    failing = [
        i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    loading = [i for i, c in enumerate(cells) if "load_model(" in _source(c)]
    assert failing and loading
    assert failing[0] < loading[0], "the check must fail before the model-loading cell"
    assert "preamble.start(" in _source(cells[failing[0]]), (
        "the validation cell should be the one that raised"
    )
    assert all(c.get("execution_count") is None for c in cells[loading[0] :] if c["cell_type"] == "code")
    assert not (tmp_path / "results").exists(), "nothing may be written before the inputs are checked"


# --------------------------------------------------------------------------- bad data stops early too


def _bad_data(case: str, synthetic_coco, tmp_path: Path) -> tuple[Path, Path]:
    ann, images = synthetic_coco
    if case == "malformed annotations":
        bad = tmp_path / "instances.json"
        bad.write_text('{"images": [')
        return bad, images
    if case == "no usable object":  # every object gets a twin of its class: no query names one object
        raw = json.loads(ann.read_text())
        top = max(a["id"] for a in raw["annotations"])
        raw["annotations"] += [{**a, "id": top + 1 + i} for i, a in enumerate(raw["annotations"])]
        bad = tmp_path / "instances.json"
        bad.write_text(json.dumps(raw))
        return bad, images
    if case == "images folder without the images":
        empty = tmp_path / "val2017"
        empty.mkdir()
        return ann, empty
    raise ValueError(case)


BAD_DATA = {
    "malformed annotations": "is not valid JSON",
    "no usable object": "passes the filter (single instance of its class, area >= 1%)",
    "images folder without the images": "images chosen cannot be used:",
}
#: (chapter, case, n_samples): chapter 1 meets every bad input; chapter 2 runs the same loader and
#: image check (shown once) plus its own: no image left for the mean visual embedding.
BAD_DATA_RUNS = [(CH1, case, 4) for case in BAD_DATA] + [
    ("02_containerization", "images folder without the images", 4),
    ("02_containerization", "every image evaluated", 100),
]


@pytest.mark.notebooks
@pytest.mark.parametrize(
    ("chapter", "case", "n"), BAD_DATA_RUNS, ids=[f"{c[:2]}-{k}" for c, k, _ in BAD_DATA_RUNS]
)
def test_bad_data_stops_before_the_model_loads(chapter, case, n, synthetic_coco, tmp_path):
    import papermill as pm

    if case == "every image evaluated":  # 12 scenes, 100 objects asked for: no reference image is left
        (annotations, images), sentence = synthetic_coco, "none is left for the mean visual embedding"
    else:
        (annotations, images), sentence = _bad_data(case, synthetic_coco, tmp_path), BAD_DATA[case]
    with pytest.raises(pm.PapermillExecutionError) as info:
        chapters.execute(
            chapter, "toy-llava", out_dir=tmp_path / "runs", results_dir=tmp_path / "results",
            annotations=str(annotations), images=str(images), n_samples=n,
        )  # fmt: skip
    assert info.value.ename == "DataError"
    assert sentence in info.value.evalue
    _assert_stopped_before_the_model(tmp_path, chapter, "toy-llava")
    meta = _nb(chapters.executed_path(tmp_path / "runs", chapter, "toy-llava"))["metadata"]["papermill"]
    assert meta["parameters"]["progress"] is False  # the runner turns progress bars off


def test_progress_is_a_parameter_of_every_chapter_and_on_by_default():
    """A person running a notebook gets progress bars; chapters.execute (the book) passes progress=False."""
    import papermill as pm

    for name in (CH1, "02_containerization", CH6, CH7):
        assert pm.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"))["progress"]["default"] == "True"


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


# --------------------------------------------------------------------------- toy-qwen: the third family


@pytest.mark.notebooks
def test_toy_qwen_runs_chapters_1_2_4_5_6_7_and_chapter3_refuses_it(tmp_path):
    """Qwen2.5-VL through every chapter that fits it, at small n: each writes its summary for
    toy-qwen; chapter 5 says the paper has no range for this family; chapter 3 (views) refuses."""
    import papermill as pm

    model, runs, results = "toy-qwen", tmp_path / "runs", tmp_path / "results"
    run = {
        CH1: dict(n_samples=SMALL),
        "02_containerization": dict(n_samples=12, ig_steps=2, n_reference=8),
        CH4: dict(n_train=24, n_test=12, epochs=2, progress=False),
        "05_attention_knockout": dict(n_samples=12),
        CH6: dict(n_samples=SMALL, n_pairs=4, n_control_pairs=1),  # both patch positions
        CH7: dict(n_samples=8, ks=[2, 5], n_draws=2, verdict_k=5),
    }
    for chapter, params in run.items():
        chapters.execute(chapter, model, out_dir=runs, results_dir=results, **params)
        summary = read_summary(results, model, chapter)
        assert summary["model_id"] == model, chapter
    ch4 = read_summary(results, model, CH4)
    assert {x["stage"] for x in ch4["sites"]} == {"tower", "projector", "llm"}
    ch5 = read_summary(results, model, "05_attention_knockout")
    assert ch5["paper"] is None and ch5["max_new_tokens"] == 48
    assert all(ch5["most_harmful"][t].get("in_paper_range") is None for t in ch5["most_harmful"])
    with pytest.raises(pm.PapermillExecutionError) as info:
        chapters.execute(CH3, model, out_dir=runs, results_dir=results)
    assert info.value.ename == "SingleViewModelError" and "toy-qwen" in info.value.evalue
