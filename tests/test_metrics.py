"""IoU, Loc and the classification check, against values computed by hand."""

import math

import pytest
from vlmloc.metrics import (
    THRESHOLDS,
    box_area,
    class_mentioned,
    iou,
    localization_summary,
    normalize_box,
    rate_summary,
)


def test_normalize_box_orders_swapped_corners():
    assert normalize_box([10, 40, 0, 20]) == (0.0, 20.0, 10.0, 40.0)


def test_normalize_box_rejects_wrong_length():
    with pytest.raises(ValueError, match="exactly 4 numbers"):
        normalize_box([1, 2, 3])


def test_box_area_and_degenerate():
    assert box_area((0, 0, 4, 5)) == 20.0
    assert box_area((4, 5, 0, 0)) == 20.0
    assert box_area((3, 0, 3, 10)) == 0.0


def test_iou_identity_is_one():
    assert iou((10, 20, 50, 80), (10, 20, 50, 80)) == 1.0


def test_iou_disjoint_is_zero():
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges share no area


def test_iou_partial_overlap_by_hand():
    # Intersection (5..10)x(5..10)=25, areas 100 and 100, union 175.
    assert iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    # Contained box: 4x4 inside 10x10 -> 16/100.
    assert iou((3, 3, 7, 7), (0, 0, 10, 10)) == pytest.approx(0.16)


def test_iou_swapped_corners_equal_ordered():
    assert iou((15, 15, 5, 5), (10, 0, 0, 10)) == pytest.approx(25 / 175)


def test_iou_none_and_zero_area():
    assert iou(None, (0, 0, 10, 10)) == 0.0
    assert iou((5, 5, 5, 5), (0, 0, 10, 10)) == 0.0
    assert iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # zero union: no division by zero


def test_iou_out_of_range_used_as_given():
    # Prediction extends past a 100x100 image: not clipped, so union grows: 100 / (200) = 0.5.
    assert iou((-10, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_iou_non_finite_is_zero(bad):
    assert iou((0, 0, bad, 10), (0, 0, 10, 10)) == 0.0
    assert iou((0, 0, 10, 10), (0, bad, 10, 10)) == 0.0


def test_localization_summary_by_hand():
    ious = [1.0, 0.75, 0.55, 0.2, None]
    s = localization_summary(ious)
    assert s["iou@0.5"] == pytest.approx(60.0)
    assert s["iou@0.7"] == pytest.approx(40.0)
    assert s["iou@0.9"] == pytest.approx(20.0)
    assert s["loc"] == pytest.approx(40.0)
    assert s["mean_iou"] == pytest.approx((1.0 + 0.75 + 0.55 + 0.2 + 0.0) / 5)
    assert s["n"] == 5
    # Per-sample scores 1, 2/3, 1/3, 0, 0: mean 0.4; squared deviations sum to 0.36 + 0.64/9 + 0.04/9
    # + 0.16 + 0.16 = 6.8/9, so the sample variance is 6.8/36 = 17/90 and se = sqrt(17/90/5).
    scores = [1, 2 / 3, 1 / 3, 0, 0]
    var = sum((x - 0.4) ** 2 for x in scores) / 4
    assert var == pytest.approx(17 / 90)
    assert s["loc_se"] == pytest.approx(100 * math.sqrt(17 / 90 / 5))


def test_localization_summary_threshold_is_inclusive_and_keys_follow_thresholds():
    s = localization_summary([0.5])
    assert s["iou@0.5"] == 100.0 and s["iou@0.7"] == 0.0
    assert s["loc_se"] == 0.0  # n < 2
    assert {f"iou@{t}" for t in THRESHOLDS} <= set(s)


def test_localization_summary_empty_raises():
    with pytest.raises(ValueError, match="at least one"):
        localization_summary([])


def test_rate_summary():
    s = rate_summary([True, False, True, True])
    assert s["rate"] == pytest.approx(75.0)
    assert s["se"] == pytest.approx(100 * math.sqrt(0.75 * 0.25 / 4))
    assert s["n"] == 4
    with pytest.raises(ValueError, match="at least one"):
        rate_summary([])


@pytest.mark.parametrize(
    ("answer", "name"),
    [
        ("There is a Cat on the sofa.", "cat"),
        ("Two cats and a dog.", "cat"),
        ("Several buses are parked.", "bus"),
        ("A row of traffic lights.", "traffic light"),
        ("a HOT DOG with mustard", "hot dog"),
        ("some hot-dogs", "hot dog"),
        ("three people walking", "person"),
        ("mice on the desk", "mouse"),
        ("forks and knives", "knife"),
        ("a flock of sheep", "sheep"),
        ("a pair of skis", "skis"),
        ("a ski lying in the snow", "skis"),
        ("two butterflies", "butterfly"),
        ("wine glasses", "wine glass"),
        ("The objects are: circle, square.", "square"),
    ],
)
def test_class_mentioned_positive(answer, name):
    assert class_mentioned(answer, name)


@pytest.mark.parametrize(
    ("answer", "name"),
    [
        ("This category is empty.", "cat"),
        ("A scatter plot.", "cat"),
        ("A dog.", "cat"),
        ("a traffic cone and a light", "traffic light"),
        ("", "cat"),
    ],
)
def test_class_mentioned_negative(answer, name):
    assert not class_mentioned(answer, name)


def test_class_mentioned_empty_name_raises():
    with pytest.raises(ValueError, match="non-empty class name"):
        class_mentioned("a cat", "  ")
