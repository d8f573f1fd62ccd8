"""Chapter 7: head sets from chapter 6, the out-of-sample evaluation set, matched random heads,
paired effects, the three-way verdict, and the ablation through generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import vlmloc
from vlmloc.data import Sample
from vlmloc.evaluate import run_condition
from vlmloc.experiments import ch07_head_ablation as ha
from vlmloc.interventions import HeadAblation
from vlmloc.paper import HEAD_ABLATION, MODELS
from vlmloc.report import ch07 as har
from vlmloc.stats import paired_difference, per_object
from vlmloc.store import ResultsStore, write_summary

MF = [[0.0, 0.5], [0.9, -0.1]]


def _rankings(cls, loc, objects=(), images=()) -> ha.Rankings:
    return ha.Rankings([list(h) for h in cls], [list(h) for h in loc], frozenset(objects), frozenset(images))


def test_rankings_come_from_chapter6_with_the_data_it_ranked_on(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="--chapters 01_data_and_baselines 06_mediation --models toy-llava"
    ):
        ha.load_rankings(tmp_path, "toy-llava")
    write_summary(
        tmp_path, "toy-llava", "06_mediation", {"mf": {"classification": MF, "localization": MF[::-1]}}
    )
    with pytest.raises(ValueError, match="cannot evaluate out of sample; rerun"):
        ha.load_rankings(tmp_path, "toy-llava")
    write_summary(
        tmp_path, "toy-llava", "06_mediation",
        {"mf": {"classification": MF, "localization": MF[::-1]},
         "ranking_data": {"objects": ["3:7", "4:9"], "images": [3, 4]}},
    )  # fmt: skip
    r = ha.load_rankings(tmp_path, "toy-llava")
    assert r.classification == [[1, 0], [0, 1], [0, 0], [1, 1]]
    assert r.localization[0] == [0, 0]
    assert r.objects == {"3:7", "4:9"} and r.images == {3, 4}


def _sample(image_id: int, ann_id: int) -> Sample:
    return Sample(
        image_id=image_id, ann_id=ann_id, file_name="x.png", image_path=Path("x.png"), category="circle",
        category_id=1, box=(0, 0, 1, 1), area=1.0, width=10, height=10,
    )  # fmt: skip


def test_the_evaluation_set_shares_no_image_with_chapter6_and_stops_when_too_few_are_left():
    samples = [_sample(i, 10 * i + j) for i in range(10) for j in range(2)]  # 2 objects per image
    ranked = _rankings([[0, 0]], [[0, 1]], objects={"1:10", "4:40", "9:91"}, images={1, 4, 9})
    chosen, drawn = ha.evaluation_set(samples, ranked, 8)
    assert [s.sample_id for s in chosen] == [s.sample_id for s in samples if s.image_id not in {1, 4, 9}][:8]
    assert drawn["mediation_overlap"] == {"objects": 0, "images": 0} and drawn["n"] == 8
    assert drawn["skipped"] == 4  # images 1 and 4 come before the 8th kept object; 2 objects each
    # a selection that leaked would be counted, not hidden: the overlap is computed, not declared
    leaky = _rankings([[0, 0]], [[0, 1]], objects={"0:0"}, images=set())
    assert ha.evaluation_set(samples, leaky, 4)[1]["mediation_overlap"] == {"objects": 1, "images": 0}
    with pytest.raises(ha.InsufficientDataError, match="only 14 of 20 objects lie outside the 3 images"):
        ha.evaluation_set(samples, ranked, 15)


def test_head_sets_split_shared_heads_from_each_tasks_own():
    r = _rankings([[0, 0], [1, 1], [2, 2], [3, 3]], [[1, 1], [4, 4], [0, 0], [5, 5]])
    s = ha.head_sets(r, 3)
    assert s.shared == [[0, 0], [1, 1]]
    assert s.cls_only == [[2, 2]] and s.loc_only == [[4, 4]]
    assert s.excluded() == {(0, 0), (1, 1), (2, 2), (4, 4)}
    with pytest.raises(ValueError, match="unknown head set"):
        s.of("random")


def test_random_heads_are_matched_layer_by_layer_and_avoid_both_top_lists():
    heads = [[0, 1], [0, 2], [3, 0], [7, 7]]
    exclude = {(0, 1), (0, 2), (3, 0), (7, 7), (0, 3)}
    a, unmatched = ha.matched_random(heads, exclude, 8, 8, np.random.default_rng(1))
    assert unmatched == 0 and sorted(la for la, _ in a) == [0, 0, 3, 7]
    assert not {tuple(h) for h in a} & exclude and len({tuple(h) for h in a}) == 4
    b, _ = ha.matched_random(heads, exclude, 8, 8, np.random.default_rng(1))
    assert a == b  # seeded
    # a layer filled by the top lists: the rest come from the nearest layer, and are counted
    full = {(0, h) for h in range(4)}
    c, unmatched = ha.matched_random([[0, 0], [0, 1]], full, 8, 4, np.random.default_rng(0))
    assert unmatched == 2 and [la for la, _ in c] == [1, 1]


def _records(task: str, scores: dict[str, float]) -> list[dict]:
    """Constructed records: Loc as an IoU that meets that share of the thresholds, Cls as correct or not."""
    iou = {0.0: 0.1, 100 / 3: 0.6, 200 / 3: 0.8, 100.0: 0.95}
    if task == "classification":
        return [{"sample_id": k, "correct": v >= 50} for k, v in scores.items()]
    return [{"sample_id": k, "iou": iou[min(iou, key=lambda x: abs(x - v))]} for k, v in scores.items()]


def test_per_object_scores_and_the_paired_difference():
    recs = _records("localization", {"a": 100.0, "b": 0.0, "c": 200 / 3})
    assert per_object(recs, "localization") == pytest.approx({"a": 100.0, "b": 0.0, "c": 200 / 3})
    assert per_object([{"sample_id": "a", "iou": None}], "localization") == {"a": 0.0}
    t = {"a": 0.0, "b": 50.0, "c": 100.0, "d": 50.0}
    same = paired_difference(t, [t, t])
    assert same["drop"] == 0 and same["se"] == 0
    c1, c2 = {k: v + 20 for k, v in t.items()}, {k: v + 40 for k, v in t.items()}
    d = paired_difference(t, [c1, c2])
    assert d["drop"] == 30.0 and d["se_objects"] == 0 and d["se_draws"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="share no object"):
        paired_difference({"x": 1.0}, [{"y": 1.0}])


def _effects(n: int, a: float, b: float, noise: float, seed: int = 0) -> dict:
    """Paired effects built from constructed per-object records: sets at ``control - a`` (Loc) and ``- b`` (Cls)."""
    rng = np.random.default_rng(seed)
    out = {}
    for effect, drop in (("cls_heads_on_loc", a), ("loc_heads_on_cls", b)):
        task = "localization" if effect.endswith("loc") else "classification"
        grid = [0.0, 100 / 3, 200 / 3, 100.0] if task == "localization" else [0.0, 100.0]
        ids = [f"o{i}" for i in range(n)]
        control = {i: float(rng.choice(grid[len(grid) // 2 :])) for i in ids}
        draws = [
            per_object(_records(task, {i: min(grid, key=lambda g: abs(g - (v + rng.normal(0, noise)))) for i, v in control.items()}), task)
            for _ in range(3)
        ]  # fmt: skip
        treated = {
            i: min(grid, key=lambda g: abs(g - (v - drop + rng.normal(0, noise)))) for i, v in control.items()
        }
        out[effect] = paired_difference(per_object(_records(task, treated), task), draws)
    return out


@pytest.mark.parametrize(
    ("a", "b", "n", "noise", "outcome"),
    [
        (60.0, 0.0, 200, 0.0, "supported"),  # cls-only heads cost Loc, loc-only heads spare Cls
        (60.0, 60.0, 200, 0.0, "not supported"),  # both directions: no order
        (0.0, 60.0, 200, 0.0, "not supported"),  # the reverse order
        (0.0, 0.0, 400, 0.0, "not supported"),  # an effect that matters is ruled out
        (0.0, 0.0, 6, 40.0, "inconclusive"),  # within noise and not ruled out
    ],
)
def test_the_verdict_comes_out_each_way_from_constructed_records(a, b, n, noise, outcome):
    v = ha.verdict(_effects(n, a, b, noise), z=2.0, min_effect=5.0)
    assert v["outcome"] == outcome, v


def test_a_verdict_without_own_heads_is_inconclusive():
    assert ha.verdict({})["outcome"] == "inconclusive"


def _result() -> dict:
    e = lambda loc, cls: {"loc": loc, "cls": cls, "loc_se": 2.0, "cls_se": 2.0, "n": 100}  # noqa: E731
    eff = lambda d, se: {"drop": d, "se": se, "se_objects": se, "se_draws": 0.0, "n": 100, "draws": 3}  # noqa: E731
    effects = {"cls_heads_on_loc": eff(30.0, 3.0), "loc_heads_on_cls": eff(1.0, 2.0),
               "cls_heads_on_cls": eff(20.0, 3.0), "loc_heads_on_loc": eff(40.0, 3.0)}  # fmt: skip
    block = {
        "heads": {"cls_top": [[0, 0], [1, 1]], "loc_top": [[1, 1], [2, 2]], "shared": [[1, 1]],
                  "cls_only": [[0, 0]], "loc_only": [[2, 2]]},
        "conditions": {"cls_only": e(50.0, 60.0), "random_cls_only": e(80.0, 85.0),
                       "loc_only": e(40.0, 88.0), "random_loc_only": e(79.0, 89.0)},
        "effects": effects, "verdict": ha.verdict(effects),
    }  # fmt: skip
    return {"baseline": e(82.0, 90.0), "by_k": {"10": block}, "verdict": {"10": block["verdict"]["outcome"]}}


def test_findings_tables_and_results_page_state_the_verdict_beside_the_papers():
    result = _result()
    assert result["verdict"] == {"10": "supported"}
    eff = har.finding_effects("toy-llava", result, 10)
    assert "costs Loc +30.0 ± 3.0 points" in eff and "cost Cls +1.0 ± 2.0" in eff
    verdict = har.finding_verdict("toy-llava", result, 10)
    assert verdict.startswith("Recognition before localization on toy-llava: supported at k = 10")
    assert HEAD_ABLATION["claim"] in verdict and all(MODELS[m] in verdict for m in HEAD_ABLATION["models"])
    size = har.finding_sample_size("toy-llava", result, 10, 5.0)
    assert "SE 3.0 points over 100 objects" in size and "about 144 objects" in size
    summary = {"model_id": "toy-llava", "verdict_k": 10, **result}
    table = har.results_table({"toy-llava": {ha.CHAPTER: summary}})
    assert table.loc[("toy-llava", "this book"), "recognition then localization"] == "supported"
    assert table.loc[("toy-llava", "this book"), "cls-only heads on Loc"] == "+30.0 ± 3.0"
    assert [m for m, src in table.index if src == "paper"] == [MODELS[m] for m in HEAD_ABLATION["models"]]
    assert har.effects_table(result).loc[10, "verdict"] == "supported"
    assert list(har.ablation_table(result).index[0]) == [0, "none (baseline)"]
    assert HEAD_ABLATION["ks"] is None  # the paper gives no k: ours are labelled as ours


def test_a_head_ablation_reaches_generation_through_run_condition(toy_llava, tmp_path):
    """The null ablation runs its hooks and changes nothing; ablating every head changes the answers."""
    samples = vlmloc.load_coco(*vlmloc.resolve_data(None, None), limit=4, seed=0)
    store = ResultsStore(tmp_path, "toy-llava", "t")
    plain = run_condition(toy_llava, samples, "localization", store, "plain", {}, progress=False)
    every = [(la, h) for la in range(toy_llava.n_layers) for h in range(toy_llava.n_heads)]
    null = HeadAblation.null(every)
    same = run_condition(
        toy_llava, samples, "localization", store, "null", {}, progress=False,
        interventions_for=lambda chunk, layouts: [null],
    )  # fmt: skip
    assert [r["answer"] for r in same] == [r["answer"] for r in plain]
    assert null.n_calls > 0
    silenced = run_condition(
        toy_llava, samples, "localization", store, "all", {}, progress=False,
        interventions_for=lambda chunk, layouts: [HeadAblation(every)],
    )  # fmt: skip
    assert [r["answer"] for r in silenced] != [r["answer"] for r in plain]


def test_the_experiment_runs_every_set_and_its_random_matches(toy_llava, tmp_path):
    samples = vlmloc.load_coco(*vlmloc.resolve_data(None, None), limit=2, seed=0)
    means = ha.head_means(toy_llava, samples, batch_size=4)
    assert means.shape == (toy_llava.n_layers, toy_llava.n_heads, toy_llava.head_dim)
    assert torch.isfinite(means).all() and means.abs().sum() > 0
    rankings = _rankings([[0, 0], [1, 1], [4, 4]], [[1, 1], [2, 2], [5, 5]])
    params = ha.HeadAblationParams(
        config={"x": 1}, rankings=rankings, ks=[1, 2], n_draws=2, mode="mean", means=means, progress=False
    )
    exp = ha.HeadAblationExperiment(toy_llava, samples, params, ResultsStore(tmp_path, "toy-llava", "h"))
    out = exp.run_all()
    k2 = out["by_k"]["2"]
    assert k2["heads"]["cls_only"] == [[0, 0]] and k2["heads"]["loc_only"] == [[2, 2]]
    assert [sorted(la for la, _ in r) for r in k2["random_heads"]["cls_only"]] == [[0], [0]]
    assert all(tuple(h) not in {(0, 0), (1, 1), (2, 2)} for r in k2["random_heads"]["loc_only"] for h in r)
    assert set(k2["conditions"]) == {"cls_only", "random_cls_only", "loc_only", "random_loc_only"}
    assert set(k2["effects"]) == set(ha.EFFECTS.values()) and k2["effects"]["cls_heads_on_loc"]["n"] == 2
    assert out["verdict"]["2"] in ha.OUTCOMES
    assert set(exp.timings) == {"baseline", "ablation"}
    with pytest.raises(ValueError, match="mode must be"):
        ha.HeadAblationExperiment(
            toy_llava, samples, ha.HeadAblationParams(config={}, rankings=rankings, mode="x"), None
        )
    with pytest.raises(ValueError, match="mean ablation needs"):
        ha.HeadAblationExperiment(
            toy_llava, samples, ha.HeadAblationParams(config={}, rankings=rankings, mode="mean"), None
        )
