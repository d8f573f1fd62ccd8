"""The object-removal control set and the chapter tables, on a tiny model and hand-made records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import vlmloc
from PIL import Image
from vlmloc import report
from vlmloc.control_set import build_control_set, load_pairs, preview_pairs
from vlmloc.store import ResultsStore


@pytest.fixture(scope="module")
def samples(synthetic_coco):
    ann, images = synthetic_coco
    return vlmloc.load_coco(ann, images, limit=6, seed=0)


class _CountingInpainter:
    """Paints the hole black and counts its calls (the method name is what the manifest records)."""

    method = "black"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image, mask, dilate=3):
        self.calls += 1
        rgb = np.asarray(image).copy()
        rgb[mask] = 0
        return Image.fromarray(rgb), self.method


def test_build_control_set_writes_images_manifest_and_flags(tiny_llava, samples, tmp_path):
    original = [{"sample_id": s.sample_id, "correct": i % 2 == 0} for i, s in enumerate(samples)]
    store = ResultsStore(tmp_path, tiny_llava.model_id, "ch1")
    paint = _CountingInpainter()
    cs = build_control_set(
        tiny_llava, samples, original, store, tmp_path, {"n": 6}, batch_size=4, inpainter=paint
    )

    candidates = [s for i, s in enumerate(samples) if i % 2 == 0]
    assert cs.n_candidates == len(candidates) == paint.calls
    assert cs.method == "black"
    assert cs.manifest == tmp_path / tiny_llava.model_id / "control_set" / "pairs.json"
    named = {r["sample_id"] for r in cs.records if r["correct"]}
    assert [p["kept"] for p in cs.pairs] == [s.sample_id not in named for s in candidates]
    assert cs.n_images == len({p["image_id"] for p in cs.pairs if p["kept"]})

    doc = json.loads(cs.manifest.read_text())
    assert doc["info"]["method"] == "black" and doc["info"]["model_id"] == tiny_llava.model_id
    row = doc["pairs"][0]
    assert set(row) >= {"sample_id", "original", "inpainted", "category", "box", "kept"}
    assert not Path(row["inpainted"]).is_absolute(), "inpainted paths are relative to the manifest"
    for p, s in zip(load_pairs(cs.manifest, kept_only=False), candidates, strict=True):
        inp = Image.open(p["inpainted"])
        assert inp.size == (s.width, s.height), "same size, so the same token layout"
        assert np.asarray(inp)[s.mask()].max() == 0
        assert Path(p["original"]) == s.image_path.resolve()
    assert len(load_pairs(cs.manifest)) == cs.n_kept

    again = build_control_set(
        tiny_llava, samples, original, store, tmp_path, {"n": 6}, batch_size=4, inpainter=paint
    )
    assert paint.calls == len(candidates), "a rerun with the same method reuses the inpainted images"
    assert again.pairs == cs.pairs


def test_no_candidates_gives_an_empty_control_set(tiny_llava, samples, tmp_path):
    store = ResultsStore(tmp_path, tiny_llava.model_id, "ch1")
    original = [{"sample_id": s.sample_id, "correct": False} for s in samples]
    cs = build_control_set(tiny_llava, samples, original, store, tmp_path, {"n": 6})
    assert (cs.n_candidates, cs.n_kept, cs.n_images) == (0, 0, 0)
    assert cs.summary()["method"] in ("lama", "opencv-telea")
    assert json.loads(cs.manifest.read_text())["pairs"] == []


def test_preview_pairs_writes_nothing(samples, monkeypatch, tmp_path):
    monkeypatch.delenv("LAMA_MODEL", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    pairs = preview_pairs(samples, n=2)
    assert len(pairs) == 2 and pairs[0]["method"] == "opencv-telea"
    assert pairs[0]["inpainted"].size == pairs[0]["original"].size


def test_load_pairs_names_the_chapter_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="01_data_and_baselines"):
        load_pairs(tmp_path / "pairs.json")


# --------------------------------------------------------------------------- tables


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
    b = report.baseline_summary(_records())
    # IoU >= .5: 2/4, >= .7: 1/4, >= .9: 1/4 -> Loc = (50 + 25 + 25) / 3
    assert b["loc"] == pytest.approx(100 / 3)
    assert b["cls"] == 75.0 and b["n"] == 4 and b["unparsable"] == 1
    table = report.baseline_table("toy-llava", b)
    assert list(table.index) == ["toy-llava (this run)", "LLaVA-1.5-7B (paper)", "InternVL-3.5-8B (paper)"]
    assert table.loc["LLaVA-1.5-7B (paper)", "Loc %"] == 35.34
    assert table.loc["InternVL-3.5-8B (paper)", "Cls %"] == 83.30


def test_by_size_keeps_only_present_classes_in_order():
    t = report.by_size(_records())
    assert list(t.index) == ["small", "large"]
    assert t.loc["small", "Cls %"] == 50.0 and t.loc["large", "n"] == 2


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
    got = report.collect_summaries(tmp_path)
    assert set(got["toy-llava"]["_errors"]) == {"03_broken.json"}
    assert set(got["toy-llava"]) == {"01_data_and_baselines", "02_containerization", "_errors"}
    head = report.headline_table(got)
    assert list(head["source"]) == ["this book", "paper", "paper"]
    cond = report.condition_table(got, "02_containerization").set_index("condition")
    assert cond.loc["ablation.object_tokens", "LLaVA-1.5-7B Loc (paper)"] == 5.92
    assert cond.loc["ablation.object_tokens", "InternVL-3.5-8B Loc (paper)"] == 11.27
    assert report.condition_table(got, "03_missing").empty
    assert report.collect_summaries(tmp_path / "nothing") == {}


def test_findings_are_phrased_from_the_numbers():
    recs = _records()
    b = report.baseline_summary(recs)
    assert "Loc 33.3% ± " in report.finding_baseline("toy-llava", b)
    assert "harder than classification here, as for both paper models" in report.finding_baseline("m", b)
    assert "1 of 4 answers contained no box" in report.finding_iou(b, recs["localization"])
    assert report.finding_gallery(recs["localization"], ["1", "2", "4"]).startswith(
        "Of the 3 objects shown, 1 get a box with IoU ≥ 0.5, 1 a box that misses by more, and 1 no box"
    )
    sizes = report.finding_sizes(report.by_size(recs))
    assert "best on small objects" in sizes and "worst on large" in sizes
    zero = {"n_candidates": 0, "n_kept": 0, "n_images": 0, "method": "opencv-telea"}
    assert "classified none of the 7 objects" in report.finding_control("m", zero, 7)
    some = {"n_candidates": 4, "n_kept": 1, "n_images": 1, "method": "lama"}
    assert "1 of the 4 objects" in report.finding_control("m", some, 7) and "2,248" in report.finding_control(
        "m", some, 7
    )


def test_condition_table_maps_chapter2_keys_to_the_paper(tmp_path):
    from vlmloc.store import write_summary

    write_summary(tmp_path, "toy-llava", "02_containerization",
                  {"model_id": "toy-llava", "baseline": {"loc": 30.0, "cls": 50.0},
                   "ablation": {"object": {"loc": 1.0, "cls": 2.0}, "object+2": {"loc": 0.5, "cls": 1.0}},
                   "shuffle": {"global": {"loc": 2.0, "cls": 60.0}, "intra_object": {"loc": 29.0, "cls": 50.0}}})  # fmt: skip
    t = report.condition_table(report.collect_summaries(tmp_path), "02_containerization").set_index(
        "condition"
    )
    assert t.loc["ablation.object", "LLaVA-1.5-7B Loc (paper)"] == 5.92
    assert t.loc["ablation.object+2", "LLaVA-1.5-7B Cls (paper)"] == 10.59
    assert t.loc["shuffle.intra_object", "LLaVA-1.5-7B Loc (paper)"] == 35.30
    assert t.loc["baseline", "InternVL-3.5-8B Loc (paper)"] == 72.64
