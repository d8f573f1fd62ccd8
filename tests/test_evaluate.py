"""Batched evaluation: records, resuming after an interruption, config changes, scoring and summaries."""

from __future__ import annotations

import math

import pytest
from vlmloc.data import Sample, load_coco
from vlmloc.evaluate import run_condition, score, summarize
from vlmloc.store import ResultsStore


@pytest.fixture(scope="module")
def four(synthetic_coco):
    return load_coco(*synthetic_coco, limit=4, seed=0)


def _store(tmp_path, vlm):
    return ResultsStore(tmp_path, vlm.model_id, "evaluate_test")


def _count_generate(monkeypatch, vlm, fake=None):
    """Record the batch size of every vlm.generate call (optionally answering with ``fake``)."""
    calls = []
    real = vlm.generate

    def counting(enc, max_new_tokens=24, edit=None):
        calls.append(int(enc["input_ids"].shape[0]))
        if fake is not None:
            return fake(enc)
        return real(enc, max_new_tokens=max_new_tokens, edit=edit)

    monkeypatch.setattr(vlm, "generate", counting)
    return calls


def test_run_condition_writes_one_record_per_sample(tiny_llava, four, tmp_path):
    store = _store(tmp_path, tiny_llava)
    recs = run_condition(
        tiny_llava,
        four,
        "localization",
        store,
        "baseline",
        {"n": 4},
        batch_size=4,
        max_new_tokens=3,
        progress=False,
    )
    assert len(recs) == 4
    assert sorted(r["sample_id"] for r in recs) == sorted(s.sample_id for s in four)
    by_id = {s.sample_id: s for s in four}
    for r in recs:
        s = by_id[r["sample_id"]]
        assert r["category"] == s.category and r["size"] == s.size_class
        assert r["prompt"] == tiny_llava.prompt("localization", s.category)
        assert isinstance(r["answer"], str)
        parsed = tiny_llava.parse_box(r["answer"], (s.width, s.height))
        assert (r["iou"] is None) == (parsed is None) == (r["box"] is None)
    on_disk = store.condition(
        "localization-baseline", {"task": "localization", "weights": tiny_llava.fingerprint, "n": 4}
    ).records()
    assert [r["sample_id"] for r in on_disk] == [r["sample_id"] for r in recs]


def test_interrupted_run_resumes_with_the_pending_samples(tiny_llava, four, tmp_path, monkeypatch):
    store = _store(tmp_path, tiny_llava)
    seen = []

    def failing_edit_for(sample, layout):
        seen.append(sample.sample_id)
        if len(seen) > 2:  # the first sample of the second batch
            raise KeyboardInterrupt
        return None

    kw = dict(batch_size=2, max_new_tokens=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_condition(
            tiny_llava, four, "classification", store, "resume", {"k": 1}, edit_for=failing_edit_for, **kw
        )
    first = store.condition(
        "classification-resume", {"task": "classification", "weights": tiny_llava.fingerprint, "k": 1}
    ).done_ids()
    assert first == {four[0].sample_id, four[1].sample_id}

    calls = _count_generate(monkeypatch, tiny_llava)
    resumed = []
    recs = run_condition(
        tiny_llava,
        four,
        "classification",
        store,
        "resume",
        {"k": 1},
        edit_for=lambda s, lay: resumed.append(s.sample_id),
        **kw,
    )
    assert calls == [2]  # one batch: only the two pending samples were generated
    assert resumed == [four[2].sample_id, four[3].sample_id]
    ids = [r["sample_id"] for r in recs]
    assert len(ids) == 4 and set(ids) == {s.sample_id for s in four}

    calls.clear()
    again = run_condition(tiny_llava, four, "classification", store, "resume", {"k": 1}, **kw)
    assert calls == [] and len(again) == 4  # everything done: nothing runs


def test_changed_config_starts_a_fresh_log(tiny_llava, four, tmp_path, monkeypatch):
    store = _store(tmp_path, tiny_llava)
    calls = _count_generate(
        monkeypatch, tiny_llava, fake=lambda enc: ["a star"] * int(enc["input_ids"].shape[0])
    )
    kw = dict(batch_size=8, progress=False)
    run_condition(tiny_llava, four[:2], "classification", store, "cfg", {"alpha": 1}, **kw)
    assert calls == [2]
    recs = run_condition(tiny_llava, four, "classification", store, "cfg", {"alpha": 2}, **kw)
    assert calls == [2, 4]  # nothing is resumed across configurations
    assert len(recs) == 4
    old = store.condition(
        "classification-cfg", {"task": "classification", "weights": tiny_llava.fingerprint, "alpha": 1}
    )
    assert len(old.records()) == 2  # the old log is left as it was
    for r in recs:  # the fake answer names only a star
        assert r["correct"] == (r["category"] == "star")
    # only the requested samples are returned, even when the log holds more
    assert len(run_condition(tiny_llava, four[:3], "classification", store, "cfg", {"alpha": 2}, **kw)) == 3


# --------------------------------------------------------------------------- scoring and summaries


def _sample(box=(64.0, 48.0, 320.0, 400.0), size=(640, 480), category="star"):
    return Sample(1, 2, "x.png", None, category, 4, box, 1.0, size[0], size[1])


def test_score_localization_by_hand(tiny_llava):
    s = _sample()
    # LLaVA on a 640 x 480 image: 0-1 of the 640 square at y offset 80
    rec = score(tiny_llava, s, "localization", "[0.10, 0.20, 0.50, 0.75]")
    assert rec["box"] == [64.0, 48.0, 320.0, 400.0]
    assert rec["iou"] == pytest.approx(1.0)
    assert rec["box_area"] == pytest.approx(100 * 256 * 352 / (640 * 480))
    # half the width: [0.10, 0.20, 0.30, 0.75] -> x1 = 192, IoU = 128 / 256
    assert score(tiny_llava, s, "localization", "[0.10, 0.20, 0.30, 0.75]")["iou"] == pytest.approx(0.5)
    assert score(tiny_llava, s, "localization", "somewhere on the left") == {
        "box": None,
        "iou": None,
        "box_area": None,
    }


def test_score_classification():
    s = _sample(category="star")
    assert score(None, s, "classification", "I see two Stars and a circle.") == {"correct": True}
    assert score(None, s, "classification", "a starfish") == {"correct": False}


def test_summarize_classification_by_hand():
    recs = [{"correct": c} for c in (True, False, True, True)]
    out = summarize(recs, "classification")
    assert out["rate"] == pytest.approx(75.0)
    assert out["se"] == pytest.approx(100 * math.sqrt(0.75 * 0.25 / 4))
    assert out["n"] == 4


def test_summarize_localization_by_hand():
    recs = [
        {"iou": 1.0, "box_area": 10.0},
        {"iou": 0.8, "box_area": 20.0},
        {"iou": 0.6, "box_area": 30.0},
        {"iou": None, "box_area": None},
    ]
    out = summarize(recs, "localization")
    assert out["iou@0.5"] == pytest.approx(75.0)
    assert out["iou@0.7"] == pytest.approx(50.0)
    assert out["iou@0.9"] == pytest.approx(25.0)
    assert out["loc"] == pytest.approx(50.0)  # mean of 75, 50, 25
    assert out["mean_iou"] == pytest.approx(0.6)  # (1 + 0.8 + 0.6 + 0) / 4
    assert out["box_area"] == pytest.approx(20.0)  # the unparsable answer has no area
    assert out["unparsable"] == 1 and out["n"] == 4
    # per-sample Loc 1, 2/3, 1/3, 0: mean 1/2, deviations +-1/2, +-1/6
    assert out["loc_se"] == pytest.approx(100 * math.sqrt((2 * 0.5**2 + 2 * (1 / 6) ** 2) / 3 / 4))
    assert math.isnan(summarize([{"iou": None, "box_area": None}], "localization")["box_area"])
