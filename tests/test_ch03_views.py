"""Chapter 3's library: size classes, the draw of multi-view objects, view-restricted token sets and edits.

The edits are checked at InternVL-3.5's real geometry (the tiny random model of ``conftest``) on a
wide image, which gets two tiles and a thumbnail: the thumbnail-only ablation must write the
thumbnail's object positions and nothing else, the tiles-only ablation the tiles' object positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import vlmloc.experiments.ch03_views as vw
import vlmloc.interventions as iv
from PIL import Image
from vlmloc.data import Sample
from vlmloc.geometry import ImageLayout, View
from vlmloc.params import ParameterError
from vlmloc.report import ch03 as report


def _sample(i: int, share: float, size: tuple[int, int] = (400, 200)) -> Sample:
    w, h = size
    return Sample(
        image_id=i,
        ann_id=i,
        file_name=f"{i}.png",
        image_path=Path(f"/nonexistent/{i}.png"),
        category="star",
        category_id=1,
        box=(0.0, 0.0, 10.0, 10.0),
        area=share * w * h,
        width=w,
        height=h,
    )


# --------------------------------------------------------------------------- size classes


def test_size_classes_follow_the_share_of_the_image_scaled_to_640x480():
    assert vw.SMALL_MAX_SHARE == pytest.approx(0.003333, rel=1e-3)
    assert vw.LARGE_MIN_SHARE == pytest.approx(0.03, rel=1e-9)
    assert vw.size_class(_sample(0, 0.0033)) == "small"
    assert vw.size_class(_sample(0, 0.0034)) == "medium"
    assert vw.size_class(_sample(0, 0.0299)) == "medium"
    assert vw.size_class(_sample(0, 0.0301)) == "large"
    # the same pixel area is small in a big image and medium in a small one (COCO's class would not move)
    big, little = _sample(0, 900 / (640 * 480), (640, 480)), _sample(1, 900 / (160 * 288), (160, 288))
    assert big.area == pytest.approx(little.area)
    assert (vw.size_class(big), vw.size_class(little)) == ("small", "medium")


# --------------------------------------------------------------------------- which objects take part


def _views(size: tuple[int, int]) -> list[View]:
    """Wide images get two tiles and a thumbnail, others one view (like the toy InternVL)."""
    w, h = size
    if w <= h:
        return [View("image", "global", 2, 2, 0, (0, 0, w, h))]
    return [
        View("tile 0", "local", 2, 2, 0, (0, 0, w / 2, h)),
        View("tile 1", "local", 2, 2, 4, (w / 2, 0, w, h)),
        View("thumbnail", "global", 2, 2, 8, (0, 0, w, h)),
    ]


def test_has_both_views():
    assert vw.has_both_views(_views((400, 200)))
    assert not vw.has_both_views(_views((200, 200)))
    assert not vw.has_both_views(_views((400, 200))[:2])  # tiles without a thumbnail


def test_stratified_draw_takes_only_multi_view_objects_round_robin():
    wide, square = (400, 200), (200, 200)
    samples = []
    for i in range(10):
        samples.append(_sample(100 + i, 0.1, wide))  # large, multi-view
        samples.append(_sample(200 + i, 0.01, wide))  # medium, multi-view
        samples.append(_sample(300 + i, 0.01, square))  # medium, one view: never drawn
    samples += [_sample(400 + i, 0.001, wide) for i in range(2)]  # only two small ones
    sel = vw.select_stratified(samples, 9, _views)
    assert sel.pool == {"small": 2, "medium": 20, "large": 10}
    assert sel.qualified == {"small": 2, "medium": 10, "large": 10}
    assert sel.drawn == {"small": 2, "medium": 4, "large": 3}  # the short class leaves its share
    assert len(sel.samples) == 9 and all(s.width == 400 for s in sel.samples)
    assert [s.image_id for s in sel.samples[:3]] == [400, 200, 100]  # small, medium, large, in order
    assert all(sel.sizes[s.sample_id] == vw.size_class(s) for s in sel.samples)
    table = sel.table()
    assert table.loc["all", "drawn"] == 9 and table.loc["all", "objects (filter)"] == 32
    # asking for more than qualifies draws every qualifying object once
    every = vw.select_stratified(samples, 1000, _views)
    assert len(every.samples) == 22 and len({s.sample_id for s in every.samples}) == 22


def test_reference_images_are_disjoint_from_the_evaluated_ones():
    every = [_sample(i // 2, 0.01) for i in range(20)]  # two objects per image
    for i, s in enumerate(every):
        s.ann_id = i
    evaluated = every[:6]
    ref = vw.reference_samples(every, evaluated, 4)
    assert len(ref) == 4 and len({s.image_id for s in ref}) == 4
    assert not {s.image_id for s in ref} & {s.image_id for s in evaluated}
    assert ref[0].image_id == 9  # from the end of the list


# --------------------------------------------------------------------------- token sets per view


def _layout() -> tuple[ImageLayout, np.ndarray]:
    views = _views((400, 200))
    mask = np.zeros((200, 400), bool)
    mask[10:20, 10:20] = True  # top-left: tile 0's cell (0, 0) and the thumbnail's cell (0, 0)
    return ImageLayout(torch.arange(100, 112), views, (400, 200)), mask


def test_view_token_sets_stay_in_their_view_and_controls_match_the_count():
    lay, mask = _layout()
    sets = vw.view_token_sets(lay, mask, seed=0, sample_id="1:1")
    assert sets["global"].tolist() == [8]
    assert sets["local"].tolist() == [0]
    assert sorted(sets["both"].tolist()) == [0, 8]
    assert len(sets["random_global"]) == 1 and set(sets["random_global"]) <= {8, 9, 10, 11}
    assert len(sets["random_local"]) == 1 and set(sets["random_local"]) <= set(range(8))
    assert (sets["n_visual"], sets["n_global"], sets["n_local"]) == (12, 4, 8)
    again = vw.view_token_sets(lay, mask, seed=0, sample_id="1:1")
    assert all(np.array_equal(sets[k], again[k]) for k in vw.CONDITIONS)
    draws = {
        tuple(vw.view_token_sets(lay, mask, seed=0, sample_id=f"1:{i}")["random_local"]) for i in range(30)
    }
    assert len(draws) > 1  # seeded per object, not one fixed draw


def test_view_token_sets_refuse_a_single_view_image():
    views = _views((200, 200))
    lay = ImageLayout(torch.arange(4), views, (200, 200))
    with pytest.raises(ValueError, match="one view"):
        vw.view_token_sets(lay, np.ones((200, 200), bool), 0, "1:1")


@pytest.fixture(scope="module")
def wide_case(tiny_internvl):
    vlm = tiny_internvl
    im = Image.new("RGB", (896, 448), (200, 40, 40))
    mask = np.zeros((448, 896), bool)
    mask[100:220, 120:300] = True  # in tile 0 only, and in the thumbnail
    arr = np.asarray(im).copy()
    arr[mask] = (30, 30, 220)
    im = Image.fromarray(arr)
    enc = vlm.encode([im], [vlm.prompt("localization", "star")])
    lay = vlm.layouts(enc, [im])[0]
    return vlm, mask, enc, lay, vlm.input_embeddings(enc)


def _changed(before: torch.Tensor, after: torch.Tensor) -> set[int]:
    return set(torch.nonzero((after - before)[0].abs().amax(-1) > 0).squeeze(-1).tolist())


def _positions(lay: ImageLayout, kind: str) -> set[int]:
    idx = np.concatenate([lay.token_indices(v) for v in lay.views_of_kind(kind)])
    return set(lay.positions[idx].tolist())


@pytest.mark.parametrize(
    "name, kind", [("global", "global"), ("local", "local"), ("random_global", "global")]
)
def test_one_view_ablation_edits_only_that_views_positions(wide_case, name, kind):
    vlm, mask, enc, lay, emb = wide_case
    assert [v.kind for v in lay.views] == ["local", "local", "global"]
    sets = vw.view_token_sets(lay, mask, 0, "1:1")
    mean = torch.randn(emb.shape[-1])
    after = iv.apply_edits([iv.replace_with(lay, sets[name], mean)])(emb)
    changed = _changed(emb, after)
    assert changed == set(lay.positions[sets[name]].tolist())  # exactly the set, at the LLM input
    assert changed and changed <= _positions(lay, kind)
    other = "local" if kind == "global" else "global"
    assert not changed & _positions(lay, other)
    assert torch.allclose(after[0, sorted(changed)], mean.expand(len(changed), -1))


def test_both_views_ablation_is_the_union(wide_case):
    vlm, mask, enc, lay, emb = wide_case
    sets = vw.view_token_sets(lay, mask, 0, "1:1")
    mean = torch.zeros(emb.shape[-1])
    edit = lambda k: _changed(emb, iv.apply_edits([iv.replace_with(lay, sets[k], mean)])(emb))  # noqa: E731
    assert edit("both") == edit("global") | edit("local")
    assert not sets["local"][sets["local"] >= lay.views[1].offset].size  # the object is in tile 0 only


# --------------------------------------------------------------------------- which models


def test_single_view_models_stop_with_one_sentence_naming_the_multi_view_ids():
    assert "toy-internvl" in vw.multi_view_ids() and "OpenGVLab/InternVL3_5-8B-HF" in vw.multi_view_ids()
    assert not [m for m in vw.multi_view_ids() if "llava" in m]
    vw.require_multi_view("toy-internvl")  # no error
    for model in ("toy-llava", "llava-hf/llava-1.5-7b-hf"):
        with pytest.raises(ParameterError) as info:
            vw.require_multi_view(model)
        msg = str(info.value)
        assert isinstance(info.value, vw.SingleViewModelError)
        assert model in msg and "toy-internvl" in msg and msg.count(". ") == 0


# --------------------------------------------------------------------------- the synthetic set


def test_extended_size_range_reaches_small_objects_and_defaults_are_unchanged(tmp_path):
    from vlmloc import synthetic as syn

    assert syn._size_note(syn.FIRST_SIZE, syn.DISTRACTOR_SIZE) == ""
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(5):  # explicit default ranges draw exactly the default scenes
        (ia, oa), (ib, ob) = (
            syn.generate_scene(rng_a),
            syn.generate_scene(rng_b, 0.9, (0.12, 0.75), (0.1, 0.35)),
        )
        assert np.array_equal(np.asarray(ia), np.asarray(ib)) and len(oa) == len(ob)
    rng = np.random.default_rng(0)
    fracs = []
    for _ in range(20):
        img, objs = syn.generate_scene(rng, first_size=(0.05, 0.06), distractor_size=(0.05, 0.06))
        fracs += [spec.size / min(img.size) for spec, _ in objs]
    assert fracs and max(fracs) <= 0.06 + 1e-9 and min(fracs) >= 0.05 - 1e-9
    ann, images = syn.embedded_dataset(2, seed=7, root=tmp_path)
    assert ann.parent.name == "synthetic-seed7-n2"
    ann2, _ = syn.embedded_dataset(
        2, seed=7, root=tmp_path, first_size=(0.05, 0.75), distractor_size=(0.05, 0.35)
    )
    assert ann2.parent.name == "synthetic-seed7-n2-size0.05-0.75-0.05-0.35" and ann2.is_file()


# --------------------------------------------------------------------------- tables and findings


def _entry(loc, cls, se=2.0, n=120, by_size=None, base=None):
    e = {"loc": loc, "cls": cls, "loc_se": se, "cls_se": se, "n": n, "by_size": by_size or {}}
    if base is not None:
        e.update(d_loc=loc - base[0], d_cls=cls - base[1], token_share=3.0)
    return e


def _summary(global_loc, local_loc, small_n=40, large_local=None):
    sizes = {"small": small_n, "medium": 40, "large": 40}
    by = lambda loc, cls: {c: _entry(loc, cls, 5.0, n) for c, n in sizes.items()}  # noqa: E731
    base = _entry(60, 80, by_size=by(60, 80))
    abl = {
        "global": _entry(global_loc, 75, base=(60, 80), by_size=by(global_loc, 75)),
        "local": _entry(local_loc, 70, base=(60, 80), by_size=by(local_loc, 70)),
        "both": _entry(5, 20, base=(60, 80), by_size=by(5, 20)),
        "random_global": _entry(59, 80, base=(60, 80), by_size=by(59, 80)),
        "random_local": _entry(58, 79, base=(60, 80), by_size=by(58, 79)),
    }
    if large_local is not None:
        abl["local"]["by_size"]["large"]["loc"] = large_local
    return {"model_id": "toy-internvl", "n_samples": 120, "baseline": base, "ablation": abl}


def test_findings_say_whether_the_run_agrees_with_the_paper():
    agree = report.findings(_summary(global_loc=10, local_loc=50))
    assert "the thumbnail matters more than the tiles, as in the paper" in agree["loc"]
    assert "72.64→36.20" in agree["loc"]
    reverse = report.findings(_summary(global_loc=50, local_loc=10))
    assert "the tiles matter more than the thumbnail, unlike the paper" in reverse["loc"]
    same = report.findings(_summary(global_loc=59, local_loc=59))
    assert "neither view" in same["loc"]
    assert "no conclusion" in report.findings(_summary(10, 50, small_n=12))["small"]
    assert "sensitive to both views" in agree["small"]  # both views drop Loc and Cls for small objects
    rises = report.findings(_summary(10, 50, large_local=80))["large"]
    assert "rises without the tiles, as in the paper" in rises
    drops = report.findings(_summary(10, 30))["large"]
    assert "drops without the tiles, where the paper sees it rise" in drops
    assert "specific to the object" in agree["controls"]


def test_tables_put_the_papers_table_3_beside_ours():
    s = _summary(10, 50)
    t = report.views_table(s)
    assert t.loc["object, thumbnail only", "InternVL-3.5-8B Loc (paper)"] == "36.20 ↓36.4"
    assert t.loc["object, tiles only", "InternVL-3.5-8B Cls (paper)"] == "76.65 ↓6.6"
    assert t.loc["baseline", "InternVL-3.5-8B Loc (paper)"] == "72.64"
    assert t.loc["random, tiles", "InternVL-3.5-8B Loc (paper)"] == "—"
    assert t.loc["object, thumbnail only", "Loc % (toy-internvl)"] == "10.0 ± 2.0 ↓50.0"
    b = report.by_size_table(s)
    assert "Loc ↑6.5" in b.loc["object, tiles only", "InternVL-3.5-8B (paper)"]
    assert b.loc["object, tiles only", "large (n=40) Loc %"] == "50.0 ± 5.0 ↓10.0"
    r = report.results_table({"toy-internvl": {"03_views": s}, "other": {"01_data_and_baselines": {}}})
    assert list(r["model"].unique()) == ["toy-internvl"] and len(r) == 6
    g = r.set_index("condition").loc["object, thumbnail only"]
    assert g["InternVL-3.5-8B Loc (paper)"] == 36.20 and g["Loc large"] == 10


# --------------------------------------------------------------------------- the notebook's library parts


def test_the_runner_is_the_shared_experiment_and_its_params_extend_run_params():
    from vlmloc.experiments.base import Experiment, RunParams

    assert issubclass(vw.ViewAblation, Experiment) and issubclass(vw.ViewParams, RunParams)
    with pytest.raises(ValueError, match="no size class"):
        vw.ViewAblation(None, [_sample(1, 0.01)], {}, vw.ViewParams(config={}, mean=torch.zeros(2)), None)


def test_example_object_is_the_first_medium_one_else_the_first():
    samples = [_sample(i, share) for i, share in enumerate((0.001, 0.01, 0.1, 0.01))]
    sizes = {s.sample_id: vw.size_class(s) for s in samples}
    assert vw.example_object(samples, sizes) is samples[1]
    no_medium = [samples[0], samples[2]]
    assert vw.example_object(no_medium, sizes) is samples[0]


def test_selection_and_token_findings_count_what_was_drawn():
    wide = (400, 200)
    samples = [_sample(100 + i, 0.1, wide) for i in range(3)] + [
        _sample(200 + i, 0.01, wide) for i in range(2)
    ]
    sel = vw.select_stratified(samples, 5, _views)
    text = report.selection_finding("m", sel)
    assert text.startswith("Of the 5 objects that pass the filter, 5 lie in images that m sees")
    assert "0 small, 2 medium, 3 large" in text and "(small, medium, large below 30" in text
    lay, mask = _layout()
    sets = {s.sample_id: vw.view_token_sets(lay, mask, 0, s.sample_id) for s in sel.samples}
    table = report.token_table(sets, sel.sizes)
    assert list(table.index) == ["medium", "large", "all"] and table.loc["all", "objects"] == 5
    assert table.loc["all", "object tokens in the thumbnail"] == 1 and table.loc["all", "tile tokens"] == 8
    example = report.example_finding("m", sel.samples[0], sel.samples, sel.sizes, sets)
    assert example.startswith("This star covers 1 of the thumbnail's 4 tokens and 1 of the tiles' 8")
    assert "for medium, large objects." in example
