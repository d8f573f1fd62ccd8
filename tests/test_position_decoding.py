"""Chapter 4: position probes streamed from every site, their labels, and the chapter's summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vlmloc
from PIL import Image
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


def test_labels_are_row_major_per_view_with_kinds():
    lab = site_labels("llm", [_layout(0), _layout(2)], ["a", "b"], seed=0, tower_side=6)
    assert (lab.rows, lab.cols) == (3, 3)
    assert lab.row[:9].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert lab.col[:9].tolist() == [0, 1, 2] * 3
    assert len(lab.row) == 9 + 3 * 9
    assert lab.kind.tolist() == [0] * 9 + [1] * 18 + [0] * 9  # image a: global; b: two tiles, thumbnail
    tower = site_labels("tower", [_layout(0)], ["a"], seed=0, tower_side=6)
    assert (tower.rows, tower.cols) == (6, 6) and tower.row.tolist() == [k // 6 for k in range(36)]


def test_control_labels_are_one_fixed_permutation_per_view_and_image():
    lab = site_labels("llm", [_layout(1, side=4)], ["img"], seed=3, tower_side=8)
    for v in range(2):
        sl = slice(16 * v, 16 * (v + 1))
        true = sorted(zip(lab.row[sl].tolist(), lab.col[sl].tolist(), strict=True))
        ctrl = sorted(zip(lab.ctrl_row[sl].tolist(), lab.ctrl_col[sl].tolist(), strict=True))
        assert ctrl == true, "a permutation keeps every cell's label once"
    assert not torch.equal(lab.ctrl_row * 4 + lab.ctrl_col, lab.row * 4 + lab.col)
    # the same in every epoch and whatever else is in the batch
    alone = site_labels("llm", [_layout(1, side=4)], ["img"], seed=3, tower_side=8)
    with_other = site_labels(
        "llm", [_layout(0, side=4), _layout(1, side=4)], ["x", "img"], seed=3, tower_side=8
    )
    assert torch.equal(alone.ctrl_row, with_other.ctrl_row[16:]) and torch.equal(
        alone.ctrl_col, with_other.ctrl_col[16:]
    )
    other_seed = site_labels("llm", [_layout(1, side=4)], ["img"], seed=4, tower_side=8)
    assert not torch.equal(alone.ctrl_row * 4 + alone.ctrl_col, other_seed.ctrl_row * 4 + other_seed.ctrl_col)


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
        assert n == len(site_labels(name.partition(".")[0], layouts, ["a", "b", "c"], 0, side).row)


def _weights(bank: ProbeBank) -> list[torch.Tensor]:
    return [p.weight.detach().clone() for p in bank.probes]


def test_streaming_equals_the_cache_and_an_interrupted_run_resumes_exactly(toy_llava, image_paths, tmp_path):
    batches = image_batches(image_paths[:12], 4)
    params = ProbeParams(epochs=2, lr=1e-2, token_batch=256, seed=5, group_sites=3)
    stream = ProbeBank.for_model(toy_llava, params)
    stream.fit(toy_llava, batches)
    cached = ProbeBank.for_model(toy_llava, ProbeParams(**{**params.__dict__, "cache_mb": 500}))
    cached.fit(toy_llava, batches)
    assert cached.seconds["forward"] < stream.seconds["forward"]  # later epochs read the cache
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


def test_probes_read_positions_above_their_control_and_summarize(toy_llava, image_paths, tmp_path):
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
        assert abs(x["control"]["row_acc"] - 100 / x["grid"][0]) < 5
        assert x["cell_acc"] <= min(x["row_acc"], x["col_acc"])
    assert set(s["corners"]) == {"projector", "best_llm"}
    assert s["peaks"]["llm"]["site"].startswith("llm.") and s["peaks"]["llm"]["site"] != "llm.input"
    for f in (report.decoding_finding, report.tower_finding, report.corner_finding):
        assert "toy-llava" in f(s)
    again, none = pd4.run_probes(
        toy_llava, train, test, params, store, {"t": 1}, batch_size=16, progress=False
    )
    assert none is None and again.keys() == results.keys()  # resumed from the records, no model run
    assert again["llm.3"]["row_acc"] == results["llm.3"]["row_acc"]
