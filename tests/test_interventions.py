"""Interventions on the visual tokens at the LLM input: token sets, edits, and null edits through nnsight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vlmloc import interventions as iv
from vlmloc.geometry import ImageLayout, View

# --------------------------------------------------------------------------- edits on plain tensors


def _toy_layout():
    """A 3 x 3 view whose 9 tokens sit at sequence positions 4..12, image 30 x 30 (10 px cells)."""
    view = View("image", "global", 3, 3, 0, (0.0, 0.0, 30.0, 30.0))
    return ImageLayout(torch.arange(4, 13), [view], (30, 30))


def test_token_edit_takes_values_or_sources():
    with pytest.raises(ValueError, match="either values or sources"):
        iv.TokenEdit(torch.tensor([1]))
    with pytest.raises(ValueError, match="either values or sources"):
        iv.TokenEdit(torch.tensor([1]), values=torch.zeros(1, 2), sources=torch.tensor([0]))


def test_replace_with_writes_exactly_the_chosen_positions():
    lay = _toy_layout()
    emb = torch.randn(2, 16, 5)
    v = torch.full((5,), 7.0)
    e = iv.replace_with(lay, np.array([1, 4]), v)
    assert e.positions.tolist() == [5, 8]  # visual tokens 1 and 4 sit at positions 4 + 1, 4 + 4
    out = iv.apply_edits([None, e])(emb)
    assert (out[1, [5, 8]] == 7.0).all()
    changed = (out != emb).any(-1)
    assert changed.nonzero().tolist() == [[1, 5], [1, 8]]  # row 0 and every other position untouched
    assert not (emb == 7.0).any(), "apply_edits must not edit its input in place"


def test_copy_from_reads_the_unedited_embeddings():
    lay = _toy_layout()
    emb = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1).repeat(1, 1, 3)
    swap = iv.copy_from(lay, np.array([0, 1]), np.array([1, 0]))  # swap visual tokens 0 and 1
    out = iv.apply_edits([swap])(emb)
    assert out[0, :, 0].tolist() == [0, 1, 2, 3, 5, 4, *range(6, 16)]


def test_permute_is_a_permutation_of_the_chosen_tokens():
    lay = _toy_layout()
    emb = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1)
    idx = np.array([0, 2, 3, 5, 8])
    out = iv.apply_edits([iv.permute(lay, idx, np.random.default_rng(0))])(emb)
    pos = (idx + 4).tolist()
    assert sorted(out[0, pos, 0].tolist()) == sorted(pos)  # the same vectors, reordered
    others = [p for p in range(16) if p not in pos]
    assert out[0, others, 0].tolist() == others
    # over a few seeds the shuffle moves something (a 5-permutation is the identity 1 time in 120)
    moved = [
        not torch.equal(iv.apply_edits([iv.permute(lay, idx, np.random.default_rng(s))])(emb), emb)
        for s in range(5)
    ]
    assert any(moved)
    one = iv.apply_edits([iv.permute(lay, np.array([3]), np.random.default_rng(0))])(emb)
    assert torch.equal(one, emb)


def test_random_indices():
    views = [
        View("tile 0", "local", 2, 2, 0, (0.0, 0.0, 2.0, 2.0)),
        View("thumbnail", "global", 2, 2, 4, (0.0, 0.0, 2.0, 2.0)),
    ]
    lay = ImageLayout(torch.arange(10, 18), views, (2, 2))
    rng = np.random.default_rng(0)
    idx = iv.random_indices(lay, 3, rng)
    assert len(set(idx.tolist())) == 3 and idx.tolist() == sorted(idx.tolist()) and set(idx) <= set(range(8))
    assert set(iv.random_indices(lay, 2, rng, kind="global").tolist()) <= {4, 5, 6, 7}
    assert iv.random_indices(lay, 99, rng, kind="local").tolist() == [0, 1, 2, 3]  # k capped at the pool


def test_grown_indices_and_padding_with_object_copies():
    view = View("image", "global", 5, 5, 0, (0.0, 0.0, 50.0, 50.0))
    lay = ImageLayout(torch.arange(100, 125), [view], (50, 50))
    mask = np.zeros((50, 50), bool)
    mask[22:28, 21:29] = True  # inside cell (2, 2) = x, y in [20, 30): token 12
    assert lay.object_indices(mask).tolist() == [12]
    ring = [6, 7, 8, 11, 13, 16, 17, 18]  # the 8 neighbours of cell (2, 2)
    assert iv.grown_indices(lay, mask, 0).tolist() == [12]
    assert iv.grown_indices(lay, mask, 1).tolist() == sorted([12, *ring])
    assert len(iv.grown_indices(lay, mask, 2)) == 25
    edit, grown = iv.pad_with_object_copies(lay, mask, 1, np.random.default_rng(0))
    assert grown.tolist() == sorted([12, *ring])
    assert sorted(edit.positions.tolist()) == [100 + i for i in ring]
    assert edit.sources.tolist() == [112] * 8  # the only object token, copied into every ring cell
    empty, grown0 = iv.pad_with_object_copies(lay, mask, 0, np.random.default_rng(0))
    assert len(empty.positions) == 0 and grown0.tolist() == [12]


def test_register_indices_are_high_norm_outliers():
    vis = torch.ones(30, 4)
    vis[7] *= 50.0  # norm 100 against 2 everywhere else
    assert iv.register_indices(vis).tolist() == [7]
    assert iv.register_indices(torch.ones(30, 4)).tolist() == []  # no outlier when all are equal


# --------------------------------------------------------------------------- through the model (nnsight)


def _square(vlm):
    # one view per image: 336 px for LLaVA, one 448 tile for InternVL (keeps the sequences short)
    return 336 if vlm.family.name == "llava" else 448


def _one(vlm, colour=(200, 30, 30)):
    im = Image.new("RGB", (_square(vlm),) * 2, colour)
    im.paste((20, 20, 220), (40, 60, 140, 200))
    enc = vlm.encode([im], [vlm.prompt("localization", "star")])
    return im, enc, vlm.layouts(enc, [im])[0]


def test_null_edits_leave_logits_unchanged(tiny_vlm):
    im, enc, lay = _one(tiny_vlm)
    base = tiny_vlm.logits(enc)
    assert base.shape[:2] == enc["input_ids"].shape
    emb = tiny_vlm.input_embeddings(enc)
    idx = np.arange(lay.n_tokens)
    k = 17
    null_edits = {
        "clone": lambda e: e.clone(),
        "copy_from identity": iv.apply_edits([iv.copy_from(lay, idx, idx)]),
        "replace_with own embedding": iv.apply_edits([iv.replace_with(lay, [k], emb[0, lay.positions[k]])]),
        "permute one token": iv.apply_edits([iv.permute(lay, [k], np.random.default_rng(0))]),
    }
    for name, edit in null_edits.items():
        kind = iv.InputEdit(edit)
        out = tiny_vlm.logits(enc, interventions=[kind])
        assert (out - base).abs().max() < 1e-5, name
        assert kind.calls == {("embeds",): 1}, f"{name}: the edit must run, once, on the LLM input"
    # and a real edit of the same token is not null: it is visible at the last position
    real = tiny_vlm.logits(
        enc, edit=iv.apply_edits([iv.replace_with(lay, [k], 10 * emb[0, lay.positions[k]])])
    )
    assert (real[0, -1] - base[0, -1]).abs().max() > 1e-4


def test_null_edit_generation_matches_plain_generation(tiny_vlm):
    _, enc, lay = _one(tiny_vlm)
    idx = np.arange(lay.n_tokens)
    calls = []

    def null(e):
        calls.append(tuple(e.shape))
        return iv.apply_edits([iv.copy_from(lay, idx, idx)])(e)

    plain = tiny_vlm.generate(enc, max_new_tokens=4)
    kind = iv.InputEdit(null)
    edited = tiny_vlm.generate(enc, max_new_tokens=4, interventions=[kind])
    assert edited == plain
    # the edit runs once, on the prefill (the whole prompt), not on the decoding steps
    assert calls == [(1, enc["input_ids"].shape[1], tiny_vlm.config.text_config.hidden_size)]
    assert kind.calls == {("embeds",): 1}  # and the executor counted that one call


def test_real_edit_on_llm_input_embeddings(tiny_vlm):
    _, enc, lay = _one(tiny_vlm)
    emb = tiny_vlm.input_embeddings(enc)
    assert emb.shape == (1, enc["input_ids"].shape[1], tiny_vlm.config.text_config.hidden_size)
    chosen = np.array([0, 5, lay.n_tokens - 1])
    v = torch.full((emb.shape[-1],), 3.5)
    out = iv.apply_edits([iv.replace_with(lay, chosen, v)])(emb)
    changed = (out != emb).any(-1)[0].nonzero().squeeze(-1).tolist()
    assert changed == lay.positions[chosen].tolist()
    assert (out[0, lay.positions[chosen]] == 3.5).all()


def test_real_edit_changes_only_its_batch_row(tiny_vlm):
    s = _square(tiny_vlm)
    ims = [Image.new("RGB", (s, s), (200, 30, 30)), Image.new("RGB", (s, s), (30, 200, 30))]
    prompt = tiny_vlm.prompt("classification")
    enc = tiny_vlm.encode(ims, [prompt, prompt])  # same prompt: no padding, same positions
    lays = tiny_vlm.layouts(enc, ims)
    emb = tiny_vlm.input_embeddings(enc)
    mean = emb[0, lays[0].positions].mean(0)
    chosen = np.arange(40, 60)
    base = tiny_vlm.logits(enc)
    out = tiny_vlm.logits(enc, edit=iv.apply_edits([iv.replace_with(lays[0], chosen, 5 * mean), None]))
    first = int(lays[0].positions[chosen[0]])
    assert (out[1] - base[1]).abs().max() < 1e-5  # the other row is untouched
    assert (out[0, :first] - base[0, :first]).abs().max() < 1e-5  # causal: nothing before the edit moves
    assert (out[0, -1] - base[0, -1]).abs().max() > 1e-4  # the edited row's answer logits move


def test_mean_visual_embedding_and_its_cache(tiny_llava, tmp_path, monkeypatch):
    ims = [Image.new("RGB", (200, 100), (200, 30, 30)), Image.new("RGB", (120, 240), (30, 30, 200))]
    cache = tmp_path / "mean.pt"
    mean = iv.mean_visual_embedding(tiny_llava, ims, batch_size=1, cache=cache)
    # by another path: the projector outputs (the visual tokens before they are scattered in)
    enc = tiny_llava.encode(ims, [tiny_llava.prompt("classification")] * 2)
    with torch.no_grad():
        feats = tiny_llava.hf.model.get_image_features(pixel_values=enc["pixel_values"]).pooler_output
    expected = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats]).mean(0)
    assert mean.shape == expected.shape
    assert torch.allclose(mean, expected, atol=1e-5)
    assert cache.exists()

    def boom(*a, **k):
        raise AssertionError("the cached mean must be read, not recomputed")

    monkeypatch.setattr(tiny_llava, "input_embeddings", boom)
    assert torch.equal(iv.mean_visual_embedding(tiny_llava, ims, cache=cache), mean)
