"""COCO loading: the book's data filter (methods page) on a handmade file, masks and boxes, size classes, errors."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from vlmloc.data import DataError, Sample, check_images, load_coco, resolve_data

CATS = ["cat", "dog", "bird", "horse", "sheep", "cow"]


def _rle(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _ann(ann_id, image_id, cat, hw, rect, crowd=0):
    h, w = hw
    x0, y0, x1, y1 = rect
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATS.index(cat) + 1,
        "segmentation": _rle(h, w, *rect),
        "area": float((x1 - x0) * (y1 - y0)),
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "iscrowd": crowd,
    }


@pytest.fixture
def handmade(tmp_path):
    """Image 1 is 100 x 100 (1% = 100 px), image 2 is 50 x 40 (1% = 20 px)."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (100, 100), (10, 20, 30)).save(images / "a.png")
    Image.new("RGB", (50, 40), (10, 20, 30)).save(images / "b.png")
    a, b = (100, 100), (40, 50)  # (h, w)
    anns = [
        _ann(10, 1, "cat", a, (10, 20, 30, 40)),  # kept: single cat, 400 px
        _ann(11, 1, "dog", a, (50, 50, 70, 70)),  # dropped: two dogs in image 1
        _ann(12, 1, "dog", a, (70, 0, 90, 20)),  # dropped: two dogs in image 1
        _ann(13, 1, "bird", a, (0, 60, 30, 90), crowd=1),  # dropped: crowd
        _ann(14, 1, "horse", a, (0, 0, 9, 11)),  # dropped: 99 px < 1%
        _ann(15, 1, "sheep", a, (80, 80, 90, 90)),  # kept: exactly 100 px = 1%
        _ann(16, 1, "cow", a, (40, 0, 60, 20)),  # dropped: a crowd cow too, so cows are not unique
        _ann(17, 1, "cow", a, (40, 80, 60, 100), crowd=1),  # dropped: crowd
        _ann(20, 2, "dog", b, (5, 10, 9, 15)),  # kept: the only dog of image 2, 20 px = 1%
    ]
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 100},
            {"id": 2, "file_name": "b.png", "width": 50, "height": 40},
        ],
        "annotations": anns,
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CATS)],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return path, images


def test_filter_keeps_exactly_the_unambiguous_large_enough_objects(handmade):
    ann, images = handmade
    samples = load_coco(ann, images)
    assert sorted(s.ann_id for s in samples) == [10, 15, 20]
    by_id = {s.ann_id: s for s in samples}
    cat = by_id[10]
    assert (cat.sample_id, cat.category, cat.category_id) == ("1:10", "cat", 1)
    assert cat.box == (10.0, 20.0, 30.0, 40.0)  # COCO [x, y, w, h] -> (x0, y0, x1, y1)
    assert (cat.width, cat.height, cat.area) == (100, 100, 400.0)
    assert cat.image_path == images / "a.png"
    assert by_id[20].category == "dog" and by_id[20].box == (5.0, 10.0, 9.0, 15.0)


def test_masks_match_the_annotations(handmade):
    samples = {s.ann_id: s for s in load_coco(*handmade)}
    m = samples[20].mask()
    assert m.dtype == bool and m.shape == (40, 50)  # (height, width)
    expected = np.zeros((40, 50), bool)
    expected[10:15, 5:9] = True
    assert (m == expected).all()
    assert samples[10].mask().sum() == 400
    assert samples[20].load_image().size == (50, 40)


def test_min_area_fraction_limit_and_seed(handmade):
    ann, images = handmade
    assert sorted(s.ann_id for s in load_coco(ann, images, min_area_frac=0.004)) == [10, 14, 15, 20]
    with pytest.raises(DataError, match="no annotation of .*instances.json passes the filter"):
        load_coco(ann, images, min_area_frac=0.05)  # 500 px in image 1, 100 px in image 2: none left
    two = load_coco(ann, images, limit=2, seed=3)
    assert len(two) == 2
    assert [s.ann_id for s in two] == [s.ann_id for s in load_coco(ann, images, limit=2, seed=3)]
    orders = {tuple(s.ann_id for s in load_coco(ann, images, seed=k)) for k in range(8)}
    assert len(orders) > 1 and all(sorted(o) == [10, 15, 20] for o in orders)


def test_synthetic_set_through_the_same_loader(synthetic_coco):
    ann, images = synthetic_coco
    raw = json.loads(ann.read_text())
    assert len(raw["images"]) == 12
    samples = load_coco(ann, images)
    # the filter, recomputed from the raw file: unique category in its image, area >= 1%, non-crowd
    per_image = {}
    for a in raw["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    dims = {im["id"]: (im["width"], im["height"]) for im in raw["images"]}
    wanted = set()
    for img_id, anns in per_image.items():
        counts = Counter(a["category_id"] for a in anns)
        w, h = dims[img_id]
        wanted |= {
            f"{img_id}:{a['id']}"
            for a in anns
            if counts[a["category_id"]] == 1 and not a["iscrowd"] and a["area"] >= 0.01 * w * h
        }
    assert {s.sample_id for s in samples} == wanted and len(samples) == len(wanted) > 0
    for s in samples[:6]:
        m = s.mask()
        assert m.shape == (s.height, s.width)
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == s.box  # the mask's bbox is the box
        assert m.sum() == s.area
        assert s.load_image().size == (s.width, s.height)


def _sample(area):
    return Sample(1, 1, "x.png", None, "cat", 1, (0.0, 0.0, 1.0, 1.0), area, 10, 10)


@pytest.mark.parametrize(
    ("area", "size"),
    [(1023.0, "small"), (1024.0, "medium"), (9216.0, "medium"), (9217.0, "large"), (5.0, "small")],
)
def test_size_class_thresholds(area, size):
    # COCO: small < 32^2 = 1024 px, large > 96^2 = 9216 px
    assert _sample(area).size_class == size


# --------------------------------------------------------------------------- errors


def test_missing_annotations_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "instances_val2017.json"
    with pytest.raises(DataError, match="annotations file .*instances_val2017.json does not exist"):
        load_coco(missing, tmp_path)


def test_missing_image_folder_names_the_folder(handmade, tmp_path):
    ann, _ = handmade
    with pytest.raises(DataError, match="image folder .*val2017 does not exist"):
        load_coco(ann, tmp_path / "val2017")


def test_malformed_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match="bad.json is not valid JSON"):
        load_coco(bad, tmp_path)


def test_missing_keys(tmp_path):
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO instances file: it lacks annotations, categories"):
        load_coco(partial, tmp_path)


def test_missing_image_file(handmade):
    ann, images = handmade
    s = next(s for s in load_coco(ann, images) if s.image_id == 1)
    (images / "a.png").unlink()
    with pytest.raises(DataError, match="a.png listed in the annotations does not exist"):
        s.load_image()


def test_malformed_entry_is_a_data_error(handmade):
    ann, images = handmade
    raw = json.loads(ann.read_text())
    del raw["annotations"][0]["bbox"]
    ann.write_text(json.dumps(raw))
    with pytest.raises(
        DataError, match=r"not a COCO instances file: an entry is malformed \(KeyError: 'bbox'\)"
    ):
        load_coco(ann, images)


def test_check_images_opens_each_chosen_image_once(handmade):
    ann, images = handmade
    samples = load_coco(ann, images)
    assert check_images(samples) == 2  # three objects, two images
    (images / "a.png").unlink()
    (images / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"^2 of the 2 images chosen cannot be used: ") as info:
        check_images(samples)
    assert "a.png (missing)" in str(info.value) and "b.png (not a readable image" in str(info.value)
    assert check_images([s for s in samples if s.image_id == 3]) == 0  # nothing chosen, nothing to open


def test_check_images_catches_a_size_that_disagrees_with_the_annotations(handmade):
    ann, images = handmade
    Image.new("RGB", (60, 40)).save(images / "b.png")
    with pytest.raises(
        DataError, match=r"b.png \(is 60x40, the annotations say 50x40\); pass the images folder"
    ):
        check_images(load_coco(ann, images))


def test_resolve_data_needs_both_or_neither(tmp_path):
    ann, img = str(tmp_path / "a.json"), str(tmp_path / "images")
    for args in ((ann, None), (None, img)):
        with pytest.raises(DataError, match="pass both annotations and images"):
            resolve_data(*args)
    assert resolve_data(ann, img) == (tmp_path / "a.json", tmp_path / "images")


def test_colour_linked_sets_how_often_objects_have_their_class_colour():
    """Training scenes may lower the colour cue, so that a toy must learn shapes to name objects."""
    from vlmloc.synthetic import CLASS_COLOUR, COLOUR_LINKED, generate_scene

    def share_linked(linked, seed=7, n=150):
        rng = np.random.default_rng(seed)
        specs = [s for _ in range(n) for s, _ in generate_scene(rng, linked)[1]]
        return np.mean([s.colour == CLASS_COLOUR[s.category] for s in specs])

    assert share_linked(1.0) == 1.0
    assert share_linked(0.0) < 0.25  # a random colour is the class's own one time in eight
    assert 0.8 < share_linked(COLOUR_LINKED) < 0.97
