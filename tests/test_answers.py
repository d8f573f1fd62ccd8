"""Box parsing from raw answers: typical, spaced and garbage text."""

import logging

import pytest
from vlmloc.answers import parse_bracket_box, parse_internvl_box


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[0.12, 0.3, 0.5, 0.9]", (0.12, 0.3, 0.5, 0.9)),
        ("The box is [0.1,0.2,0.3,0.4].", (0.1, 0.2, 0.3, 0.4)),
        ("[ 0.12 , 0.3 , 0.5 , 0.9 ]", (0.12, 0.3, 0.5, 0.9)),
        ("[ 0 . 12 , 0 . 3 , 1 , 0 . 9 ]", (0.12, 0.3, 1.0, 0.9)),
        ("[12, 40, 300, 999]", (12.0, 40.0, 300.0, 999.0)),
        ("[.5, 1., 2e-1, -0.1]", (0.5, 1.0, 0.2, -0.1)),
        ("[1, 2] then [0.1, 0.2, 0.3, 0.4] and [5, 6, 7, 8]", (0.1, 0.2, 0.3, 0.4)),
        ("[[0.1, 0.2, 0.3, 0.4]]", (0.1, 0.2, 0.3, 0.4)),
    ],
)
def test_parse_bracket_box(text, expected):
    assert parse_bracket_box(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text", ["A cat on a mat.", "[0.1, 0.2, 0.3]", "[a, b, c, d]", "", "[0.1 0.2 0.3 0.4]"]
)
def test_parse_bracket_box_garbage_is_logged(text, caplog):
    with caplog.at_level(logging.INFO, logger="vlmloc.answers"):
        assert parse_bracket_box(text) is None
    assert any(r.name == "vlmloc.answers" and repr(text) in r.getMessage() for r in caplog.records)


def test_parse_bracket_box_non_string_does_not_raise(caplog):
    with caplog.at_level(logging.INFO, logger="vlmloc.answers"):
        assert parse_bracket_box(None) is None
    assert len(caplog.records) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<ref>cat</ref><box>[[12, 40, 300, 999]]</box>", (12.0, 40.0, 300.0, 999.0)),
        ("<box> [ [ 12 , 40 , 300 , 999 ] ] </box>", (12.0, 40.0, 300.0, 999.0)),
        ("< box >[[1,2,3,4]]< / box >", (1.0, 2.0, 3.0, 4.0)),
        ("<box>[5, 6, 7, 8]</box>", (5.0, 6.0, 7.0, 8.0)),
        ("<box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>", (1.0, 2.0, 3.0, 4.0)),
        ("<box>[[1, 2, 3]]</box> <box>[[9, 8, 7, 6]]</box>", (9.0, 8.0, 7.0, 6.0)),
        ("<box>[[10, 20, 30, 40]]", (10.0, 20.0, 30.0, 40.0)),  # generation stopped before </box>
    ],
)
def test_parse_internvl_box(text, expected):
    assert parse_internvl_box(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["[[12, 40, 300, 999]]", "<box>cat</box>", "no box here", "<box></box>"])
def test_parse_internvl_box_garbage_is_logged(text, caplog):
    with caplog.at_level(logging.INFO, logger="vlmloc.answers"):
        assert parse_internvl_box(text) is None
    assert any(r.name == "vlmloc.answers" and repr(text) in r.getMessage() for r in caplog.records)


def test_successful_parse_logs_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="vlmloc.answers"):
        parse_internvl_box("<box>[[1, 2, 3, 4]]</box>")
        parse_bracket_box("[1, 2, 3, 4]")
    assert caplog.records == []
