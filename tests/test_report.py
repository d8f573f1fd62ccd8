"""Chapter tables and findings (vlmloc.report), on hand-made records and summaries.

Every paper number a test expects is read from vlmloc.paper, never typed here.
"""

from __future__ import annotations

import pandas as pd
import pytest
from vlmloc.experiments.base import by_size
from vlmloc.experiments.ch01_baselines import baseline_summary
from vlmloc.paper import CONTROL_SET, INTERNVL_8B, LLAVA_7B, MODELS, RESULTS, SUMMARY_CONDITIONS
from vlmloc.report import ch01, summary


def _paper(model: str, condition: str) -> float:
    return RESULTS[model][condition]["loc"]


def _records():
    loc = [
        {"sample_id": "1", "size": "small", "iou": 0.95, "box_area": 1.0},
        {"sample_id": "2", "size": "small", "iou": None, "box_area": None},
        {"sample_id": "3", "size": "large", "iou": 0.6, "box_area": 2.0},
        {"sample_id": "4", "size": "large", "iou": 0.1, "box_area": 3.0},
    ]
    cls = [{"sample_id": str(i), "size": s, "correct": c} for i, (s, c) in enumerate(
        [("small", True), ("small", False), ("large", True), ("large", True)], 1)]  # fmt: skip
    return {"localization": loc, "classification": cls}


def test_baseline_summary_and_table():
    b = baseline_summary(_records())
    # IoU >= .5: 2/4, >= .7: 1/4, >= .9: 1/4 -> Loc = (50 + 25 + 25) / 3
    assert b["loc"] == pytest.approx(100 / 3)
    assert b["cls"] == 75.0 and b["n"] == 4 and b["unparsable"] == 1
    table = ch01.baseline_table("toy-llava", b)
    assert list(table.index) == ["toy-llava (this run)", *(f"{name} (paper)" for name in MODELS.values())]
    assert table.loc["LLaVA-1.5-7B (paper)", "Loc %"] == RESULTS[LLAVA_7B]["baseline"]["loc"]
    assert table.loc["InternVL-3.5-8B (paper)", "Cls %"] == RESULTS[INTERNVL_8B]["baseline"]["cls"]


def test_collect_and_summary_tables(tmp_path):
    from vlmloc.store import write_summary

    write_summary(tmp_path, "toy-llava", "01_data_and_baselines",
                  {"model_id": "toy-llava", "n_samples": 3, "baseline": {"loc": 10.0, "cls": 20.0},
                   "control_set": {"n_kept": 1, "method": "opencv-telea"}})  # fmt: skip
    write_summary(tmp_path, "toy-llava", "02_containerization",
                  {"model_id": "toy-llava", "ablation": {"object_tokens": {"loc": 1.0, "cls": 2.0}},
                   "shuffle": {"intra_object": {"loc": 9.0}}})  # fmt: skip
    (tmp_path / "toy-llava" / "03_broken.json").write_text("{")
    (tmp_path / "toy-llava" / "mean_visual_embedding.json").write_text('{"weights": "abc"}')  # a sidecar
    got = summary.collect_summaries(tmp_path)
    assert set(got["toy-llava"]["_errors"]) == {"03_broken.json"}
    assert set(got["toy-llava"]) == {"01_data_and_baselines", "02_containerization", "_errors"}
    head = summary.headline_table(got)
    assert list(head["source"]) == ["this book", "paper", "paper"]
    cond = summary.condition_table(got, "02_containerization").set_index("condition")
    assert cond.loc["ablation.object_tokens", "LLaVA-1.5-7B Loc (paper)"] == _paper(LLAVA_7B, "object_tokens")
    assert cond.loc["ablation.object_tokens", "InternVL-3.5-8B Loc (paper)"] == _paper(
        INTERNVL_8B, "object_tokens"
    )
    assert summary.condition_table(got, "03_missing").empty
    assert summary.collect_summaries(tmp_path / "nothing") == {}
    ours = head[head["source"] == "this book"]
    finding = summary.finding_headline(ours)
    assert "`toy-llava` localizes best with Loc 10.0%" in finding
    assert all(
        f"{RESULTS[m]['baseline']['loc']:.2f} / {RESULTS[m]['baseline']['cls']:.2f}" in finding
        for m in MODELS
    )


def test_findings_are_phrased_from_the_numbers():
    recs = _records()
    b = baseline_summary(recs)
    assert "Loc 33.3% ± " in ch01.finding_baseline("toy-llava", b)
    assert "harder than classification here, as for both paper models" in ch01.finding_baseline("m", b)
    assert all(f"{RESULTS[m]['baseline']['loc']:.2f}" in ch01.finding_baseline("m", b) for m in MODELS)
    assert "1 of 4 answers contained no box" in ch01.finding_iou(b, recs["localization"])
    assert ch01.finding_gallery(recs["localization"], ["1", "2", "4"]).startswith(
        "Of the 3 objects shown, 1 get a box with IoU ≥ 0.5, 1 a box that misses by more, and 1 no box"
    )
    sizes = ch01.finding_sizes(by_size(recs))
    assert "best on small objects" in sizes and "worst on large" in sizes
    zero = {"n_candidates": 0, "n_kept": 0, "n_images": 0, "method": "opencv-telea"}
    assert "classified none of the 7 objects" in ch01.finding_control("m", zero, 7)
    some = {"n_candidates": 4, "n_kept": 1, "n_images": 1, "method": "lama"}
    assert "1 of the 4 objects" in ch01.finding_control("m", some, 7)
    assert f"{CONTROL_SET['n_kept']:,}" in ch01.finding_control("m", some, 7)


def test_condition_table_maps_chapter2_keys_to_the_paper(tmp_path):
    from vlmloc.store import write_summary

    write_summary(tmp_path, "toy-llava", "02_containerization",
                  {"model_id": "toy-llava", "baseline": {"loc": 30.0, "cls": 50.0},
                   "ablation": {"object": {"loc": 1.0, "cls": 2.0}, "object+2": {"loc": 0.5, "cls": 1.0}},
                   "shuffle": {"global": {"loc": 2.0, "cls": 60.0}, "intra_object": {"loc": 29.0, "cls": 50.0}}})  # fmt: skip
    t = summary.condition_table(summary.collect_summaries(tmp_path), "02_containerization").set_index(
        "condition"
    )
    for key, paper_name in SUMMARY_CONDITIONS.items():
        if key in t.index:
            for model, name in MODELS.items():
                for rate in ("loc", "cls"):
                    expected = (RESULTS[model].get(paper_name) or {}).get(rate)
                    got = t.loc[key, f"{name} {rate.capitalize()} (paper)"]
                    assert got == expected or (expected is None and pd.isna(got)), (key, model, rate)
    assert set(t.index) == {
        "baseline",
        "ablation.object",
        "ablation.object+2",
        "shuffle.global",
        "shuffle.intra_object",
    }


def test_chapter4_tower_finding_says_which_way_accuracy_moves_and_when_it_is_at_chance():
    from vlmloc.report.ch04 import tower_finding

    def summary(first, last):
        def site(layer: int, acc: float) -> dict:
            return {"stage": "tower", "layer": layer, "row_acc": acc, "col_acc": acc, "grid": [24, 24]}

        return {"model_id": "toy", "tower_chance": {"row": 4.2}, "sites": [site(0, first), site(3, last)]}

    near = tower_finding(summary(4.8, 5.8))
    assert "rises from 4.8%" in near and "almost no position" in near
    assert "falls from 75.6%" in tower_finding(summary(75.6, 47.6))


def test_chapter4_axis_finding_gives_the_familys_reason_for_rows_beating_columns():
    from vlmloc.report.ch04 import axis_finding

    def summary(row, col):
        best = {"site": "llm.6", "row_acc": row, "col_acc": col, "cell_acc": 20.0}
        return {"model_id": "toy", "peaks": {"llm": best}, "chance": {"row": 8.3, "col": 8.3, "cell": 0.69}}

    assert "1-D sequence gives its row" in axis_finding(summary(71.9, 35.9))
    assert "1-D sequence gives its row" in axis_finding(summary(71.9, 35.9), "internvl")
    qwen = axis_finding(summary(71.9, 35.9), "qwen2_5_vl")
    assert "M-RoPE" in qwen and "1-D" not in qwen
    assert axis_finding(summary(40.0, 38.0), "qwen2_5_vl").count("alike") == 1  # no reason without a gap
