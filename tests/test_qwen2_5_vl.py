"""Qwen2.5-VL, the third family: geometry, token order, M-RoPE positions, boxes, and the decoder-sites matrix.

Everything runs on a tiny random Qwen2.5-VL at the real image geometry (14 px patches merged 2 x 2,
112 px attention windows with full-attention blocks, min/max pixels of the released processor,
grouped-query attention), saved and loaded back through :func:`vlmloc.load_model`, float32 on the CPU.
The decoder-sites tests of ``test_decoder_sites.py`` run here unchanged on images large enough to
span several attention windows; the ones whose reference differs under M-RoPE are rewritten below.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import test_decoder_sites as sites_matrix
import torch
import vlmloc
from PIL import Image
from test_decoder_sites import (  # noqa: F401  (collected here, on the tiny Qwen2.5-VL)
    _batch,
    _close,
    _knockout,
    test_a_broken_null_edit_is_caught,
    test_edits_of_nothing_install_nothing,
    test_generate_matches_plain_hugging_face_generate,
    test_generation_holds_the_intervention_on_every_step,
    test_knockout_changes_nothing_before_its_layer_or_its_first_query,
    test_left_padded_rows_get_what_they_get_alone,
    test_null_edits_leave_generation_unchanged,
    test_null_edits_leave_logits_unchanged,
    test_patching_one_head_changes_exactly_its_slice,
    test_sdpa_and_eager_give_the_same_knockout,
    test_sites_come_from_the_family_table,
    test_zero_ablation_zeroes_the_head,
)
from vlmloc.families import QWEN25VL
from vlmloc.interventions import AttentionKnockout
from vlmloc.prefix_cache import suffix_inputs
from vlmloc.processor_check import GEOMETRY_PROBES, GeometryError, check_geometry
from vlmloc.scoring import scored_answer, teacher_forced_inputs
from vlmloc.sites import hidden_sites
from vlmloc.sweeps import first_after_image

TINY_QWEN = "tiny-qwen2.5-vl-test"


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    """A tiny random Qwen2.5-VL look-alike (real image geometry, tiny widths), float32 on the CPU."""
    from vlmloc.testing import save_tiny

    save_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny-qwen"), model_id=TINY_QWEN)
    return vlmloc.load_model(TINY_QWEN, device="cpu")


@pytest.fixture
def vlm(tiny_qwen):
    return tiny_qwen


def _qwen_images(vlm, seed: int = 0) -> list[Image.Image]:
    """Two noise images of 260 x 150 px: 5 x 9 tokens, i.e. 2 x 3 attention windows of 4 x 4 tokens."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (150, 260, 3), dtype=np.uint8)) for _ in range(2)]


@pytest.fixture(autouse=True)
def _window_sized_images(monkeypatch):
    """The imported matrix builds its batches with these images (its own are one window wide)."""
    monkeypatch.setattr(sites_matrix, "_images", _qwen_images)


# --- geometry: tokens, views, the load-time check --------------------------------------------


@pytest.mark.parametrize(
    "size", [(500, 375), (300, 480), (1200, 300), (40, 30), (4000, 3500), (28, 28 * 150)]
)
def test_token_count_follows_smart_resize(tiny_qwen, size):
    """Views count the processor's placeholders, for aspect ratios and for both pixel limits
    (40 x 30 is under min_pixels and grows; 4000 x 3500 is over max_pixels and shrinks)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    ip = tiny_qwen.processor.image_processor
    views = tiny_qwen.views(size)
    h, w = smart_resize(size[1], size[0], 28, ip.size["shortest_edge"], ip.size["longest_edge"])
    assert (views[0].rows, views[0].cols) == (h // 28, w // 28)
    assert views[0].resized == (w, h)
    n = ip.get_number_of_image_patches(size[1], size[0], {}) // 4
    assert sum(v.n_tokens for v in views) == n


def test_geometry_check_passes_on_wide_tall_and_panorama(tiny_qwen):
    results = tiny_qwen.geometry_check
    assert [r.image_size for r in results] == [size for size, _ in GEOMETRY_PROBES]
    assert all(r.ok and r.expected == r.observed and len(r.expected) > 0 for r in results)


def _raster_rows(grid_h: int, grid_w: int, merge: int) -> np.ndarray:
    """The wrong order: as if ``pixel_values`` rows were the patches in raster order."""
    return np.array(
        [
            [(merge * r + i) * grid_w + merge * c + j for i in range(merge) for j in range(merge)]
            for r in range(grid_h // merge)
            for c in range(grid_w // merge)
        ]
    )


def test_geometry_check_fails_loudly_on_a_wrong_token_order(tiny_qwen, monkeypatch):
    monkeypatch.setattr(type(tiny_qwen.family), "token_rows", staticmethod(_raster_rows))
    with pytest.raises(GeometryError, match="does not put the image where the token layout says"):
        check_geometry(tiny_qwen)


def test_mask_to_tokens_by_hand(tiny_qwen):
    """A 500 x 375 image becomes 504 x 364 px, 13 x 18 tokens of 28 px; one token spans 500/18 x
    375/13 original px. A pixel at (30, 30) lies in cell (1, 1): token 18 + 1 = 19."""
    view = tiny_qwen.views((500, 375))[0]
    assert (view.rows, view.cols) == (13, 18)
    mask = np.zeros((375, 500), bool)
    mask[30, 30] = True
    assert np.flatnonzero(view.mask_to_cells(mask)).tolist() == [19]


def test_visual_token_k_is_merge_group_k_through_the_tower(tiny_qwen):
    """Through the model: with the tower's attention outputs zeroed, token ``k`` depends on its own
    patches only, so changing the rows of merge group ``k`` must move LLM input position ``k``
    and nothing else, across the tower's reordering into windows and back."""
    vlm = copy.copy(tiny_qwen)
    vlm.hf = copy.deepcopy(tiny_qwen.hf)
    for block in vlm.hf.model.visual.blocks:
        block.attn.proj.weight.data.zero_()
        block.attn.proj.bias.data.zero_()
    images = [Image.new("RGB", (400, 200), (90, 120, 150))]
    enc = tiny_qwen.encode(images, [tiny_qwen.prompt("classification")])
    pos = tiny_qwen.layouts(enc, images)[0].positions
    with torch.no_grad():
        ref = vlm.hf.model.get_image_features(enc["pixel_values"], enc["image_grid_thw"]).pooler_output[0]
        for k in (0, 5, len(pos) - 7, len(pos) - 1):
            pv = enc["pixel_values"].clone()
            pv[4 * k : 4 * k + 4] += 1.0
            got = vlm.hf.model.get_image_features(pv, enc["image_grid_thw"]).pooler_output[0]
            moved = (got - ref).abs().amax(-1) > 1e-6
            assert moved.nonzero().flatten().tolist() == [k], k


# --- M-RoPE positions ------------------------------------------------------------------------


def test_positions_are_m_rope(tiny_qwen):
    """Image tokens get (t, start + row, start + col); the text after the image continues from
    ``start + max(rows, cols)``, so the last position is far below the last sequence index."""
    images = _qwen_images(tiny_qwen)[:1]
    enc = tiny_qwen.encode(images, [tiny_qwen.prompt("classification")])
    pos = tiny_qwen.position_ids(enc)
    assert pos.shape == (3, 1, enc["input_ids"].shape[1])
    lay = tiny_qwen.layouts(enc, images)[0]
    view = lay.views[0]
    start = int(lay.positions[0])
    rows, cols = np.divmod(np.arange(view.n_tokens), view.cols)
    img = pos[:, 0, lay.positions]
    assert img[0].tolist() == [start] * view.n_tokens
    assert img[1].tolist() == (start + rows).tolist()
    assert img[2].tolist() == (start + cols).tolist()
    after = int(lay.positions[-1]) + 1
    assert pos[:, 0, after].tolist() == [start + max(view.rows, view.cols)] * 3
    assert int(pos.max()) < enc["input_ids"].shape[1] - 1
    hf_pos, _ = tiny_qwen.hf.model.get_rope_index(
        enc["input_ids"],
        enc["mm_token_type_ids"],
        enc["image_grid_thw"],
        attention_mask=enc["attention_mask"],
    )
    assert torch.equal(pos, hf_pos)


def test_generation_from_a_prefix_is_exact_under_m_rope(tiny_qwen):
    """Generating from the image prefix's cache gives the plain answers, also after another
    batch (another image size) has left stale ``rope_deltas`` on the model, and under a knockout
    whose queries start after the prefix."""
    enc, layouts, _, _ = _batch(tiny_qwen)
    steps: list = []
    ref = tiny_qwen.generate(enc, max_new_tokens=5, step_logits=steps)
    prefix = tiny_qwen.prefix(enc, max(int(lay.positions.max()) + 1 for lay in layouts))
    other = [Image.new("RGB", (90, 400))]
    tiny_qwen.generate(tiny_qwen.encode(other, [tiny_qwen.prompt("classification")]), max_new_tokens=2)
    got: list = []
    assert tiny_qwen.generate(enc, max_new_tokens=5, prefix=prefix, step_logits=got) == ref
    assert all(_close(a, b, 1e-4) for a, b in zip(got, steps, strict=True))
    keys = [lay.positions[::3] for lay in layouts]
    ko = AttentionKnockout(range(tiny_qwen.n_layers), keys, [int(enc["input_ids"].shape[1]) - 2] * 2)
    plain: list = []
    cached: list = []
    a = tiny_qwen.generate(enc, max_new_tokens=4, interventions=[ko], step_logits=plain)
    b = tiny_qwen.generate(enc, max_new_tokens=4, interventions=[ko], prefix=prefix, step_logits=cached)
    assert a == b and all(_close(x, y, 1e-4) for x, y in zip(plain, cached, strict=True))
    assert not all(_close(x, y, 1e-4) for x, y in zip(plain, steps, strict=True)), "the knockout must matter"


def test_positions_ignore_a_wrong_caller_position(tiny_qwen):
    """A full forward always takes the family's 3-D positions: 1-D positions passed by a caller
    (what the LLaVA-era code passes) are replaced, so they cannot silently drop M-RoPE."""
    enc, _, _, _ = _batch(tiny_qwen)
    from vlmloc.scoring import position_ids

    flat = tiny_qwen.forward({**enc, "position_ids": position_ids(enc["attention_mask"])})
    assert _close(flat, tiny_qwen.logits(enc), 1e-6)
    with torch.no_grad():
        wrong = tiny_qwen.hf(**enc, position_ids=position_ids(enc["attention_mask"])).logits
    assert not _close(wrong, tiny_qwen.logits(enc), 1e-4), "1-D positions must differ from M-RoPE"


# --- scoring, hidden states and sweeps (references that differ under M-RoPE) -------------------


def test_score_equals_log_probs_by_hand(tiny_qwen):
    """The reference is Hugging Face's own forward, which computes M-RoPE itself from the token types."""
    vlm = tiny_qwen
    enc, _, images, _ = _batch(vlm)
    answers = [vlm.format_box((4.0, 6.0, 40.0, 30.0), images[0].size, "star"), "star"]
    tasks = ["localization", "classification"]
    got = vlm.score(enc, answers, tasks)
    parts = [scored_answer(vlm.tokenizer, t, a) for t, a in zip(tasks, answers, strict=True)]
    inputs, _, _ = teacher_forced_inputs(enc, [p[0] for p in parts], vlm.tokenizer.pad_token_id)
    inputs.pop("position_ids")
    vlm.hf.model.rope_deltas = None
    with torch.no_grad():
        logits = vlm.hf(**inputs).logits.float()
    sites_matrix.check_scores_against_logits(got, parts, logits, enc["input_ids"].shape[1])
    assert sum(parts[0][1]) == 4  # a box scores its four coordinates only ("bbox_2d" is one token)


def test_hidden_states_along_the_path(tiny_qwen):
    """Tower and merger outputs are flat ``[patches or tokens, width]`` in the tower's *window*
    order: the merger's rows are the LLM input's visual rows, permuted (not in token order)."""
    vlm = tiny_qwen
    enc, layouts, _, _ = _batch(vlm)
    names = [s.name for s in hidden_sites(vlm.n_vision_layers, vlm.n_layers)]
    got = vlm.hidden_states(enc, names, positions=[lay.positions for lay in layouts])
    assert list(got) == names
    emb = vlm.input_embeddings(enc)
    visual = torch.cat([emb[row, lay.positions].float() for row, lay in enumerate(layouts)])
    for row, lay in enumerate(layouts):
        assert torch.equal(got["llm.input"][row], emb[row, lay.positions].float())
    merged = got["projector"]
    assert merged.shape == visual.shape
    assert got["tower.0"].shape[0] == 4 * visual.shape[0]
    order = vlm.family.window_index(vlm.config, enc["image_grid_thw"])
    assert torch.equal(merged[order.argsort()], visual), "the family's window index puts them in order"
    assert not torch.equal(merged, visual), "the merger's own rows are in window order"


def _pair(vlm, seed=0):
    images = _qwen_images(vlm, seed)
    prompt = vlm.prompt("localization", "star")
    src, base = (vlm.encode([im], [prompt]) for im in images)
    return src, base, vlm.format_box((4.0, 6.0, 40.0, 30.0), images[0].size, "star")


def test_batched_sweep_equals_one_head_per_forward(tiny_qwen):
    """The prefix + suffix sweep (M-RoPE positions sliced from the full forward's) equals the loop."""
    sites_matrix.check_sweep_equals_loop(tiny_qwen, *_pair(tiny_qwen), batch_size=3)


def test_suffix_on_the_prefix_cache_equals_the_full_forward(tiny_qwen):
    """A suffix forward on the image prefix's cache, with the full forward's positions sliced, gives
    the full forward's logits; with 1-D positions (the sequence index) it would not."""
    _, base, _ = _pair(tiny_qwen)
    start = first_after_image(tiny_qwen, base["input_ids"])
    prefix = tiny_qwen.prefix(base, start)
    full = tiny_qwen.logits(base)[:, start:]
    inputs = {**base, "position_ids": tiny_qwen.position_ids(base)}
    assert _close(tiny_qwen.forward(suffix_inputs(inputs, prefix, 2)), full.expand(2, -1, -1), 1e-5)
    flat = suffix_inputs(base, prefix, 1)  # no positions given: arange, the sequence index
    assert not _close(tiny_qwen.forward(flat), full, 1e-4)


# --- boxes -----------------------------------------------------------------------------------


def test_boxes_round_trip_through_the_resized_frame(tiny_qwen):
    size = (500, 375)  # resized to 504 x 364
    text = tiny_qwen.format_box((100.0, 50.0, 300.0, 250.0), size, "star")
    assert text == '[{"bbox_2d": [101, 49, 302, 243], "label": "star"}]'
    back = tiny_qwen.parse_box(text, size)
    assert back == pytest.approx((100.0, 50.0, 300.0, 250.0), abs=500 / 504)
    assert tiny_qwen.parse_box(tiny_qwen.decode(tiny_qwen.tokenizer(text)["input_ids"]), size) == back


@pytest.mark.parametrize(
    "text",
    [
        '```json\n[\n\t{"bbox_2d": [101, 49, 302, 243], "label": "star"}\n]\n```',
        '[{"bbox_2d": [101, 49, 302, 243], "label": "star"}, {"bbox_2d": [1, 2, 3, 4], "label": "x"}]',
        '{"bbox_2d":[101,49,302,243]',  # cut off after the box
        '[ { "bbox_2d" : [ 101 , 49 , 302 , 243 ] , "label" : " star " } ]',  # a word-level decode
    ],
)
def test_parse_box_reads_qwen_json(tiny_qwen, text):
    views = tiny_qwen.views((504, 364))
    assert QWEN25VL.parse_box(text, views, (504, 364)) == (101.0, 49.0, 302.0, 243.0)


@pytest.mark.parametrize("text", ["a star", '{"label": "star"}', '"bbox_2d": [1, 2, 3]'])
def test_parse_box_without_a_box_is_none(tiny_qwen, text):
    assert QWEN25VL.parse_box(text, tiny_qwen.views((504, 364)), (504, 364)) is None


def test_registry_has_the_two_checkpoints():
    for model_id in ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"):
        spec = vlmloc.registry.get_spec(model_id)
        assert spec.family == "qwen2_5_vl" and spec.source == model_id and spec.default_dtype == "bfloat16"


def test_prompt_follows_the_grounding_prompt(tiny_qwen):
    prompt = tiny_qwen.prompt("localization", "star")
    assert "<|vision_start|><|image_pad|><|vision_end|>Locate the star in the image" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_a_digit_in_the_json_key_is_not_a_coordinate():
    """With a tokenizer that cuts digits one by one (as Qwen2's does), the ``2`` of ``"bbox_2d"`` is a
    digit token; only the digits inside the box count when an answer is scored."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    answer = '[{"bbox_2d": [101, 49, 302, 243], "label": "star"}]'
    split = pre_tokenizers.Split(Regex(r"\d|[A-Za-z_]+|\S"), "isolated")
    words = [w for w, _ in split.pre_tokenize_str(answer)]
    vocab = {w: i for i, w in enumerate(["<unk>", *dict.fromkeys(words)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), split])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    ids, mask = scored_answer(tok, "localization", answer)
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens.count("2") == 3  # bbox_2d's, 302's and 243's
    assert [t for t, m in zip(tokens, mask, strict=True) if m] == list("101493022" + "43")


# --- chapter 4: the tower's and the merger's values in token order ----------------------------


def test_probes_read_tower_and_merger_values_in_token_order(tiny_qwen):
    """Chapter 4 gives every image one square (one token grid) and reads the tower blocks and the
    merger in token order: the merger's values equal the LLM input at the visual positions, and
    the last block's values, regrouped 2 x 2 and merged, equal the merger's."""
    from vlmloc.probes import probe_images, read_sites, site_features, site_labels, tower_grid
    from vlmloc.toys.scenes import merge_group_order

    vlm = tiny_qwen
    rng = np.random.default_rng(1)
    raw = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in ((300, 200), (150, 260))
    ]
    images = probe_images(vlm, raw)
    assert {im.size for im in images} == {(448, 448)}  # the real processor keeps 448 px: 16 x 16 tokens
    last = f"tower.{vlm.n_vision_layers - 1}"
    values, layouts = read_sites(vlm, images, [last, "projector", "llm.input"])
    side = tower_grid(vlm)
    assert side == 32 and values[last].shape == (2, side * side, values[last].shape[-1])
    proj = site_features("projector", values["projector"], layouts, side)
    assert torch.allclose(proj, site_features("llm.input", values["llm.input"], layouts, side), atol=1e-5)
    groups = values[last][:, torch.as_tensor(merge_group_order(side, side, 2))]
    with torch.no_grad():
        merged = vlm.hf.model.visual.merger(groups.reshape(-1, groups.shape[-1]))
    assert torch.allclose(merged, proj, atol=1e-5)
    assert len(site_labels("tower", layouts, side).row) == 2 * side * side


def test_every_position_sweep_keeps_m_rope_positions(tiny_qwen):
    """Chapter 6's ``positions="all"`` sweep runs from the LLM input with M-RoPE positions
    (``[3, B, S]``): a head patched from the base itself scores exactly the base, and the heads
    patched from a real source score what one forward per head gives."""
    from vlmloc.sweeps import head_patch_scores

    src, base, answer = sites_matrix._pair(tiny_qwen)
    heads = [(0, 0), (1, 3)]
    null = head_patch_scores(tiny_qwen, base, base, answer, "localization", heads=heads, positions="all")
    assert torch.allclose(null.patched.token_logprobs, null.base.token_logprobs.expand(2, -1), atol=1e-5)
    batched = head_patch_scores(tiny_qwen, src, base, answer, "localization", heads=heads, positions="all")
    one = [
        head_patch_scores(
            tiny_qwen, src, base, answer, "localization", heads=[h], positions="all", batch_size=1
        )
        for h in heads
    ]
    want = torch.cat([o.patched.token_logprobs for o in one])
    assert torch.allclose(batched.patched.token_logprobs, want, atol=1e-5)
    assert (batched.patched.logprob - batched.base.logprob).abs().max() > 1e-5
