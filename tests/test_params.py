"""Notebook parameter validation: each bad value stops with one sentence naming the parameter."""

import re

import pytest
from vlmloc.params import ParameterError, validate_params

KNOWN = ["toy-llava", "llava-hf/llava-1.5-7b-hf", "toy-internvl"]


@pytest.fixture
def coco(tmp_path):
    annotations = tmp_path / "instances_val2017.json"
    annotations.write_text("{}")
    images = tmp_path / "val2017"
    images.mkdir()
    return str(annotations), str(images)


def test_good_parameters_pass(coco, tmp_path):
    good = {
        "model_id": "toy-llava",
        "n_samples": 200,
        "batch_size": 4,
        "seed": 0,
        "device": "cuda:1",
        "dtype": "bfloat16",
        "annotations": coco[0],
        "images": coco[1],
        "results_dir": str(tmp_path),
        "progress": False,
        "some_chapter_knob": object(),  # unknown keys are ignored
    }
    assert validate_params(good, KNOWN) is None
    assert validate_params({"annotations": None, "images": None, "device": "auto"}, KNOWN) is None
    assert validate_params({}, KNOWN) is None


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"model_id": "llava-7b"}, "model_id"),
        ({"model_id": ""}, "model_id"),
        ({"model_id": 7}, "model_id"),
        ({"n_samples": -3}, "n_samples"),
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": True}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"n_samples": "200"}, "n_samples"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"seed": False}, "seed"),
        ({"device": "gpu"}, "device"),
        ({"device": "cuda:x"}, "device"),
        ({"dtype": "fp16"}, "dtype"),
        ({"results_dir": 3}, "results_dir"),
        ({"results_dir": ""}, "results_dir"),
        ({"progress": "yes"}, "progress"),
        ({"progress": 1}, "progress"),
    ],
)
def test_bad_parameter_is_named(params, name):
    with pytest.raises(ParameterError, match=name) as info:
        validate_params(params, KNOWN)
    message = str(info.value)
    assert re.search(r"\.\s+[A-Z]", message) is None and message.endswith(".")  # one sentence
    assert "-p " in message or "pass" in message


def test_unknown_model_lists_known_ids_sorted():
    with pytest.raises(ParameterError) as info:
        validate_params({"model_id": "llava-7b"}, KNOWN)
    assert "llava-hf/llava-1.5-7b-hf, toy-internvl, toy-llava" in str(info.value)


def test_n_samples_message_has_example():
    with pytest.raises(ParameterError, match=r"got -3; pass e\.g\. -p n_samples 200"):
        validate_params({"n_samples": -3}, KNOWN)


def test_missing_annotations_file(coco, tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(
        ParameterError, match="annotations.*nope.json.*-p annotations /path/to/instances_val2017.json"
    ):
        validate_params({"annotations": missing, "images": coco[1]}, KNOWN)


def test_missing_images_directory(coco, tmp_path):
    with pytest.raises(ParameterError, match="images.*-p images"):
        validate_params({"annotations": coco[0], "images": str(tmp_path / "nope")}, KNOWN)
    with pytest.raises(ParameterError, match="images"):  # a file is not an image directory
        validate_params({"annotations": coco[0], "images": coco[0]}, KNOWN)


@pytest.mark.parametrize("which", ["annotations", "images"])
def test_exactly_one_data_path_is_an_error(coco, which):
    params = {"annotations": coco[0], "images": coco[1], which: None}
    with pytest.raises(ParameterError, match=f"{which} is None"):
        validate_params(params, KNOWN)
