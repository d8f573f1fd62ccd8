"""The registry's parameter schemas: the notebooks' parameters cells, and the checks' sentences."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from vlmloc import chapter_registry, preamble
from vlmloc.params import ParameterError

ROOT = Path(__file__).resolve().parents[1]


def _parameters_cell(chapter: str) -> dict:
    nb = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    values = {}
    for node in ast.parse("".join(cell["source"])).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("chapter", chapter_registry.names())
def test_the_schema_is_the_notebooks_parameters_cell(chapter):
    """Same names, same order, same defaults: the schema cannot drift from the cell it describes."""
    cell = _parameters_cell(chapter)
    schema = chapter_registry.get(chapter).defaults
    assert list(schema) == list(cell)
    assert schema == cell


@pytest.mark.parametrize("chapter", chapter_registry.names())
def test_the_defaults_pass_their_checks(chapter, capsys):
    params = preamble.check(chapter, chapter_registry.get(chapter).defaults)
    assert params == chapter_registry.get(chapter).defaults


#: (chapter, bad values, the sentence the notebook's validation cell raised before the schema)
SENTENCES = [
    ("01_data_and_baselines", {"n_samples": -5}, "n_samples must be a positive integer, got -5; pass e.g. -p n_samples 200."),
    ("01_data_and_baselines", {"model_id": "nope"}, "model_id 'nope' is not supported; pass -p model_id with one of:"),
    ("02_containerization", {"ig_steps": 0}, "ig_steps must be a positive integer, got 0; pass e.g. -p ig_steps 16."),
    ("02_containerization", {"n_reference": True}, "n_reference must be a positive integer, got True; pass e.g. -p n_reference 16."),
    ("03_views", {"n_reference": 0}, "n_reference must be a positive integer, got 0; pass e.g. -p n_reference 64."),
    ("04_position_decoding", {"epochs": 0}, "epochs must be a positive integer, got 0; pass e.g. -p epochs 10."),
    ("04_position_decoding", {"lr": 10}, "lr must be a positive number below 10, got 10; pass e.g. -p lr 0.01."),
    ("04_position_decoding", {"control_cache_mb": -1}, "control_cache_mb must be 0 (stream) or a positive budget in MB, got -1."),
    ("04_position_decoding", {"control": "yes"}, "control must be True or False, got 'yes'; pass -p control True."),
    ("05_attention_knockout", {"window": 0}, "window must be a positive integer, got 0; pass e.g. -p window 4."),
    ("05_attention_knockout", {"progress": 1}, "progress must be True or False, got 1; pass -p progress True."),
    ("06_mediation", {"n_control_pairs": -1}, "n_control_pairs must be an integer >= 0, got -1; pass e.g. -p n_control_pairs 10."),
    ("06_mediation", {"min_rel_gap": 1.0}, "min_rel_gap must be a number in [0, 1), got 1.0; pass e.g. -p min_rel_gap 0.05."),
    ("06_mediation", {"patch_positions": "x"}, "patch_positions must be 'after_image' or 'all', got 'x'; pass e.g. -p patch_positions after_image."),
    ("06_mediation", {"compare_positions": "no"}, "compare_positions must be True or False, got 'no'; pass e.g. -p compare_positions True."),
    ("06_mediation", {"progress": "no"}, "progress must be True or False, got 'no'; pass e.g. -p progress False."),
    ("07_head_ablation", {"ks": [0]}, "ks must be a list of positive integers, got [0]; pass e.g. -p ks '[1, 5, 10, 20]'."),
    ("07_head_ablation", {"ablation": "x"}, "ablation must be 'zero' or 'mean', got 'x'; pass e.g. -p ablation zero."),
    ("07_head_ablation", {"verdict_k": 7}, "verdict_k must be one of ks [5, 10, 20], got 7; pass e.g. -p verdict_k 20."),
    ("07_head_ablation", {"min_effect": 0}, "min_effect must be a positive number of points, got 0; pass e.g. -p min_effect 5."),
    ("summary", {"results_dir": 3}, "results_dir must be a directory path string, got 3; pass e.g. -p results_dir results."),
]  # fmt: skip


@pytest.mark.parametrize(
    ("chapter", "bad", "sentence"), SENTENCES, ids=[f"{c[:2]}-{next(iter(b))}" for c, b, _ in SENTENCES]
)
def test_a_bad_value_stops_with_the_notebooks_sentence(chapter, bad, sentence):
    params = {**chapter_registry.get(chapter).defaults, **bad}
    with pytest.raises(ParameterError) as info:
        preamble.check(chapter, params)
    assert str(info.value).startswith(sentence)


def test_the_summary_page_does_not_check_its_model_id():
    """The results page reads every model; its model_id only names the book's, so any is fine."""
    assert preamble.check("summary", {"model_id": "anything", "results_dir": "r"})["model_id"] == "anything"


def test_start_prints_the_versions_after_the_checks(capsys):
    preamble.start("01_data_and_baselines", chapter_registry.get("01_data_and_baselines").defaults)
    out = capsys.readouterr().out
    assert out.startswith("executed ") and "CPU threads" in out and "torch " in out and "vlmloc " in out


def test_record_config_is_the_notebooks_dict():
    class FakeVLM:
        fingerprint = "toy-llava@0123456789"
        dtype = "torch.float32"

    config = preamble.record_config(FakeVLM(), data="d.json", n_samples=3, seed=0)
    assert config == {
        "model": "toy-llava@0123456789",
        "dtype": "float32",
        "data": "d.json",
        "n_samples": 3,
        "seed": 0,
    }
    assert list(config) == ["model", "dtype", "data", "n_samples", "seed"]  # the store's key keeps this order
