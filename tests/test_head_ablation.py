"""Chapter 7: head sets from chapter 6, random draws, the evaluation under ablation and the verdict."""

from __future__ import annotations

import pytest
import torch
import vlmloc
from vlmloc.evaluate import run_condition
from vlmloc.experiments import ch07_head_ablation as ha
from vlmloc.interventions import HeadAblation
from vlmloc.paper import HEAD_ABLATION, MODELS
from vlmloc.report import ch07 as har
from vlmloc.store import ResultsStore, write_summary


def test_rankings_come_from_chapter6_and_a_missing_file_names_the_command(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="--chapters 01_data_and_baselines 06_mediation --models toy-llava"
    ):
        ha.load_rankings(tmp_path, "toy-llava")
    mf = [[0.0, 0.5], [0.9, -0.1]]
    write_summary(
        tmp_path, "toy-llava", "06_mediation", {"mf": {"classification": mf, "localization": mf[::-1]}}
    )
    r = ha.load_rankings(tmp_path, "toy-llava")
    assert r["classification_heads"] == [[1, 0], [0, 1], [0, 0], [1, 1]]
    assert r["localization_heads"][0] == [0, 0]


def test_random_heads_are_seeded_nested_and_distinct():
    a = ha.random_heads(8, 8, 20, seed=0, draw=1)
    assert a == ha.random_heads(8, 8, 20, seed=0, draw=1)
    assert ha.random_heads(8, 8, 5, seed=0, draw=1) == a[:5]  # sets grow with k
    assert a != ha.random_heads(8, 8, 20, seed=0, draw=2)
    assert len({tuple(h) for h in a}) == 20 and all(0 <= la < 8 and 0 <= h < 8 for la, h in a)


def _summary(cls_heads_loc: float, loc_heads_cls: float) -> dict:
    e = lambda loc, cls: {"loc": loc, "cls": cls, "loc_se": 2.0, "cls_se": 2.0, "n": 100}  # noqa: E731
    return {
        "baseline": e(80.0, 90.0),
        "ablation": {
            "classification_heads": {"10": e(cls_heads_loc, 40.0)},
            "localization_heads": {"10": e(30.0, loc_heads_cls)},
            "random": {"10": e(75.0, 88.0)},
        },
    }


def test_random_mean_adds_the_spread_between_draws_to_the_sampling_error():
    e = lambda loc, se: {"loc": loc, "cls": 50.0, "loc_se": se, "cls_se": 0.0, "n": 10}  # noqa: E731
    r = ha.random_mean([e(40.0, 3.0), e(60.0, 4.0)])
    assert r["loc"] == 50.0 and r["draws"] == 2 and r["n"] == 10
    sd = 200**0.5  # sample SD of 40 and 60
    assert r["loc_sd"] == pytest.approx(sd, abs=1e-4)
    assert r["loc_se"] == pytest.approx(((9 + 16) / 2 / 2 + sd**2 / 2) ** 0.5, abs=1e-4)
    assert ha.random_mean([e(40.0, 3.0)])["loc_se"] == 3.0


def test_verdict_compares_with_random_heads_in_standard_errors():
    yes = har.verdict(_summary(cls_heads_loc=50.0, loc_heads_cls=87.0), 10)
    assert (
        yes["recognition_then_localization"] and yes["cls_heads_cripple_loc"] and yes["loc_heads_spare_cls"]
    )
    assert yes["loc_drop_cls_heads"] == 30.0 and yes["loc_drop_random"] == 5.0
    no = har.verdict(_summary(cls_heads_loc=73.0, loc_heads_cls=60.0), 10)
    assert not no["recognition_then_localization"] and not no["loc_heads_spare_cls"]


def test_a_head_ablation_reaches_generation_through_run_condition(toy_llava, tmp_path):
    """The same ablation for every batch through ``interventions_for`` (chapter 5's per-batch hook)."""
    samples = vlmloc.load_coco(*vlmloc.resolve_data(None, None), limit=4, seed=0)
    store = ResultsStore(tmp_path, "toy-llava", "t")
    plain = run_condition(toy_llava, samples, "localization", store, "plain", {}, progress=False)

    def ablating(heads):
        return lambda chunk, layouts: [HeadAblation(heads)]

    null = run_condition(
        toy_llava, samples, "localization", store, "null", {}, progress=False, interventions_for=ablating([])
    )
    assert [r["answer"] for r in null] == [r["answer"] for r in plain]
    every = [(la, h) for la in range(toy_llava.n_layers) for h in range(toy_llava.n_heads)]
    silenced = run_condition(
        toy_llava,
        samples,
        "localization",
        store,
        "all",
        {},
        progress=False,
        interventions_for=ablating(every),
    )
    assert [r["answer"] for r in silenced] != [r["answer"] for r in plain]


def test_head_means_shape_and_mean_ablation_runs(toy_llava, tmp_path):
    samples = vlmloc.load_coco(*vlmloc.resolve_data(None, None), limit=2, seed=0)
    means = ha.head_means(toy_llava, samples, batch_size=4)
    assert means.shape == (toy_llava.n_layers, toy_llava.n_heads, toy_llava.head_dim)
    assert torch.isfinite(means).all() and means.abs().sum() > 0
    rankings = {"classification_heads": [[0, 0], [1, 1]], "localization_heads": [[2, 2], [3, 3]]}
    params = ha.HeadAblationParams(
        config={"x": 1}, rankings=rankings, ks=[1, 2], n_draws=2, mode="mean", means=means, progress=False
    )
    exp = ha.HeadAblationExperiment(toy_llava, samples, params, ResultsStore(tmp_path, "toy-llava", "h"))
    out = exp.run_all()
    assert set(out["ablation"]) == set(ha.HEAD_SETS)
    assert out["ablation"]["classification_heads"]["2"]["heads"] == [[0, 0], [1, 1]]
    assert out["ablation"]["random"]["2"]["draws"] == 2 and len(out["draws"]["1"]) == 2
    for entry in [out["baseline"], *out["ablation"]["classification_heads"].values()]:
        assert set(ha.ENTRY_KEYS) <= set(entry) and entry["n"] == 2
    assert set(exp.timings) == {"baseline", "ablation"}
    with pytest.raises(ValueError, match="mode must be"):
        ha.HeadAblationExperiment(
            toy_llava, samples, ha.HeadAblationParams(config={}, rankings=rankings, mode="x"), None
        )
    with pytest.raises(ValueError, match="mean ablation needs"):
        ha.HeadAblationExperiment(
            toy_llava, samples, ha.HeadAblationParams(config={}, rankings=rankings, mode="mean"), None
        )


def test_findings_and_results_table_state_the_verdict_beside_the_papers():
    summary = {"model_id": "toy-llava", "verdict_k": 10, **_summary(cls_heads_loc=50.0, loc_heads_cls=87.0)}
    assert "it cripples localization" in har.finding_cls_heads("toy-llava", summary, 10)
    assert HEAD_ABLATION["claim"] in har.finding_cls_heads("toy-llava", summary, 10)
    assert "classification is spared" in har.finding_loc_heads("toy-llava", summary, 10)
    verdict = har.finding_verdict("toy-llava", summary, 10)
    assert "supported" in verdict and all(MODELS[m] in verdict for m in HEAD_ABLATION["models"])
    table = har.results_table({"toy-llava": {ha.CHAPTER: summary}})
    assert table.loc[("toy-llava", "this book"), "recognition then localization"] == "yes"
    assert table.loc[("toy-llava", "this book"), "Loc drop, cls heads"] == 30.0
    assert [m for m, src in table.index if src == "paper"] == [MODELS[m] for m in HEAD_ABLATION["models"]]
    assert list(har.ablation_table(summary).index[0]) == ["none (baseline)", 0]
