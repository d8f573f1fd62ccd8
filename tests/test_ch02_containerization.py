"""Chapter 2's edits: null edits leave the logits unchanged, real edits touch only their positions.

Every edit path of the chapter (per-view shuffle, grown sets, per-view padding, mean replacement)
gets a null version that must leave the next-token logits unchanged to 1e-5 in float32 through
``vlm.logits(enc, edit=...)`` (nnsight), on both tiny models at the real geometry. InternVL is
tested on a wide image, so that tiles and thumbnail are both present.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import vlmloc.interventions as iv
from PIL import Image
from vlmloc.experiments import ch02_containerization as ct
from vlmloc.paper import INTERNVL_8B, LLAVA_7B, RESULTS
from vlmloc.report import ch02 as report
from vlmloc.store import ResultsStore


class IdentityRng:
    """Stands in for a generator whose every permutation is the identity."""

    def permutation(self, n: int) -> np.ndarray:
        return np.arange(n)


def _wide(vlm):
    """An image with an object; wide for InternVL (2 tiles + thumbnail), square for LLaVA (one view)."""
    size = (336, 336) if vlm.family.name == "llava" else (896, 448)
    im = Image.new("RGB", size, (200, 40, 40))
    mask = np.zeros((size[1], size[0]), bool)
    mask[100:220, 120:300] = True
    arr = np.asarray(im).copy()
    arr[mask] = (30, 30, 220)
    im = Image.fromarray(arr)
    enc = vlm.encode([im], [vlm.prompt("localization", "star")])
    lay = vlm.layouts(enc, [im])[0]
    return im, mask, enc, lay


@pytest.fixture(scope="module")
def case(tiny_vlm):
    im, mask, enc, lay = _wide(tiny_vlm)
    return tiny_vlm, im, mask, enc, lay, tiny_vlm.logits(enc)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert (a - b).abs().max().item() < 1e-5


def test_layout_has_the_expected_views(case):
    vlm, im, mask, enc, lay, base = case
    if vlm.family.name == "internvl":
        assert [v.kind for v in lay.views] == ["local", "local", "global"]
    else:
        assert len(lay.views) == 1
    assert len(lay.object_indices(mask)) > 0


def test_identity_shuffles_are_null_edits(case):
    vlm, im, mask, enc, lay, base = case
    for idx in (np.arange(lay.n_tokens), lay.object_indices(mask)):  # global and intra-object
        edit = iv.shuffle_within_views(lay, idx, IdentityRng())
        _same(vlm.logits(enc, edit=iv.apply_edits([edit])), base)


def test_grown_set_with_zero_rings_is_the_object_set(case):
    vlm, im, mask, enc, lay, base = case
    obj = lay.object_indices(mask)
    assert np.array_equal(iv.grown_indices(lay, mask, 0), obj)
    mean = vlm.input_embeddings(enc)[0, lay.positions].mean(0)
    a = vlm.logits(enc, edit=iv.apply_edits([iv.replace_with(lay, iv.grown_indices(lay, mask, 0), mean)]))
    b = vlm.logits(enc, edit=iv.apply_edits([iv.replace_with(lay, obj, mean)]))
    _same(a, b)
    assert (a[0, -1] - base[0, -1]).abs().max() > 1e-5  # replacing the object by the mean is a real edit


def test_padding_with_an_empty_ring_is_a_null_edit(case):
    vlm, im, mask, enc, lay, base = case
    edit, grown = iv.pad_within_views(lay, mask, 0, np.random.default_rng(0))
    assert len(edit.positions) == 0 and np.array_equal(grown, lay.object_indices(mask))
    _same(vlm.logits(enc, edit=iv.apply_edits([edit])), base)


def test_replacing_tokens_by_themselves_is_a_null_edit(case):
    vlm, im, mask, enc, lay, base = case
    emb = vlm.input_embeddings(enc)[0]
    obj = lay.object_indices(mask)
    own = iv.TokenEdit(lay.positions[obj], values=emb[lay.positions[obj]])
    _same(vlm.logits(enc, edit=iv.apply_edits([own])), base)


def _llm_input(vlm, enc, edit):
    """The first decoder layer's input after the edit: what the LLM really receives."""
    with torch.no_grad(), vlm.model.trace(enc) as tracer:
        args, kwargs = vlm.language_model.inputs
        if edit is not None:
            vlm.language_model.inputs = (args, {**kwargs, "inputs_embeds": edit(kwargs["inputs_embeds"])})
        seen = vlm.layers[0].input.save()
        tracer.stop()
    return seen


def _changed_rows(a: torch.Tensor, b: torch.Tensor) -> set[int]:
    return set(torch.nonzero((a[0] - b[0]).abs().amax(-1) > 0).squeeze(-1).tolist())


def test_real_edits_change_only_their_positions(case):
    vlm, im, mask, enc, lay, base = case
    clean = _llm_input(vlm, enc, None)
    obj = lay.object_indices(mask)
    mean = clean[0, lay.positions].mean(0)
    rng = np.random.default_rng(0)
    edits = {
        "ablate object": iv.replace_with(lay, obj, mean),
        "global shuffle": iv.shuffle_within_views(lay, np.arange(lay.n_tokens), rng),
        "intra-object shuffle": iv.shuffle_within_views(lay, obj, rng),
        "padding p=1": iv.pad_within_views(lay, mask, 1, rng)[0],
    }
    for name, edit in edits.items():
        out = _llm_input(vlm, enc, iv.apply_edits([edit]))
        changed = _changed_rows(out, clean)
        assert changed, name
        assert changed <= set(edit.positions.tolist()), name


def test_shuffles_and_padding_stay_within_each_view(case):
    vlm, im, mask, enc, lay, base = case
    clean = _llm_input(vlm, enc, None)[0]
    obj = lay.object_indices(mask)
    for idx in (np.arange(lay.n_tokens), obj):
        out = _llm_input(
            vlm, enc, iv.apply_edits([iv.shuffle_within_views(lay, idx, np.random.default_rng(1))])
        )[0]
        for v in lay.views:
            pos = lay.positions[lay.token_indices(v)]
            # each view holds the same rows as before, in another order
            a = torch.sort(clean[pos].sum(-1)).values
            b = torch.sort(out[pos].sum(-1)).values
            torch.testing.assert_close(a, b)
    edit, grown = iv.pad_within_views(lay, mask, 1, np.random.default_rng(0))
    for t, s in zip(edit.positions.tolist(), edit.sources.tolist(), strict=True):
        vt = [v for v in lay.views if t in lay.positions[lay.token_indices(v)].tolist()][0]
        vs = [v for v in lay.views if s in lay.positions[lay.token_indices(v)].tolist()][0]
        assert vt.name == vs.name  # a ring cell is filled from its own view's object tokens
    src_idx = {int(i) for i in torch.searchsorted(lay.positions, edit.sources)}
    assert src_idx <= set(obj.tolist())


def test_token_sets_on_synthetic_samples(tiny_llava, synthetic_coco, tmp_path):
    import vlmloc

    samples = vlmloc.load_coco(*synthetic_coco, limit=2)
    store = ResultsStore(tmp_path, tiny_llava.model_id, "02_containerization")
    enc = tiny_llava.encode([samples[0].load_image()], [tiny_llava.prompt("classification")])
    mean = tiny_llava.input_embeddings(enc)[0].mean(0)
    params = ct.ContainerizationParams(config={"seed": 0, "n_samples": 2}, mean=mean, ig_steps=2)
    exp = ct.Containerization(tiny_llava, samples, params, store)
    sets = exp.token_sets(progress=False)
    for s in samples:
        d = sets[s.sample_id]
        k = len(d["object"])
        assert d["n_visual"] == 576 and k > 0
        assert len(d["random"]) == k and len(d["ig:classification"]) == k and len(d["ig:localization"]) == k
        assert set(d["object"]) <= set(d["object+1"]) <= set(d["object+2"])
        assert all(0 <= i < 576 for i in d["register"])
    # a second instance resumes the stored IG and register sets instead of recomputing them
    again = ct.Containerization(tiny_llava, samples, params, store)
    again.token_sets(progress=False)
    for s in samples:
        assert np.array_equal(
            again.sets[s.sample_id]["ig:localization"], sets[s.sample_id]["ig:localization"]
        )
    assert 0 < exp.token_share("object") == exp.token_share("random") == exp.token_share("ig")


# --------------------------------------------------------------------------- tables and findings


def _entry(loc, cls, se=2.0, base=None):
    e = {"loc": loc, "cls": cls, "loc_se": se, "cls_se": se, "token_share": 8.0}
    if base:
        e.update(d_loc=loc - base["loc"], d_cls=cls - base["cls"])
    return e


def _summary(
    base_loc=35.0, obj_loc=6.0, obj_cls=19.0, glob_loc=2.0, intra_loc=35.0, areas=(10.0, 20.0, 30.0)
):
    base = {"loc": base_loc, "cls": 58.0, "loc_se": 2.0, "cls_se": 2.0}
    abl = {n: _entry(base_loc, 58.0, base=base) for n in ct.ABLATIONS}
    abl["object"] = _entry(obj_loc, obj_cls, base=base)
    pad = {
        str(p): {
            "box_area": a,
            "box_area_se": 1.0,
            "container_area": 10.0 * (p + 1),
            "n_boxes": 10,
            "loc": 1.0,
            "loc_se": 1.0,
        }
        for p, a in zip(ct.PADDINGS, areas, strict=True)
    }
    shuffle = {
        "global": _entry(glob_loc, 62.0, base=base),
        "intra_object": _entry(intra_loc, 58.0, base=base),
    }
    return {
        "model_id": "m",
        "n_samples": 100,
        "baseline": base,
        "ablation": abl,
        "padding": pad,
        "shuffle": shuffle,
    }


def _paper_cell(model: str, condition: str, key: str) -> str:
    """A paper cell as the tables should write it: the paper's rate and its change from the paper's baseline."""
    value, base = RESULTS[model][condition][key], RESULTS[model]["baseline"][key]
    return f"{value:.2f} {'↑' if value > base else '↓'}{abs(value - base):.1f}"


def test_tables_put_the_papers_numbers_beside_ours():
    t = report.ablation_table(_summary())
    assert t.loc["object tokens", "LLaVA-1.5-7B Loc"] == _paper_cell(LLAVA_7B, "object_tokens", "loc")
    assert t.loc["object tokens", "InternVL-3.5-8B Cls"] == _paper_cell(INTERNVL_8B, "object_tokens", "cls")
    assert t.loc["register tokens", "LLaVA-1.5-7B Loc"] == "—"
    assert t.loc["baseline", "LLaVA-1.5-7B Cls"] == f"{RESULTS[LLAVA_7B]['baseline']['cls']:.2f}"
    assert (
        f"paper {RESULTS[LLAVA_7B]['object_padding_2']['share']:.0f}"
        in t.loc["object +2 padding", "tokens %"]
    )
    s = report.shuffle_table(_summary())
    assert s.loc["global shuffle", "LLaVA-1.5-7B Cls"] == _paper_cell(LLAVA_7B, "global_shuffle", "cls")
    assert s.loc["intra-object shuffle", "InternVL-3.5-8B Loc"] == "—"
    assert list(report.padding_table(_summary()["padding"]).index) == list(ct.PADDINGS)


def test_findings_say_whether_the_run_agrees_with_the_paper():
    agrees = report.ablation_finding(_summary())
    assert "as in the paper" in agrees and "partly" not in agrees and "unlike" not in agrees
    assert "partly as in the paper" in report.ablation_finding(_summary(obj_loc=35.0))
    assert "unlike the paper" in report.ablation_finding(_summary(obj_loc=35.0, obj_cls=58.0))
    zero = _summary(base_loc=0.0, obj_loc=0.0)
    assert "as in the paper" in report.ablation_finding(zero) and "Loc is too low" in report.ablation_finding(
        zero
    )
    zero["baseline"]["cls"] = 0.0
    assert "cannot test" in report.ablation_finding(zero)
    assert "grow with the padding, as the paper" in report.padding_finding(_summary())
    assert "do not grow" in report.padding_finding(_summary(areas=(10.0, 10.0, 10.0)))
    assert "cannot be checked" in report.padding_finding(_summary(areas=(math.nan, 1.0, 2.0)))
    assert "cannot be checked" in report.padding_finding(_summary(areas=(None, 1.0, 2.0)))
    assert "only the global shuffle" in report.shuffle_finding(_summary())
    assert "does not break" in report.shuffle_finding(_summary(glob_loc=35.0))
    for model, quoted in (
        (LLAVA_7B, "random_tokens"),
        (INTERNVL_8B, "object_tokens"),
    ):  # paper numbers from paper.py
        finding = report.ablation_finding({**_summary(), "model_id": model})
        assert f"→{RESULTS[model]['object_tokens']['loc']:.2f}" in finding
        assert f"{RESULTS[model][quoted]['cls']:.2f}" in finding
    intra = RESULTS[LLAVA_7B]["intra_object_shuffle"]["loc"]
    assert f"{intra:.2f} intra-object" in report.shuffle_finding(_summary())
    for f in (report.ablation_finding, report.padding_finding, report.shuffle_finding):
        assert f(_summary()).count(". ") == 0 and "On m," in f(_summary())  # one sentence, names the model


def test_cached_mean_embedding_is_recomputed_when_the_reference_set_changes(
    tiny_llava, synthetic_coco, tmp_path
):
    import vlmloc

    samples = vlmloc.load_coco(*synthetic_coco)
    first = [s for s in samples if s.image_id == samples[0].image_id][:1]
    other = [s for s in samples if s.image_id != samples[0].image_id][:1]
    a = iv.cached_mean_visual_embedding(tiny_llava, first, tmp_path, batch_size=2)
    cache = tmp_path / tiny_llava.model_id / "mean_visual_embedding.pt"
    assert cache.is_file() and cache.with_suffix(".json").is_file()
    assert torch.equal(iv.cached_mean_visual_embedding(tiny_llava, first, tmp_path), a)  # reused
    b = iv.cached_mean_visual_embedding(tiny_llava, other, tmp_path, progress=False)  # recomputed
    assert not torch.equal(a, b)
    assert json.loads(cache.with_suffix(".json").read_text())["images"] == [str(other[0].image_path)]


# --------------------------------------------------------------------------- the chapter itself

ROOT = Path(__file__).resolve().parents[1]
KEYS_ABLATION = {"loc", "cls", "token_share", "loc_se", "cls_se"}


@pytest.mark.notebooks
@pytest.mark.parametrize("model_id", ["toy-llava", "toy-internvl"])
def test_chapter_2_executes_and_writes_its_summary(model_id, tmp_path):
    """Papermill runs the chapter (as ``vlmloc.chapters.execute`` does) with a tiny n; the JSON has every key.

    toy-llava runs the contrast section on its precise twin; toy-internvl skips it (CI time).
    """
    import papermill as pm

    results = tmp_path / "results"
    pm.execute_notebook(
        str(ROOT / "notebooks" / "02_containerization.ipynb"),
        str(tmp_path / "02_containerization.ipynb"),
        parameters=dict(
            model_id=model_id,
            results_dir=str(results),
            n_samples=12,
            n_reference=8,
            ig_steps=2,
            device="cpu",
            progress=False,
        ),
        kernel_name="python3",
        cwd=str(ROOT),
        progress_bar=False,
    )
    summary = json.loads((results / model_id / "02_containerization.json").read_text())
    assert summary["model_id"] == model_id and summary["n_samples"] == 12 and summary["seed"] == 0
    assert {"loc", "cls"} <= set(summary["baseline"])
    assert set(summary["ablation"]) == {"object", "register", "ig", "random", "object+1", "object+2"}
    for entry in summary["ablation"].values():
        assert KEYS_ABLATION <= set(entry)
        assert 0 <= entry["loc"] <= 100 and 0 <= entry["cls"] <= 100 and 0 < entry["token_share"] <= 100
    assert set(summary["shuffle"]) == {"global", "intra_object"}
    assert all({"loc", "cls"} <= set(e) for e in summary["shuffle"].values())
    assert set(summary["padding"]) == {"0", "1", "2"}
    assert all("box_area" in e for e in summary["padding"].values())
    if model_id == "toy-llava":
        contrast = summary["contrast"]
        assert contrast["model_id"] == "toy-llava-precise" and contrast["n_samples"] == 12
        assert set(contrast["shuffle"]) == {"global", "intra_object"} and set(contrast["padding"]) == {
            "0",
            "1",
            "2",
        }
        assert (results / "toy-llava-precise" / "02_containerization").is_dir()  # its own records
        assert {"contrast_shuffle", "contrast_padding"} <= set(summary["findings"])
        assert "toy-llava-precise" in summary["findings"]["contrast_shuffle"]
    else:
        assert summary["contrast"] is None and "contrast_shuffle" not in summary["findings"]
    assert len(summary["findings"]) in (5, 7) and all(
        f"{model_id}" in f for f in summary["findings"].values()
    )
    runtime = summary["runtime_s"]  # every run of this configuration added up (one run here)
    assert summary["runtime_runs"] == 1 and "whole chapter" in runtime


def test_contrast_model_resolves_the_precise_twins_and_rejects_unknown_ids():
    from vlmloc.params import ParameterError

    assert ct.contrast_model("toy-llava") == "toy-llava-precise"
    assert ct.contrast_model("toy-internvl", "auto") is None  # CI time: ask for its twin by name
    assert ct.contrast_model("toy-internvl", "toy-internvl-precise") == "toy-internvl-precise"
    assert ct.contrast_model("toy-llava-precise") is None  # the precise toys have no twin
    assert ct.contrast_model("llava-hf/llava-1.5-7b-hf") is None
    assert ct.contrast_model("toy-llava", "") is None and ct.contrast_model("toy-llava", None) is None
    assert ct.contrast_model("llava-hf/llava-1.5-7b-hf", "toy-llava-precise") == "toy-llava-precise"
    with pytest.raises(ParameterError, match="contrast_model_id 'toy-nope'"):
        ct.contrast_model("toy-llava", "toy-nope")


def _containers(model_id: str, base: float, intra: float, areas: tuple[float, float, float]) -> dict:
    entry = lambda loc: {"loc": loc, "cls": 80.0, "loc_se": 2.0, "cls_se": 2.0, "d_loc": loc - base}  # noqa: E731
    return {
        "model_id": model_id,
        "baseline": {"loc": base, "cls": 80.0, "loc_se": 2.0, "cls_se": 2.0},
        "shuffle": {"global": entry(1.0), "intra_object": entry(intra)},
        "padding": {
            str(p): {
                "box_area": a,
                "box_area_se": 0.5,
                "container_area": 10.0 + 5 * p,
                "loc": base,
                "loc_se": 2.0,
            }
            for p, a in enumerate(areas)
        },
    }


def test_contrast_findings_say_which_toy_the_intra_object_shuffle_hurts():
    weak = _containers("toy-llava", 30.0, 29.0, (10.0, 14.0, 18.0))
    precise = _containers("toy-llava-precise", 75.0, 30.0, (10.0, 10.5, 11.0))
    f = report.contrast_findings(weak, precise)
    assert "costs toy-llava 1.0 points" in f["contrast_shuffle"] and "45.0 points" in f["contrast_shuffle"]
    assert "hurts toy-llava-precise more" in f["contrast_shuffle"]
    assert "+8.0" in f["contrast_padding"] and "toy-llava follows the container more" in f["contrast_padding"]
    same = report.contrast_findings(weak, _containers("toy-llava-precise", 31.0, 29.5, (10.0, 14.0, 18.2)))
    assert "do not differ beyond 2 standard errors" in same["contrast_shuffle"]
    assert "do not differ" in same["contrast_padding"]
    table = report.contrast_table(weak, precise)
    assert list(table.columns) == ["toy-llava", "toy-llava-precise"]
    assert table.loc["intra-object shuffle Loc %", "toy-llava-precise"].startswith("30.00")


# --------------------------------------------------------------------------- the notebook's examples


def test_padding_examples_are_chosen_by_boxes_then_growth():
    from types import SimpleNamespace

    samples = [SimpleNamespace(sample_id=i) for i in "abcd"]
    areas = {  # box area per p = 0, 1, 2 (None: no parsable box)
        "a": (10.0, 12.0, 14.0),  # a box at every p, grows by 4
        "b": (10.0, None, 30.0),  # grows most, but misses a box
        "c": (20.0, 30.0, 40.0),  # a box at every p, grows by 20
        "d": (None, None, None),
    }
    by_id = {p: {i: {"box_area": a[p]} for i, a in areas.items()} for p in ct.PADDINGS}
    assert [s.sample_id for s in ct.padding_example_order(samples, by_id)] == ["c", "a", "b", "d"]

    def example(*boxes):
        return {"p": {p: {"pred": b, "area": 5.0 * (p + 1) if b else 0.0} for p, b in enumerate(boxes)}}

    box = (0, 0, 1, 1)
    text = report.padding_examples_finding("m", [example(box, box, box), example(box, None, box)])
    assert text.startswith("In the 1 examples shown") and "covers 5.0%, 10.0%, 15.0% of the image" in text
    assert "(2 of 3 panels have a box)" in report.padding_examples_finding("m", [example(box, None, box)])


def test_the_example_object_is_the_largest_of_the_first_twenty():
    from types import SimpleNamespace

    from vlmloc.experiments.base import largest_object

    samples = [SimpleNamespace(sample_id=i) for i in range(25)]
    sets = {i: {"object": np.arange(i % 7 if i < 20 else 50)} for i in range(25)}
    assert largest_object(samples, sets).sample_id == 6  # the first of the largest; 20-24 are not looked at
