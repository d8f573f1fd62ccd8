"""Chapter 5, attention knockout: the evaluation hooks, the reused prefix, the experiment, the findings.

The model tests run on the trained toys (8 decoder layers) with a handful of objects; the
findings are tested on hand-made summaries, so each rule can be seen to fail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import pytest
import torch
import vlmloc
import vlmloc.experiments.ch05_attention_knockout as ko
from vlmloc.evaluate import run_condition
from vlmloc.geometry import index_layout
from vlmloc.interventions import AttentionKnockout
from vlmloc.paper import knockout_layers
from vlmloc.report import ch05 as report
from vlmloc.store import ResultsStore

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def samples():
    return vlmloc.load_coco(*vlmloc.resolve_data(None, None), seed=0)[:6]


def _batch(vlm, samples, task="localization"):
    images = [s.load_image() for s in samples]
    enc = vlm.encode(images, [vlm.prompt(task, s.category) for s in samples])
    return enc, vlm.layouts(enc, images)


def _object_keys(samples, layouts):
    return [lay.positions[lay.object_indices(s.mask())] for s, lay in zip(samples, layouts, strict=True)]


# --- the reused prefix -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["toy_llava", "toy_internvl"])
def test_generation_from_the_image_prefix_equals_the_full_run(name, samples, request):
    vlm = request.getfixturevalue(name)
    enc, layouts = _batch(vlm, samples)
    starts = [ko.query_from(lay) for lay in layouts]
    prefix = vlm.prefix(enc, min(starts))
    blocked = AttentionKnockout(range(vlm.n_layers), _object_keys(samples, layouts), starts)
    for ivs in ([], [blocked]):
        full_logits, pre_logits = [], []
        full = vlm.generate(enc, max_new_tokens=8, interventions=ivs, step_logits=full_logits)
        got = vlm.generate(enc, max_new_tokens=8, interventions=ivs, prefix=prefix, step_logits=pre_logits)
        assert got == full
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(full_logits, pre_logits, strict=True))
    # the knockout is real, and the prefix was not consumed by the first use
    assert vlm.generate(enc, max_new_tokens=8, interventions=[blocked], prefix=prefix) != vlm.generate(
        enc, max_new_tokens=8, prefix=prefix
    )


def test_a_prefix_refuses_an_input_edit(toy_llava, samples):
    enc, layouts = _batch(toy_llava, samples[:2])
    prefix = toy_llava.prefix(enc, min(ko.query_from(lay) for lay in layouts))
    with pytest.raises(ValueError, match="edit of the LLM input"):
        toy_llava.generate(enc, max_new_tokens=2, edit=lambda e: e, prefix=prefix)
    with pytest.raises(ValueError, match="shorter than the prompt"):
        toy_llava.prefix(enc, enc["input_ids"].shape[1])


# --- run_condition's hooks ----------------------------------------------------------------------


def test_run_condition_passes_interventions_per_batch(toy_llava, samples, tmp_path):
    store = ResultsStore(tmp_path, toy_llava.model_id, "hooks")
    kw = dict(batch_size=3, max_new_tokens=12, progress=False)
    base = run_condition(toy_llava, samples, "localization", store, "base", {}, **kw)
    seen: list[AttentionKnockout] = []

    def null_knockout(chunk, layouts):
        seen.append(AttentionKnockout.null(range(8), [lay.positions for lay in layouts]))
        return seen[-1:]

    def full(chunk, layouts):
        keys = [lay.positions for lay in layouts]
        return [AttentionKnockout(range(8), keys, [ko.query_from(lay) for lay in layouts])]

    null = run_condition(
        toy_llava, samples, "localization", store, "null", {}, interventions_for=null_knockout, **kw
    )
    assert [len(k.keys) for k in seen] == [3, 3]
    assert [r["answer"] for r in null] == [r["answer"] for r in base]
    for k in seen:  # the null knockout ran its mask hook in every layer, at every generation step
        assert set(k.calls) == {("mask", layer) for layer in range(8)}
        assert min(k.calls.values()) > 1
    blind = run_condition(
        toy_llava, samples, "localization", store, "blind", {}, interventions_for=full, **kw
    )
    assert [r["answer"] for r in blind] != [r["answer"] for r in base]


# --- the experiment -----------------------------------------------------------------------------


def _experiment(vlm, samples, tmp_path, **kw):
    params = ko.KnockoutParams(
        config={"n": len(samples)}, window=4, stride=2, batch_size=3, max_new_tokens=12, **kw
    )
    return ko.Knockout(vlm, samples, params, ResultsStore(tmp_path, vlm.model_id, ko.CHAPTER))


def test_token_sets_are_the_object_as_many_random_tokens_and_the_image(toy_internvl, samples, tmp_path):
    exp = _experiment(toy_internvl, samples, tmp_path)
    for s in samples:
        d = exp.token_sets()[s.sample_id]
        assert len(d["random"]) == len(d["object"]) > 0
        assert len(set(d["random"].tolist())) == len(d["random"])
        assert len(d["image"]) == index_layout(toy_internvl, s).n_tokens  # every tile and the thumbnail
    assert list(exp.layer_sets()) == ["0-3", "2-5", "4-7", "all"]
    assert 0 < exp.token_share("object") < 100 and exp.token_share("image") == 100


def test_knockout_runs_resumes_and_does_not_depend_on_the_prefix(toy_llava, samples, tmp_path, monkeypatch):
    exp = _experiment(toy_llava, samples, tmp_path / "a")
    summary = exp.run_all(progress=False)
    assert set(summary["knockout"]) == set(ko.TOKEN_SETS)
    for entries in summary["knockout"].values():
        assert list(entries) == ["0-3", "2-5", "4-7", "all"]
        for e in entries.values():
            assert {"loc", "cls", "loc_se", "cls_se", "n"} <= set(e) and e["n"] == len(samples)
    assert summary["knockout"]["image"]["all"]["loc"] < summary["baseline"]["loc"]
    assert set(summary["most_harmful"]) == {"localization", "classification"}
    json.dumps(summary)  # the summary is plain JSON

    calls = []
    real = toy_llava.generate
    monkeypatch.setattr(toy_llava, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = _experiment(toy_llava, samples, tmp_path / "a").run_all(progress=False)
    assert calls == [] and again["knockout"] == summary["knockout"]  # everything resumed from the store

    monkeypatch.setattr(toy_llava, "generate", real)
    plain = _experiment(toy_llava, samples, tmp_path / "b", reuse_prefix=False)
    recs = {}
    for e, tag in ((exp, "prefix"), (plain, "full")):
        if tag == "full":
            e.knockout(progress=False, token_sets=["object"])
        recs[tag] = {
            k: [r["answer"] for r in v] for k, v in e.records.items() if k[0].startswith("ko-object")
        }
    assert recs["prefix"] == recs["full"]


# --- findings on hand-made summaries -----------------------------------------------------------


def _entry(loc, cls, se=1.0):
    return {"loc": loc, "cls": cls, "loc_se": se, "cls_se": se, "n": 100}


def _summary(obj_loc, obj_cls, family="llava"):
    wins = ["0-3", "1-4", "2-5", "3-6", "4-7"]
    paper = "llava-hf/llava-1.5-7b-hf" if family == "llava" else "OpenGVLab/InternVL3_5-8B-HF"
    return {
        "model_id": "toy",
        "n_layers": 8,
        "window": 4,
        "windows": [*wins, "all"],
        "baseline": _entry(80, 90),
        "knockout": {
            "object": {
                w: _entry(a, b) for w, a, b in zip([*wins, "all"], [*obj_loc, 0], [*obj_cls, 0], strict=True)
            },
            "random": {w: _entry(80, 90) for w in [*wins, "all"]},
            "image": {w: _entry(0, 0) for w in [*wins, "all"]},
        },
        "paper": {"model": paper, "words": "w", "layers": list(knockout_layers(paper, 8))},
    }


def test_localization_needing_later_layers_is_found():
    s = _summary([10, 10, 10, 10, 10], [10, 10, 60, 85, 90])
    assert ko.critical_windows(s, "classification") == ["0-3", "1-4"]
    assert ko.critical_windows(s, "localization") == ["0-3", "1-4", "2-5", "3-6", "4-7"]
    assert "reach later layers than classification's, as the paper" in report.depth_finding(s)
    assert ko.harm_depth(s, "localization") == 3.5  # the mean of the window centres 1.5 .. 5.5
    assert ko.harm_depth(s, "classification") < 3.0


def test_the_same_layers_for_both_tasks_is_reported_against_the_paper():
    s = _summary([10, 10, 80, 80, 80], [10, 10, 90, 90, 90])
    assert "unlike the paper" in report.depth_finding(s)
    s = _summary([80, 80, 80, 80, 80], [10, 10, 90, 90, 90])
    assert "cannot say" in report.depth_finding(s)


def test_random_tokens_as_harmful_as_the_object_make_no_critical_window():
    s = _summary([10, 10, 10, 10, 10], [10, 10, 10, 10, 10])
    for w in s["knockout"]["random"]:
        s["knockout"]["random"][w] = _entry(12, 11)
    assert ko.critical_windows(s, "localization") == []
    assert "no window costs more than 2 standard errors" in report.task_finding(s, "localization")


def test_most_harmful_window_and_the_paper_range():
    s = _summary([70, 50, 5, 40, 70], [80, 2, 60, 85, 90])
    mh = ko.most_harmful(s, "localization")
    assert mh["window"] == "2-5" and mh["drop"] == 75 and mh["beyond_random"]
    assert ko.most_harmful(s, "classification")["window"] == "1-4"
    assert knockout_layers("llava-hf/llava-1.5-7b-hf", 8) == (0, 4)
    assert knockout_layers("OpenGVLab/InternVL3_5-8B-HF", 8) == (3, 7)
    assert knockout_layers("llava-hf/llava-1.5-7b-hf", 32) == (0, 20)
    assert mh["in_paper_range"] and "inside the paper's" in report.paper_finding(s)
    late = _summary([70, 70, 70, 70, 5], [80, 80, 80, 80, 2])
    assert "outside" in report.paper_finding(late)
    assert "inside" in report.paper_finding(
        _summary([70, 70, 70, 70, 5], [80, 80, 80, 80, 2], family="internvl")
    )


def test_guess_finding_names_the_frequent_answer_where_the_image_beats_the_object():
    s = _summary([10, 10, 10, 10, 10], [10, 10, 10, 10, 10])
    s["knockout"]["image"]["1-4"] = _entry(0, 40)
    answers = {w: ["circle"] * 10 for w in s["windows"]}
    answers["1-4"] = ["Triangle."] * 7 + ["circle"] * 3
    text = report.guess_finding(s, answers)
    assert "in layers 1-4 leaves Cls at 40.0%, above the 10.0%" in text
    assert "“triangle” (7 of 10 objects)" in text
    s["knockout"]["image"]["1-4"] = _entry(0, 0)
    assert "never leaves Cls above blocking the object" in report.guess_finding(s, answers)


def test_power_finding_sets_the_largest_drops_against_their_standard_errors():
    s = {**_summary([70, 50, 5, 40, 70], [80, 2, 60, 85, 90]), "n_samples": 100}
    text = report.power_finding(s)
    assert "Loc ± 1.0 and Cls ± 1.0 points" in text
    # Loc 80 -> 5 in layers 2-5: 75 points against sqrt(1 + 1) = 1.41 points of SE
    assert "75.0 points for localization (layers 2-5, 53.0 standard errors)" in text
    assert "resolves them" in text
    small = {**_summary([79, 79, 79, 79, 79], [89, 89, 89, 89, 89]), "n_samples": 100}
    assert "within noise" in report.power_finding(small)


def test_paper_ranges_come_from_the_paper_module():
    text = report.paper_ranges(8)
    assert "LLaVA-1.5-7B's early-to-middle layers are its layers 0-20 of 32 (layers 0-4 at 8 layers)" in text
    assert (
        "InternVL-3.5-8B's middle-to-late layers are its layers 12-35 of 36 (layers 3-7 at 8 layers)" in text
    )


def test_table_and_plot_show_every_window():
    from vlmloc import plots

    s = _summary([10, 10, 10, 10, 10], [10, 10, 60, 85, 90])
    table = report.knockout_table(s)
    assert list(table.index) == ["none (baseline)", "0-3", "1-4", "2-5", "3-6", "4-7", "all"]
    assert table.loc["2-5", "Cls object"] == "60.0 ± 1.0"
    fig = plots.plot_knockout_curves(s)
    assert len(fig.axes) == 2
    s.update(n_samples=100, most_harmful={t: ko.most_harmful(s, t) for t in ko.TASKS})
    s["critical"] = {t: ko.critical_windows(s, t) for t in ko.TASKS}
    page = report.results_table({"toy": {ko.CHAPTER: s}, "other": {"01_data_and_baselines": {}}})
    assert list(page["task"]) == list(ko.TASKS) and not page.isna().any().any()
    assert page.set_index("task").loc["classification", "% there (baseline)"] == "Cls 10.0 (90.0)"


# --- the chapter ------------------------------------------------------------------------------


@pytest.mark.notebooks
@pytest.mark.parametrize("model_id", ["toy-llava", "toy-internvl"])
def test_chapter_5_executes_and_writes_its_summary(model_id, tmp_path):
    import papermill as pm

    results = tmp_path / "results"
    pm.execute_notebook(
        str(ROOT / "notebooks" / f"{ko.CHAPTER}.ipynb"),
        str(tmp_path / f"{ko.CHAPTER}.ipynb"),
        parameters=dict(model_id=model_id, results_dir=str(results), n_samples=8, batch_size=8, device="cpu",
                        stride=2, max_new_tokens=16, progress=False),
        kernel_name="python3",
        cwd=str(ROOT),
        progress_bar=False,
    )  # fmt: skip
    summary = json.loads((results / model_id / f"{ko.CHAPTER}.json").read_text())
    assert summary["model_id"] == model_id and summary["n_samples"] == 8
    assert {"loc", "cls"} <= set(summary["baseline"])
    assert set(summary["knockout"]) == {"object", "random", "image"}
    assert all(list(v) == ["0-3", "2-5", "4-7", "all"] for v in summary["knockout"].values())
    assert len(summary["findings"]) == 4 and all(model_id in f for f in summary["findings"].values())
    out = json.loads((tmp_path / f"{ko.CHAPTER}.ipynb").read_text())
    text = "\n".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/markdown", ""))
        for c in out["cells"]
        for o in c.get("outputs", [])
    )
    ran = re.search(r"its mask hooks ran (\d+) times \((\d+) layers x (\d+) steps\)", text)
    assert ran and int(ran[1]) == int(ran[2]) * int(ran[3]) > 0, "the null knockout's hooks must run"
    assert "**Sample size.**" in text and "**The whole image against the object.**" in text


def test_the_knockout_is_the_shared_runner_and_its_params_extend_run_params(toy_llava, samples, tmp_path):
    from vlmloc.experiments.base import Experiment, RunParams

    exp = _experiment(toy_llava, samples, tmp_path, reuse_prefix=False)
    assert isinstance(exp, Experiment) and isinstance(exp.params, RunParams)
    assert exp.prefix_for() is None and exp.params.window == 4 and exp.params.stride == 2
