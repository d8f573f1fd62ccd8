"""Chapter 4: position probes streamed from every site, their labels, the random-init control, the summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vlmloc
from PIL import Image
from vlmloc import probes
from vlmloc.experiments import ch04_position_decoding as pd4
from vlmloc.geometry import ImageLayout, View
from vlmloc.probes import (
    DeviceHiddenStates,
    ProbeBank,
    ProbeParams,
    image_batches,
    read_sites,
    site_features,
    site_labels,
    split_images,
    tower_grid,
)
from vlmloc.report import ch04 as report
from vlmloc.scoring import position_ids
from vlmloc.sites import hidden_sites


def _layout(n_tiles: int, side: int = 3) -> ImageLayout:
    """InternVL-like views: ``n_tiles`` local tiles then a global thumbnail (one global view when 0)."""
    if n_tiles == 0:
        views = [View("image", "global", side, side, 0, (0, 0, 10, 10))]
    else:
        views = [
            View(f"tile {i}", "local", side, side, i * side * side, (0, 0, 10, 10)) for i in range(n_tiles)
        ]
        views.append(View("thumbnail", "global", side, side, n_tiles * side * side, (0, 0, 10, 10)))
    return ImageLayout(torch.arange(sum(v.n_tokens for v in views)), views, (10, 10))


# --------------------------------------------------------------------------- labels (no model)


def test_labels_are_row_major_per_view_with_kinds_and_images():
    lab = site_labels("llm", [_layout(0), _layout(2)], tower_side=6)
    assert (lab.rows, lab.cols) == (3, 3)
    assert lab.row[:9].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert lab.col[:9].tolist() == [0, 1, 2] * 3
    assert len(lab.row) == 9 + 3 * 9
    assert lab.kind.tolist() == [0] * 9 + [1] * 18 + [0] * 9  # image a: global; b: two tiles, thumbnail
    assert lab.image.tolist() == [0] * 9 + [1] * 27  # every view of an image counts for that image
    tower = site_labels("tower", [_layout(0)], tower_side=6)
    assert (tower.rows, tower.cols) == (6, 6) and tower.row.tolist() == [k // 6 for k in range(36)]


def test_features_drop_the_cls_token_and_keep_view_order():
    lays = [_layout(1, side=2)]  # two views of 2x2 tokens
    tower = torch.arange(2 * 17 * 1, dtype=torch.float32).view(2, 17, 1)  # CLS + a 4x4 patch grid per view
    x = site_features("tower.0", tower, lays, tower_side=4)
    assert x.shape == (32, 1) and x[0, 0] == 1 and x[16, 0] == 18  # token 0 of each view (the CLS) is gone
    proj = torch.arange(8, dtype=torch.float32).view(2, 4, 1)
    assert site_features("projector", proj, lays, 4)[:, 0].tolist() == list(range(8))
    with pytest.raises(ValueError, match="views"):
        site_features("projector", proj[:1], lays, 4)


def test_split_is_by_image_seeded_and_disjoint():
    paths = [f"/x/{i}.png" for i in range(50)]
    train, test = split_images(paths, 30, 10, seed=1)
    assert len(train) == 30 and len(test) == 10 and not set(train) & set(test)
    assert (train, test) == split_images(list(reversed(paths)), 30, 10, seed=1)
    assert split_images(paths, 30, 10, seed=2) != (train, test)
    with pytest.raises(ValueError, match="only 50"):
        split_images(paths, 45, 10, seed=1)


def test_corners_edges_interior():
    a = np.zeros((4, 5))
    a[[0, 0, -1, -1], [0, -1, 0, -1]] = 100
    a[1:-1, 1:-1] = 50
    assert pd4.corner_interior(a) == {"corners": 100.0, "edges": 0.0, "interior": 50.0}
    assert pd4.corner_interior(np.ones((2, 2)))["interior"] is None
    # binomial SEs over the group's tokens: 6 interior cells x 24 tokens at 50%
    se = pd4.corner_interior(a, n_per_cell=24)["se"]
    assert se["interior"] == pytest.approx(100 * (0.25 / (6 * 24)) ** 0.5, abs=0.01)
    assert se["corners"] == 0.0 and se["edges"] == 0.0


def _regions(corners: float, edges: float, interior: float, se: float = 1.0) -> dict:
    return {"corners": corners, "edges": edges, "interior": interior,
            "se": {"corners": se, "edges": se, "interior": se}}  # fmt: skip


def test_corners_stand_out_only_against_the_edges_too():
    assert report.corner_verdict(_regions(60, 40, 20)) == "corners"
    assert report.corner_verdict(_regions(60, 59, 20)) == "border", "beating only the interior is the border"
    assert report.corner_verdict(_regions(22, 21, 20)) == "none"
    assert report.corner_verdict(_regions(60, 40, 20, se=10)) == "border", "within two SEs of the edges"
    summary = {
        "model_id": "m",
        "corners": {"projector": {"site": "projector", "cell_acc": _regions(60, 59, 20)}},
    }
    assert "border advantage" in report.corner_finding(summary)


def _per_image(n, row_ok, col_ok) -> dict:
    n = list(n)
    return {"row_acc": 100 * sum(row_ok) / sum(n), "col_acc": 100 * sum(col_ok) / sum(n),
            "per_image": {"n": n, "row_ok": list(row_ok), "col_ok": list(col_ok), "cell_ok": [0] * len(n)}}  # fmt: skip


def test_selectivity_is_paired_by_image_with_a_clustered_standard_error():
    real = _per_image([10, 10, 10, 10], [9, 8, 10, 7], [5, 6, 5, 4])
    ctrl = _per_image([10, 10, 10, 10], [3, 2, 4, 3], [2, 3, 2, 1])
    c = pd4.selectivity(real, ctrl)
    d = np.array([9 + 5 - 3 - 2, 8 + 6 - 2 - 3, 10 + 5 - 4 - 2, 7 + 4 - 3 - 1], float)  # per image, of 20
    assert c["selectivity"] == pytest.approx(100 * d.sum() / 80)
    se = 100 * np.sqrt(4 / 3 * ((d - d.sum() / 80 * 20) ** 2).sum()) / 80
    assert c["se"] == pytest.approx(se, abs=1e-3)
    assert c["acc"] - c["random_init_acc"] == pytest.approx(c["selectivity"], abs=1e-3)
    same = pd4.selectivity(real, real)
    assert same["selectivity"] == 0 and same["se"] == 0
    with pytest.raises(ValueError, match="same tokens"):
        pd4.selectivity(real, _per_image([10, 10, 10], [1, 1, 1], [1, 1, 1]))


def test_a_stage_passes_only_beyond_two_standard_errors_and_five_points_and_require_control_says_why():
    sites = [{"site": "llm.3"}]
    peaks = {"tower": {"site": "tower.0"}, "projector": {"site": "projector"}, "llm": {"site": "llm.3"}}
    real = {"llm.3": _per_image([10] * 4, [9, 8, 10, 7], [5, 6, 5, 4])}
    steady = {"llm.3": _per_image([20] * 4, [19, 18, 20, 17], [5, 6, 5, 4])}  # +1 of 40 on every image
    cases = [  # +27.5 points passes; no gain fails; +2.5 points with SE 0 fails the five-point floor
        (real, [3, 2, 4, 3], [10] * 4, True),
        (real, [9, 8, 10, 7], [10] * 4, False),
        (steady, [18, 17, 19, 16], [20] * 4, False),
    ]
    for trained, ctrl_rows, n, ok in cases:
        ctrl = {"llm.3": _per_image(n, ctrl_rows, [5, 6, 5, 4])}
        c = pd4._control_summary(sites, peaks, trained, ctrl)
        assert set(c["stages"]) == {"llm"} and c["stages"]["llm"]["ok"] is ok
        summary = {"model_id": "m", "control": c}
        if ok:
            assert pd4.require_control(summary, "llm")["site"] == "llm.3"
            assert "passes this control" in report.control_finding(summary)
        else:
            with pytest.raises(pd4.ControlFailed, match="not what the llm's training put there"):
                pd4.require_control(summary, "llm")
            assert "fails this control" in report.control_finding(summary)
    with pytest.raises(pd4.ControlFailed, match="no random-init control"):
        pd4.require_control({"model_id": "m", "control": None}, "llm")


def test_paper_scale_memory_matches_the_issue():
    c = pd4.paper_scale_cost("llava-hf/llava-1.5-7b-hf")
    assert 230 < c["one_llm_layer_all_train_gb"] < 245  # "about 240 GB per layer"
    assert c["forwards"] == 10 * 50_000 + 10_000


# --------------------------------------------------------------------------- on the toys


@pytest.fixture(scope="module", params=["toy-llava", "toy-internvl"])
def toy(request):
    return vlmloc.load_model(request.param, device="cpu")


@pytest.fixture(scope="module")
def image_paths():
    return pd4.probe_images(*vlmloc.resolve_data(None, None))


def test_reading_every_site_is_a_null_edit_and_reads_what_hf_returns(toy, image_paths):
    images = [Image.open(p).convert("RGB") for p in image_paths[:8]]
    multi = [im for im in images if len(toy.views(im.size)) > 1]
    images = (multi[:1] + [im for im in images if len(toy.views(im.size)) == 1])[:3]
    if toy.spec.family == "internvl":
        assert len(toy.views(images[0].size)) > 1, (
            "InternVL's check needs an image with tiles and a thumbnail"
        )
    sites = [s.name for s in hidden_sites(toy.n_vision_layers, toy.n_layers)]
    enc = toy.encode(images, [toy.prompt("classification")] * 3)
    lays = toy.layouts(enc, images)
    read = DeviceHiddenStates(sites, [lay.positions for lay in lays])
    assert (toy.logits(enc, interventions=[read]) - toy.logits(enc)).abs().max() < 1e-5
    with torch.no_grad():
        out = toy.hf(**enc, position_ids=position_ids(enc["attention_mask"]), output_hidden_states=True)
    for i in range(toy.n_layers - 1):  # HF's last entry is after the final norm
        for row, lay in enumerate(lays):
            assert torch.allclose(
                out.hidden_states[i + 1][row, lay.positions], read.values[f"llm.{i}"][row], atol=1e-5
            )
    side = tower_grid(toy)
    proj = site_features("projector", read.values["projector"], lays, side)
    assert torch.allclose(proj, site_features("llm.input", read.values["llm.input"], lays, side), atol=1e-6)
    values, layouts = read_sites(toy, images, sites)
    for name in sites:
        n = site_features(name, values[name], layouts, side).shape[0]
        assert n == len(site_labels(name.partition(".")[0], layouts, side).row)


def _weights(bank: ProbeBank) -> list[torch.Tensor]:
    return [p.weight.detach().clone() for p in bank.probes]


def test_streaming_equals_the_cache_and_an_interrupted_run_resumes_exactly(toy_llava, image_paths, tmp_path):
    batches = image_batches(image_paths[:12], 4)
    params = ProbeParams(epochs=2, lr=1e-2, token_batch=256, seed=5, group_sites=3)
    stream = ProbeBank.for_model(toy_llava, params)
    stream.fit(toy_llava, batches)
    cached = ProbeBank.for_model(toy_llava, ProbeParams(**{**params.__dict__, "cache_mb": 500}))
    cached.fit(toy_llava, batches)
    # what the cache saves, counted: the streamed bank runs every batch every epoch, the cached one once
    assert stream.forwards == 2 * len(batches) and stream.cache_hits == 0
    assert cached.forwards == len(batches) and cached.cache_hits == len(batches)
    assert stream.images_forwarded == 2 * 12 and cached.images_forwarded == 12
    assert [len(g) for g in stream.groups] == [
        3,
        1,
        3,
        3,
        3,
        1,
    ]  # 4 tower sites, then projector + 9 LLM sites
    for a, b in zip(_weights(stream), _weights(cached), strict=True):
        assert torch.allclose(a, b, atol=1e-6)

    ckpt = tmp_path / "bank.pt"

    def stop(epoch, losses):
        raise KeyboardInterrupt

    first = ProbeBank.for_model(toy_llava, params)
    with pytest.raises(KeyboardInterrupt):
        first.fit(toy_llava, batches, checkpoint=ckpt, on_epoch=stop)
    resumed = ProbeBank.for_model(toy_llava, params)
    resumed.fit(toy_llava, batches, checkpoint=ckpt)
    assert resumed.epochs_done == 2
    for a, b in zip(_weights(stream), _weights(resumed), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="other sites or parameters"):
        ProbeBank.for_model(toy_llava, ProbeParams(epochs=3)).load(ckpt)


def test_probes_read_positions_and_keep_per_image_counts(toy_llava, image_paths, tmp_path):
    train, test = split_images(image_paths, 32, 16, seed=0)
    store = vlmloc.store.ResultsStore(tmp_path, "toy-llava", "04_position_decoding")
    params = ProbeParams(epochs=2, lr=1e-2, token_batch=1024)
    results, bank = pd4.run_probes(
        toy_llava, train, test, params, store, {"t": 1}, batch_size=16, progress=False
    )
    assert bank is not None
    s = pd4.position_summary("toy-llava", results, "llava")
    assert [x["stage"] for x in s["sites"]] == ["tower"] * 4 + ["projector"] + ["llm"] * 9
    assert [x["layer"] for x in s["sites"]][4:7] == [0, -1, 0]
    chance = s["chance"]["row"]
    assert chance == pytest.approx(100 / 12, abs=1e-3)
    first = s["sites"][0]
    assert first["row_acc"] > 2 * chance, "the first tower layer still holds the position embedding"
    for x in s["sites"]:
        assert x["cell_acc"] <= min(x["row_acc"], x["col_acc"])
        r = results[x["site"]]
        per_image = r["per_image"]
        assert len(per_image["n"]) == len(test) and sum(per_image["n"]) == r["n_tokens"]
        assert 100 * sum(per_image["row_ok"]) / r["n_tokens"] == pytest.approx(x["row_acc"], abs=1e-3)
    assert s["control"] is None and s["control_ok"] is None  # no control records given
    assert set(s["corners"]) == {"projector", "best_llm"}
    assert s["peaks"]["llm"]["site"].startswith("llm.") and s["peaks"]["llm"]["site"] != "llm.input"
    for f in (report.decoding_finding, report.tower_finding, report.corner_finding):
        assert "toy-llava" in f(s)
    again, none = pd4.run_probes(
        toy_llava, train, test, params, store, {"t": 1}, batch_size=16, progress=False
    )
    assert none is None and again.keys() == results.keys()  # resumed from the records, no model run
    assert again["llm.3"]["row_acc"] == results["llm.3"]["row_acc"]


# --------------------------------------------------------------------------- the random-init control


def test_a_random_init_copy_changes_its_stage_only(toy, image_paths):
    images = [Image.open(p).convert("RGB") for p in image_paths[:2]]
    trained = toy.hf.state_dict()
    for stage, prefix in (("tower", "model.vision_tower."), ("projector", "model.multi_modal_projector."),
                          ("llm", "model.language_model.")):  # fmt: skip
        twin = pd4.random_init_copy(toy, stage, seed=0)
        copied = twin.hf.state_dict()
        assert copied.keys() == trained.keys()
        changed = {k for k in trained if not torch.equal(trained[k], copied[k])}
        assert changed and all(k.startswith(prefix) or k == "lm_head.weight" for k in changed), stage
        again = pd4.random_init_copy(toy, stage, seed=0).hf.state_dict()
        assert all(torch.equal(copied[k], again[k]) for k in changed), "the copy is seeded"
        check = pd4.check_copy(toy, twin, stage, images)
        assert (check["input"] is None) == (stage == "tower")
        assert (check["input"] or 0.0) < 1e-6 and check["stage"] > 1e-3, (stage, check)
    assert pd4.control_sites(toy, "llm") == [f"llm.{i}" for i in range(toy.n_layers)]
    assert pd4.control_sites(toy, "projector") == ["projector"]


def _leaky(site_features):
    """``site_features`` with the token's cell appended one-hot: a probe that reads the label, not the model."""

    def leaky(name, value, layouts, tower_side):
        x = site_features(name, value, layouts, tower_side)
        lab = site_labels(name.partition(".")[0], layouts, tower_side)
        cell = torch.nn.functional.one_hot(lab.row * lab.cols + lab.col, lab.rows * lab.cols)
        return torch.cat([x, 10 * cell.to(x)], -1)

    return leaky


def test_the_control_passes_the_toy_and_fails_a_probe_that_reads_the_label(
    toy_llava, image_paths, tmp_path, monkeypatch
):
    train, test = split_images(image_paths, 24, 12, seed=0)
    params = ProbeParams(epochs=2, lr=1e-2, token_batch=512, cache_mb=200)

    def run(tag: str) -> tuple[dict, dict]:
        store = vlmloc.store.ResultsStore(tmp_path / tag, "toy-llava", "04_position_decoding")
        results, _ = pd4.run_probes(toy_llava, train, test, params, store, {"t": 1}, progress=False)
        control, work = pd4.run_control(
            toy_llava,
            train,
            test,
            params,
            store,
            {"t": 1},
            seed=0,
            stages=("projector", "llm"),
            progress=False,
        )
        return pd4.position_summary("toy-llava", results, "llava", control=control), work

    honest, work = run("honest")
    # two training batches read once and then from the cache, one test batch
    assert set(work) == {"projector", "llm"}
    assert all(w["forwards"] == 3 and w["cache_hits"] == 2 for w in work.values())
    entry = pd4.require_control(honest, "llm")  # the trained LLM adds position a random LLM does not
    assert entry["site"] == honest["peaks"]["llm"]["site"] and entry["selectivity"] > 10
    assert set(honest["control_ok"]) == {"projector", "llm"}
    assert {s["site"] for s in honest["sites"] if "random_init" in s} == {"projector"} | {
        f"llm.{i}" for i in range(toy_llava.n_layers)
    }

    monkeypatch.setattr(probes, "site_features", _leaky(probes.site_features))
    leaky, _ = run("leaky")
    best = leaky["peaks"]["llm"]
    assert min(best["row_acc"], best["col_acc"]) > 95, "the side channel gives the probe the label"
    assert not any(leaky["control_ok"].values()), leaky["control"]["stages"]
    with pytest.raises(pd4.ControlFailed):
        pd4.require_control(leaky, "llm")


def test_paper_scale_rows_project_each_paper_model_at_50k_10k():
    from vlmloc.paper import POSITION_PEAKS, POSITION_PROBES

    rows = report.paper_scale_rows()
    assert [r["model"] for r in rows] == [f"{m} at 50k/10k" for m in POSITION_PEAKS]
    forwards = POSITION_PROBES["epochs"] * POSITION_PROBES["n_train"] + POSITION_PROBES["n_test"]
    assert all(
        r["image forwards"] == forwards and r["time"].endswith("GPU hours at 150 TFLOP/s") for r in rows
    )
    assert any("(batch 4)" in r["activations per batch"] for r in rows)  # InternVL's batch


def _view_site(site: str, global_row: float, local_row: float) -> dict:
    kinds = {"global": global_row, "local": local_row}
    return {
        "site": site,
        "by_kind": {k: {"row_acc": r, "col_acc": 50.0, "cell_acc": 25.0} for k, r in kinds.items()},
    }


def test_the_views_table_and_finding_split_global_from_local_and_say_nothing_on_one_view():
    one_view = {"model_id": "toy-llava", "sites": [{"site": "llm.0", "by_kind": {"only": {}}}]}
    assert report.views_table(one_view) is None and report.views_finding(one_view) is None
    summary = {"model_id": "toy-internvl",
               "sites": [_view_site("tower.0", 90.0, 10.0), _view_site("llm.0", 60.0, 50.0),
                         _view_site("llm.1", 40.0, 46.0)]}  # fmt: skip
    table = report.views_table(summary)
    assert list(table.index) == ["tower.0", "llm.0", "llm.1"] and table.loc["llm.1", "local row"] == 46.0
    # the LLM's layers only (the tower's +80 would flip the sign): (10 - 6) / 2 = 2 points higher
    assert "2.0 points higher on the global view" in report.views_finding(summary)
    summary["sites"][1] = _view_site("llm.0", 40.0, 50.0)  # (-10 - 6) / 2: 8 points lower
    assert "8.0 points lower" in report.views_finding(summary)


def test_the_run_record_holds_the_settings_the_probes_ran_with():
    params = ProbeParams(epochs=3, lr=0.5, token_batch=64, seed=4, cache_mb=0.0)
    config = {"model": "m@abc", "dtype": "float32", "data": "/d/annotations.json"}
    rec = pd4.run_record(["a", "b", "c"], ["d"], params, config, batch_size=2, batch_mb=1.23456,
                         control_work={}, control_cache_mb=16)  # fmt: skip
    assert rec == {"n_train": 3, "n_test": 1, "epochs": 3, "batch_size": 2, "lr": 0.5, "token_batch": 64,
                   "streamed": True, "batch_activation_mb": 1.23, "weights": "m@abc", "dtype": "float32",
                   "data": "/d/annotations.json", "seed": 4, "control_work": {}, "control_cache_mb": 16}  # fmt: skip
    assert pd4.run_record([], [], ProbeParams(cache_mb=8.0), config, batch_size=1, batch_mb=0,
                          control_work={}, control_cache_mb=0)["streamed"] is False  # fmt: skip
