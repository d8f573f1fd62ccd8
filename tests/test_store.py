"""The resumable results store: resume after a crash, config hashing, stale and duplicate records."""

import json
import logging

import numpy as np
import pytest
from vlmloc.store import (
    CorruptResultsError,
    ResultsStore,
    StaleResultsError,
    config_key,
    model_dirname,
    read_summary,
    write_summary,
)

CONFIG = {"strategy": "object", "padding": 1, "thresholds": (0.5, 0.7, 0.9)}


def _log(tmp_path, config=CONFIG, name="ablation"):
    return ResultsStore(tmp_path, "llava-hf/llava-1.5-7b-hf", "token_ablation").condition(name, config)


def test_model_dirname_and_config_key():
    assert model_dirname("llava-hf/llava-1.5-7b-hf") == "llava-hf__llava-1.5-7b-hf"
    key = config_key({"a": 1, "b": [1, 2]})
    assert len(key) == 10 and all(c in "0123456789abcdef" for c in key)
    assert key == config_key({"b": (1, 2), "a": 1})  # key order and tuple/list do not matter
    assert key != config_key({"a": 2, "b": [1, 2]})


def test_layout_and_header(tmp_path):
    log = _log(tmp_path)
    expected = (
        tmp_path / "llava-hf__llava-1.5-7b-hf" / "token_ablation" / f"ablation-{config_key(CONFIG)}.jsonl"
    )
    assert log.path == expected
    header = json.loads(expected.read_text().splitlines()[0])
    assert header == {"_header": True, "condition": "ablation", "config": json.loads(json.dumps(CONFIG))}
    assert len(log) == 0


def test_resume_after_interruption(tmp_path, caplog):
    log = _log(tmp_path)
    for i in range(3):
        log.append({"sample_id": f"s{i}", "iou": np.float32(0.25 * i), "box": np.array([1, 2, 3, 4])})
    with open(log.path, "a") as f:  # a crash in the middle of writing the fourth record
        f.write('{"sample_id": "s3", "io')

    with caplog.at_level(logging.WARNING, logger="vlmloc.store"):
        reopened = _log(tmp_path)
    assert any("incomplete last line" in r.getMessage() for r in caplog.records)
    assert reopened.done_ids() == {"s0", "s1", "s2"}
    assert len(reopened) == 3
    assert reopened.pending([f"s{i}" for i in range(6)]) == ["s3", "s4", "s5"]
    assert [r["iou"] for r in reopened.records()] == [0.0, 0.25, 0.5]
    assert reopened.records()[0]["box"] == [1, 2, 3, 4]

    reopened.append({"sample_id": "s3", "iou": 0.75})
    lines = reopened.path.read_text().splitlines()
    assert len(lines) == 5 and all(isinstance(json.loads(line), dict) for line in lines)
    assert [r["sample_id"] for r in _log(tmp_path).records()] == ["s0", "s1", "s2", "s3"]


def test_complete_last_record_without_newline_is_kept(tmp_path):
    log = _log(tmp_path)
    log.append({"sample_id": "a"})
    log.path.write_bytes(log.path.read_bytes().rstrip(b"\n"))
    reopened = _log(tmp_path)
    assert reopened.done_ids() == {"a"}
    reopened.append({"sample_id": "b"})
    assert [r["sample_id"] for r in _log(tmp_path).records()] == ["a", "b"]


def test_truncated_header_is_rewritten(tmp_path):
    log = _log(tmp_path)
    log.path.write_text('{"_header": tr')
    reopened = _log(tmp_path)
    assert len(reopened) == 0
    reopened.append({"sample_id": "a"})
    assert json.loads(reopened.path.read_text().splitlines()[0])["_header"] is True
    assert _log(tmp_path).done_ids() == {"a"}


def test_corrupt_middle_line_raises_with_file_and_line(tmp_path):
    log = _log(tmp_path)
    log.append({"sample_id": "a"})
    log.append({"sample_id": "b"})
    lines = log.path.read_text().splitlines()
    lines[1] = "not json"
    log.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorruptResultsError, match=r"Line 2 of .*ablation-.*\.jsonl"):
        _log(tmp_path)


def test_changed_config_uses_a_different_file(tmp_path):
    first = _log(tmp_path)
    first.append({"sample_id": "a"})
    second = _log(tmp_path, config={**CONFIG, "padding": 2})
    assert second.path != first.path
    assert second.done_ids() == set()


def test_header_mismatch_raises_stale(tmp_path):
    log = _log(tmp_path)
    lines = log.path.read_text().splitlines()
    header = json.loads(lines[0])
    header["config"]["padding"] = 99  # a manual edit (or a hash collision)
    log.path.write_text(json.dumps(header) + "\n")
    with pytest.raises(StaleResultsError, match="delete .*ablation-"):
        _log(tmp_path)


def test_duplicate_and_invalid_append(tmp_path):
    log = _log(tmp_path)
    log.append({"sample_id": "a"})
    with pytest.raises(ValueError, match="already recorded"):
        log.append({"sample_id": "a", "iou": 1.0})
    with pytest.raises(ValueError, match="sample_id"):
        log.append({"sample_id": 3})
    with pytest.raises(TypeError, match="Cannot store"):
        log.append({"sample_id": "b", "bad": object()})
    assert len(_log(tmp_path)) == 1  # failed appends wrote nothing


def test_summary_round_trip(tmp_path):
    summary = {"loc": np.float64(35.5), "n": np.int64(10), "per_threshold": (1.0, 2.0)}
    path = write_summary(tmp_path, "toy-llava", "token_ablation", summary)
    assert path == tmp_path / "toy-llava" / "token_ablation.json"
    assert read_summary(tmp_path, "toy-llava", "token_ablation") == {
        "loc": 35.5,
        "n": 10,
        "per_threshold": [1.0, 2.0],
    }
    write_summary(tmp_path, "toy-llava", "token_ablation", {"loc": 1.0})
    assert read_summary(tmp_path, "toy-llava", "token_ablation") == {"loc": 1.0}
    assert sorted(p.name for p in path.parent.iterdir()) == ["token_ablation.json"]  # no temp files left


def test_missing_summary_says_which_chapter_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the 'attention_knockout' chapter first"):
        read_summary(tmp_path, "toy-llava", "attention_knockout")


# --------------------------------------------------------------------------- runtime over resumed runs


def test_runtime_adds_up_every_run_and_survives_an_interrupt(tmp_path, monkeypatch):
    import time as _time

    from vlmloc import store as st

    clock = iter(range(0, 10_000, 10))  # perf_counter: 0, 10, 20, ... seconds
    monkeypatch.setattr(st.time, "perf_counter", lambda: float(next(clock)))
    store = ResultsStore(tmp_path, "toy-llava", "02_containerization")
    first = store.runtime(CONFIG)
    with first.timed("ablation"):
        pass  # 10 s
    with pytest.raises(KeyboardInterrupt), first.timed("padding"):
        raise KeyboardInterrupt  # an interrupted stage still counts its 10 s
    assert json.loads(first.path.read_text())["runs"][first.run] == {"ablation": 10, "padding": 10}

    resumed = store.runtime(CONFIG)  # a new run (a new kernel) of the same configuration
    with resumed.timed("padding"):
        pass
    resumed.start("whole chapter")  # still open: counts until now
    totals = resumed.totals()
    assert totals["ablation"] == 10 and totals["padding"] == 20 and totals["whole chapter"] == 10
    assert resumed.n_runs() == 2
    assert store.runtime({**CONFIG, "padding": 2}).totals() == {}  # another configuration starts afresh
    monkeypatch.setattr(st.time, "perf_counter", _time.perf_counter)


def test_runtime_heartbeat_writes_while_a_stage_runs(tmp_path, monkeypatch):
    """The heartbeat writes the open stage's time to disk before it stops; a fake clock says what
    time it is, so the check does not depend on how fast this machine runs the thread."""
    import threading
    import time as _time

    from vlmloc import store as st

    now = [100.0]
    monkeypatch.setattr(st.time, "perf_counter", lambda: now[0])
    rt = ResultsStore(tmp_path, "toy-llava", "x").runtime(CONFIG, heartbeat=0.01)
    rt.start("slow")
    assert not rt.path.exists()  # nothing is written before the first beat
    now[0] = 107.0  # the stage has run 7 s
    written = threading.Event()
    for _ in range(2000):  # wait for a beat (bounded: 20 s at most, normally a few ms)
        if rt.path.exists() and json.loads(rt.path.read_text())["runs"][rt.run].get("slow") == 7.0:
            written.set()
            break
        _time.sleep(0.01)
    assert written.is_set(), "the heartbeat never wrote the open stage"  # a kill now would keep 7 s
    now[0] = 109.0
    assert rt.stop("slow") == 9.0
