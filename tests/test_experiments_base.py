"""The shared experiment runner: seeds, timings, Loc/Cls summaries, by-size splits, hooks and resuming.

Most tests replace :func:`vlmloc.evaluate.run_condition` with a stand-in that returns hand-made
records, so they check the runner's bookkeeping in milliseconds; one runs the tiny LLaVA for real
to check that a second experiment resumes the first one's records instead of generating again.
"""

from __future__ import annotations

import numpy as np
import pytest
import vlmloc
from vlmloc.evaluate import summarize
from vlmloc.experiments import base
from vlmloc.experiments.base import Experiment, RunParams, Timings, by_size, rate, sample_rng, with_change
from vlmloc.families import TASKS
from vlmloc.store import ResultsStore, config_key


def _records(task: str, n_small: int = 2, n_large: int = 2) -> list[dict]:
    """Records of one task: the first object of each size class right, the others wrong."""
    sizes = ["small"] * n_small + ["large"] * n_large
    first = {i for i, s in enumerate(sizes) if sizes.index(s) == i}
    if task == "classification":
        return [{"sample_id": str(i), "size": s, "correct": i in first} for i, s in enumerate(sizes)]
    return [
        {"sample_id": str(i), "size": s, "iou": 0.95 if i in first else None, "box_area": 1.0}
        for i, s in enumerate(sizes)
    ]


class _FakeRun:
    """Stands in for run_condition: records every call, returns hand-made records, advances a clock."""

    def __init__(self, clock: list[float], seconds: float = 2.0) -> None:
        self.calls: list[dict] = []
        self.clock, self.seconds = clock, seconds

    def __call__(self, vlm, samples, task, store, condition, config, **kwargs):
        self.calls.append({"task": task, "condition": condition, "config": config, **kwargs})
        self.clock[0] += self.seconds
        return _records(task)


@pytest.fixture
def fake(monkeypatch):
    clock = [0.0]
    run = _FakeRun(clock)
    monkeypatch.setattr(base, "run_condition", run)
    monkeypatch.setattr(base.time, "perf_counter", lambda: clock[0])
    return run


def _experiment(tmp_path, **params) -> Experiment:
    samples = [object()]  # the stand-in never looks at them
    store = ResultsStore(tmp_path, "m", "chapter")
    return Experiment(None, samples, RunParams(config={"seed": 0}, **params), store)


def test_sample_rng_depends_on_seed_tag_and_sample_only():
    a = sample_rng(0, "random", "1:2").integers(1000, size=5)
    b = sample_rng(0, "random", "1:2").integers(1000, size=5)
    c = sample_rng(0, "random", "1:3").integers(1000, size=5)
    d = sample_rng(1, "random", "1:2").integers(1000, size=5)
    e = sample_rng(0, "shuffle", "1:2").integers(1000, size=5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d) and not np.array_equal(a, e)


def test_timings_add_up_over_calls(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(base.time, "perf_counter", lambda: clock[0])
    t = Timings()
    for seconds in (1.5, 2.0):
        with t.timed("ablation"):
            clock[0] += seconds
    with t.timed("shuffle"):
        clock[0] += 0.25
    assert t["ablation"] == 1.5 + 2.0 and t["shuffle"] == 0.25
    assert t.rounded() == {"ablation": round(3.5, 1), "shuffle": round(0.25, 1)}
    with pytest.raises(RuntimeError), t.timed("shuffle"):  # a failed part still counts its time
        clock[0] += 1.0
        raise RuntimeError
    assert t["shuffle"] == 0.25 + 1.0


def test_run_passes_hooks_and_config_through_in_one_call(fake, tmp_path):
    exp = _experiment(tmp_path, batch_size=3, max_new_tokens=7)

    def edit_for(sample, layout):
        return None

    def interventions_for(sample, layout):  # a hook run_condition may accept later
        return []

    recs = exp.run(
        "knockout",
        "localization",
        False,
        {"window": 2},
        edit_for=edit_for,
        interventions_for=interventions_for,
    )
    (call,) = fake.calls
    assert call["edit_for"] is edit_for and call["interventions_for"] is interventions_for
    assert call["config"] == {"seed": 0, "window": 2, "max_new_tokens": 7}
    assert call["batch_size"] == 3 and call["max_new_tokens"] == 7 and call["progress"] is False
    assert exp.records[("knockout", "localization")] == recs
    exp.run("baseline", "classification", False)
    assert "edit_for" not in fake.calls[-1], "a condition without hooks is the unedited model"


def test_baseline_runs_once_and_its_time_adds_up(fake, tmp_path):
    exp = _experiment(tmp_path)
    first = exp.baseline(progress=False)
    again = exp.baseline(progress=False)
    assert first == again
    assert [(c["condition"], c["task"]) for c in fake.calls] == [("baseline", t) for t in TASKS]
    assert exp.timings["baseline"] == 2 * fake.seconds  # two tasks, the second call ran nothing


def test_loc_cls_and_change_from_the_baseline(fake, tmp_path):
    exp = _experiment(tmp_path)
    base_entry = exp.baseline(progress=False)
    loc = summarize(_records("localization"), "localization")
    cls = summarize(_records("classification"), "classification")
    assert base_entry["loc"] == rate(loc["loc"]) and base_entry["loc_se"] == rate(loc["loc_se"])
    assert base_entry["cls"] == rate(cls["rate"]) and base_entry["cls_se"] == rate(cls["se"])
    assert base_entry["n"] == len(_records("localization")) and base_entry["unparsable"] == loc["unparsable"]
    entry = exp.run_both("edited", progress=False)
    changed = with_change({**entry, "loc": entry["loc"] - 10.0, "cls": entry["cls"] + 5.0}, base_entry)
    assert changed["d_loc"] == rate(-10.0) and changed["d_cls"] == rate(5.0)


def test_by_size_splits_any_condition_in_size_order(fake, tmp_path):
    exp = _experiment(tmp_path)
    exp.run_both("edited", progress=False)
    table = exp.by_size("edited")
    assert list(table.index) == ["small", "large"]  # medium is absent, small comes first
    small = [r for r in _records("classification") if r["size"] == "small"]
    assert table.loc["small", "Cls %"] == round(summarize(small, "classification")["rate"], 2)
    assert table.loc["large", "n"] == len([r for r in _records("localization") if r["size"] == "large"])
    assert by_size({"localization": [], "classification": []}).empty


def test_an_experiment_needs_samples(tmp_path):
    with pytest.raises(ValueError, match="at least one sample"):
        Experiment(None, [], RunParams(config={}), ResultsStore(tmp_path, "m", "chapter"))


def test_a_second_experiment_resumes_the_stored_records(tiny_llava, synthetic_coco, tmp_path, monkeypatch):
    samples = vlmloc.load_coco(*synthetic_coco, limit=2)
    store = ResultsStore(tmp_path, tiny_llava.model_id, "chapter")
    params = RunParams(config={"n_samples": 2}, batch_size=2, max_new_tokens=4)
    first = Experiment(tiny_llava, samples, params, store)
    entry = first.baseline(progress=False)

    calls = []
    generate = tiny_llava.generate
    monkeypatch.setattr(
        tiny_llava, "generate", lambda enc, **kw: calls.append(len(enc["input_ids"])) or generate(enc, **kw)
    )
    again = Experiment(tiny_llava, samples, params, store)
    assert again.baseline(progress=False) == entry and calls == []
    assert again.task_records("baseline") == first.task_records("baseline")

    other = RunParams(config={"n_samples": 2, "changed": True}, batch_size=2, max_new_tokens=4)
    Experiment(tiny_llava, samples, other, store).baseline(progress=False)
    assert calls == [2, 2], "a changed config must not reuse the stored records"


def test_a_subset_run_returns_its_records_but_keeps_none(fake, tmp_path):
    exp = _experiment(tmp_path)
    recs = exp.run("knockout", "localization", False, {"window": 2}, samples=["one batch"])
    assert recs == _records("localization") and ("knockout", "localization") not in exp.records
    exp.run("knockout", "localization", False, {"window": 2})
    assert ("knockout", "localization") in exp.records


class _Toy:
    """What :meth:`RunParams.from_vlm` reads of a loaded model: its weights' fingerprint and dtype."""

    def __init__(self, model_id: str, dtype) -> None:
        from vlmloc.registry import weights_fingerprint

        self.fingerprint, self.dtype = weights_fingerprint(model_id), dtype


def test_from_vlm_builds_the_config_the_notebooks_built_by_hand():
    import torch
    from vlmloc.experiments.ch02_containerization import ContainerizationParams
    from vlmloc.registry import weights_fingerprint

    vlm, data = _Toy("toy-llava", torch.float32), "/data/annotations.json"
    by_hand = dict(  # chapter 5's third code cell, as the notebooks wrote it before from_vlm
        model=weights_fingerprint("toy-llava"), dtype=str(vlm.dtype).removeprefix("torch."),
        data=str(data), n_samples=64, seed=3,
    )  # fmt: skip
    params = RunParams.from_vlm(vlm, data=data, n_samples=64, seed=3, batch_size=8)
    assert params.config == by_hand and params.seed == 3 and params.batch_size == 8
    assert config_key(params.config) == config_key(by_hand)
    assert by_hand["dtype"] == "float32" and not by_hand["model"].startswith("torch")

    mean = torch.ones(4)  # chapter 2: the reference set's size keys the records too
    ch2 = ContainerizationParams.from_vlm(
        vlm, data=data, n_samples=64, seed=0, record={"n_reference": 16}, mean=mean, ig_steps=2
    )
    assert ch2.config == {**by_hand, "seed": 0, "n_reference": 16} and ch2.mean is mean and ch2.ig_steps == 2
    ch3 = RunParams.from_vlm(vlm, data=data, seed=0, record={"min_area_frac": 0.001})  # no n_samples key
    assert ch3.config == {
        "model": by_hand["model"],
        "dtype": "float32",
        "data": data,
        "min_area_frac": 0.001,
        "seed": 0,
    }


def test_mean_key_fingerprints_the_replacement_vector():
    import torch

    a = torch.arange(4.0)
    assert base.mean_key(a) == base.mean_key(a.clone().half().float()) == "4:3.74166:6"
    assert base.mean_key(a) != base.mean_key(a + 1)


def test_provenance_names_the_weights_dtype_and_data_of_the_config():
    import torch

    vlm = _Toy("toy-llava", torch.float32)
    params = RunParams.from_vlm(vlm, data="/data/a.json", n_samples=2)
    exp = Experiment(vlm, [object()], params, None)
    assert exp.provenance() == {"weights": vlm.fingerprint, "dtype": "float32", "data": "/data/a.json"}
    assert Experiment(vlm, [object()], RunParams(config={"n": 1}), None).provenance() == {}
