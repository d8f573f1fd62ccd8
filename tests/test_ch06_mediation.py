"""Chapter 6: the mediation pairs, MF maps and their statistics, the runner, its controls, and the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import vlmloc
from vlmloc import gpu_cost, stats
from vlmloc import mediation_maps as mm
from vlmloc.control_set import MediationPair, mediation_pairs
from vlmloc.experiments import ch06_mediation as md
from vlmloc.families import TASKS
from vlmloc.inpaint import inpaint
from vlmloc.paper import INTERNVL_8B, LLAVA_7B, MEDIATION_LAYERS, MODELS, N_HEADS, N_LAYERS
from vlmloc.report import ch06 as mr
from vlmloc.sweeps import head_patch_scores

# --------------------------------------------------------------------------- fixtures


def _pairs(tmp_path, synthetic_coco, n: int = 4) -> list[MediationPair]:
    """Synthetic objects and their inpainted twins, written like chapter 1's control set."""
    ann, images = synthetic_coco
    out = []
    for s in vlmloc.load_coco(ann, images, limit=n, seed=0):
        filled, _ = inpaint(s.load_image(), s.mask())
        path = tmp_path / f"{s.image_id}_{s.ann_id}.png"
        filled.save(path)
        out.append(MediationPair(s.sample_id, s.category, tuple(s.box), str(s.image_path), str(path)))
    return out


def _records(p_src, p_base, patched):
    return {
        str(i): {"p_src": s, "p_base": b, "p_patched": list(p)}
        for i, (s, b, p) in enumerate(zip(p_src, p_base, patched, strict=True))
    }


# --------------------------------------------------------------------------- aggregation


def test_mf_is_one_at_the_source_and_zero_at_the_base():
    rec = _records([2.0], [10.0], [[2.0, 10.0, 6.0, 14.0]])
    res = mm.aggregate(rec, 2, 2)
    assert res.mean.tolist() == [[1.0, 0.0], [0.5, -0.5]]
    assert res.counts() == {"used": 1, "dropped": 0, "near_zero": 0, "reversed": 0}


def test_pairs_with_a_near_zero_or_reversed_denominator_are_dropped_and_counted():
    rec = _records([2.0, 2.0, 10.0, 2.0], [10.0, 2.05, 2.0, 4.0], [[6.0]] * 4)
    res = mm.aggregate(rec, 1, 1, min_rel_gap=0.05)
    assert res.used == ["0", "3"] and res.dropped == ["1"] and res.reversed == ["2"]
    assert res.counts() == {"used": 2, "dropped": 2, "near_zero": 1, "reversed": 1}
    assert res.mean[0, 0] == pytest.approx(np.mean([0.5, -1.0]))
    kept = mm.aggregate(rec, 1, 1, min_rel_gap=0.05, drop_reversed=False)
    assert kept.used == ["0", "2", "3"]
    assert kept.per_pair[1, 0, 0] == pytest.approx((2.0 - 6.0) / (2.0 - 10.0))  # MF keeps its formula
    assert mm.aggregate(rec, 1, 1, min_rel_gap=0.0, drop_reversed=False).counts()["used"] == 4


def test_attribution_estimates_are_mapped_through_the_exponential():
    rec = {"a": {"p_src": 1.0, "p_base": 4.0, "dlogp": [0.0, math.log(4.0)]}}
    res = mm.attribution_mf(rec, 1, 2)
    assert res.mean[0].tolist() == pytest.approx([0.0, 1.0])  # dlogp = log(P_base / P_src): all of it


def test_the_mismatched_control_uses_the_real_pairs_denominator():
    real = _records([1.0], [5.0], [[3.0]])
    mis = {"0": {"p_base": 5.0, "p_patched": [4.0]}}
    assert mm.aggregate(mis, 1, 1, denominators=real).mean[0, 0] == pytest.approx(0.25)


def test_top_heads_overlap_and_chance():
    mf = np.array([[0.1, 0.9, np.nan], [0.5, 0.5, -1.0]])
    assert mm.top_heads(mf, 3) == [[0, 1], [1, 0], [1, 1]]  # ties: lower layer/head first; NaN last
    assert mm.overlap([[0, 1], [1, 0]], [[1, 0], [2, 2]]) == [[1, 0]]
    assert stats.chance_overlap(10, 64) == pytest.approx(100 / 64)
    k, n = 10, 64
    probs = [stats.overlap_p_value(i, k, n) - stats.overlap_p_value(i + 1, k, n) for i in range(k + 1)]
    assert stats.overlap_p_value(0, k, n) == pytest.approx(1.0)
    assert sum(i * p for i, p in enumerate(probs)) == pytest.approx(stats.chance_overlap(k, n))


def test_sparsity_of_a_uniform_and_a_one_hot_map():
    flat = np.ones((4, 4))
    s = stats.sparsity(flat, (1, 4))
    assert s["top1"] == pytest.approx(s["uniform1"]) and s["top4"] == pytest.approx(25.0)
    one = np.zeros((4, 4))
    one[2, 3] = 0.7
    one[0, 0] = -5.0  # negative MF carries none of the effect
    assert stats.sparsity(one, (1,))["top1"] == pytest.approx(100.0)
    curve = stats.cumulative_share(flat)
    assert curve[-1] == pytest.approx(100.0) and np.all(np.diff(curve) >= 0)


def test_spearman():
    a = np.arange(10.0)
    assert stats.spearman(a, a**3) == pytest.approx(1.0)
    assert stats.spearman(a, -a) == pytest.approx(-1.0)
    assert stats.spearman(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(
        np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
    )


# --------------------------------------------------------------------------- the experiment


def test_exact_sweep_resumes_and_base_into_base_is_a_null_edit(
    toy_llava, tmp_path, synthetic_coco, monkeypatch
):
    pairs = _pairs(tmp_path, synthetic_coco, 3)
    store = vlmloc.store.ResultsStore(tmp_path / "results", "toy-llava", "06_mediation")
    params = md.MediationParams({"model": "x"}, batch_size=16, progress=False)
    exp = md.Mediation(toy_llava, pairs[:2], params, store)
    first = exp.exact("localization")
    assert list(first) == [p.sample_id for p in pairs[:2]]
    rec = first[pairs[0].sample_id]
    assert len(rec["p_patched"]) == toy_llava.n_layers * toy_llava.n_heads and rec["seconds"] > 0

    calls = []
    real = md.head_patch_scores
    monkeypatch.setattr(md, "head_patch_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = md.Mediation(toy_llava, pairs, params, store).exact("localization")
    assert len(calls) == 1, "only the new pair is swept; the others come from the store"
    assert again[pairs[0].sample_id] == rec

    null = exp.base_into_base("classification")
    assert null["loop_exact"] and null["loop_max_abs_mf"] == 0.0
    # float rounding only; MF itself divides this by the pair's gap, which can be small
    assert null["batched_max_rel_change"] < 1e-5


def test_mismatched_source_is_another_class_with_the_same_layout(toy_internvl, tmp_path, synthetic_coco):
    pairs = _pairs(tmp_path, synthetic_coco, 8)
    exp = md.Mediation(toy_internvl, pairs, md.MediationParams({}, progress=False), None)
    found = 0
    for p in pairs:
        other = exp.mismatched_source(p, "localization")
        if other is None:
            continue
        found += 1
        assert other.category != p.category and other.sample_id != p.sample_id
        src, base, _ = p.encode(toy_internvl, "localization", source_image=other.images()[0])
        assert torch.equal(src["input_ids"], base["input_ids"])
    assert found > 0


def test_mismatched_sources_never_share_the_original_image(toy_llava, tmp_path, synthetic_coco):
    """On COCO one image holds several objects: a source from the same scene is no stranger."""
    pairs = _pairs(tmp_path, synthetic_coco, 8)
    twin = MediationPair(f"{pairs[0].image_id}:999999", "no-such-class", pairs[0].box, pairs[0].original,
                            pairs[0].inpainted)  # fmt: skip
    exp = md.Mediation(toy_llava, [pairs[0], twin, *pairs[1:]], md.MediationParams({}, progress=False), None)
    for p in exp.pairs:
        other = exp.mismatched_source(p, "localization")
        assert other is None or other.image_id != p.image_id
    assert exp.mismatched_source(pairs[0], "localization") is not twin  # the very next pair, skipped
    data = exp.ranking_data({"localization": {pairs[0].sample_id: {"source_id": pairs[2].sample_id}}})
    assert set(data["objects"]) == {p.sample_id for p in exp.pairs}
    assert data["images"] == sorted({p.image_id for p in exp.pairs})


def test_patching_every_position_is_exact_when_null_and_reaches_the_image(
    toy_llava, tmp_path, synthetic_coco
):
    pair = _pairs(tmp_path, synthetic_coco, 1)[0]
    src, base, answer = pair.encode(toy_llava, "localization")
    heads = [(0, h) for h in range(toy_llava.n_heads)]
    null = head_patch_scores(toy_llava, base, base, answer, "localization", heads=heads, positions="all")
    assert torch.equal(null.patched.logprob, null.base.logprob.expand(len(heads)))
    after = head_patch_scores(toy_llava, src, base, answer, "localization", heads=heads)
    every = head_patch_scores(toy_llava, src, base, answer, "localization", heads=heads, positions="all")
    # layer 0's heads at the image positions change what every later position reads: the settings differ
    assert not torch.allclose(after.patched.logprob, every.patched.logprob, atol=1e-4)
    assert torch.allclose(after.source.logprob, every.source.logprob, atol=1e-5)
    with pytest.raises(ValueError, match="patch positions must be one of"):
        head_patch_scores(toy_llava, src, base, answer, "localization", heads=heads, positions="image")
    with pytest.raises(ValueError, match="patch positions must be one of"):
        md.MediationParams({}, patch_positions="everywhere")


def test_missing_control_set_names_the_command(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="chapters run --chapters 01_data_and_baselines --models toy-llava"
    ):
        mediation_pairs(tmp_path, "toy-llava", 5)


# --------------------------------------------------------------------------- report and cost model


def test_the_paper_band_is_the_papers_layers_on_its_own_models():
    for model, family in ((LLAVA_7B, "llava"), (INTERNVL_8B, "internvl")):
        first, last = MEDIATION_LAYERS[model]
        assert mr.paper_band(family, N_LAYERS[model]) == list(range(first, last + 1))
    assert mr.paper_band("llava", 8) == [2, 3, 4]  # LLaVA's band (about 34-53% of depth) on 8 layers
    assert mr.paper_band("nope", 8) == []


def test_cost_model_orders_the_methods_and_respects_memory(toy_llava):
    table = gpu_cost.cost_table(gpu_cost.H100, n_pairs=50)
    for model in (MODELS[LLAVA_7B], MODELS[INTERNVL_8B]):
        t = table.loc[model]
        assert t.loc["exact sweep", "TFLOP"] > 10 * t.loc["exact, prefix reused", "TFLOP"]
        assert t.loc["exact, prefix reused", "TFLOP"] > t.loc["attribution patching", "TFLOP"]
        assert t.loc["exact, prefix reused", "batch"] <= 32
        assert (t["GPU hours"] > 0).all()
    small = gpu_cost.cost_table(gpu_cost.GPU("small", 24, 100, 1.0))
    assert (small["batch"] <= table["batch"]).all()
    g = gpu_cost.REAL_GEOMETRIES[LLAVA_7B]
    # one full forward of LLaVA-1.5-7B's decoder: ~2 x 6.5e9 parameters x ~630 tokens
    assert 7e12 < g.decoder_flops(g.prefix + 50, 0, logits=False) < 1e13
    toy = gpu_cost.geometry_of(toy_llava, prefix=150, suffix={"classification": 5, "localization": 13})
    assert toy.layers == 8 and toy.heads == 8 and toy.head_dim == toy_llava.head_dim
    rows = gpu_cost.toy_cost_table(toy, {"attribution patching": 2.0}, 10, 64)
    assert rows.loc[(toy.name, "attribution patching"), "GFLOP/s"] > 0


def test_findings_name_the_model_and_the_paper():
    res = mm.aggregate(_records([1.0, 1.0], [5.0, 9.0], [[1.0] + [5.0] * 15, [2.0] + [9.0] * 15]), 4, 4)
    text = mr.finding_map("toy-llava", "llava", "localization", res)
    first, last = MEDIATION_LAYERS[LLAVA_7B]
    assert (
        "toy-llava" in text and f"{MODELS[LLAVA_7B]}, layers {first}-{last} of {N_LAYERS[LLAVA_7B]}" in text
    )
    tops = {"classification": [[0, 0], [1, 1]], "localization": [[0, 0], [2, 2]]}
    text = mr.finding_overlap("toy-internvl", "internvl", tops, 64)
    heads = N_LAYERS[INTERNVL_8B] * N_HEADS[INTERNVL_8B]
    assert "share 1 (L0.H0)" in text and f"{MODELS[INTERNVL_8B]}'s {heads:,} heads" in text
    assert "top 1, 5 and 10" in mr.finding_sparsity("toy-llava", {"localization": res})


def test_results_table_puts_each_model_beside_the_papers():
    mf = np.zeros((8, 8))
    mf[2:4, :5] = 1.0  # the top 10: five heads in each of layers 2 and 3
    summary = {
        "model_id": "toy-llava", "n_layers": 8, "n_heads": 8, "paper_band": [2, 3, 4],
        "top10": {t: mm.top_heads(mf, 10) for t in TASKS},
        "sparsity": {t: stats.sparsity(mf) for t in TASKS},
        "attribution": {t: {"spearman": 0.5, "top10_overlap": 3} for t in TASKS},
        "n_pairs": {t: {"used": 5, "dropped": 1} for t in TASKS},
        "overlap": 2, "overlap_chance": stats.chance_overlap(10, 64),
    }  # fmt: skip
    table = mr.results_table({"toy-llava": {md.CHAPTER: summary}, "other": {}})
    assert list(table.index) == [
        ("toy-llava", "this book"),
        *((MODELS[m], "paper") for m in MEDIATION_LAYERS),
    ]
    assert table.loc[("toy-llava", "this book"), "in band (loc)"] == 10
    assert table.loc[("toy-llava", "this book"), "top-10 layers (cls)"] == "2, 3"
    first, last = MEDIATION_LAYERS[LLAVA_7B]
    assert table.loc[(MODELS[LLAVA_7B], "paper"), "paper band"] == f"{first}-{last}"
