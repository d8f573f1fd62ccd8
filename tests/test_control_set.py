"""The object-removal control set, on a tiny model and synthetic scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import vlmloc
from PIL import Image
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
