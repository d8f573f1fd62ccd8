"""The decoder sites: attention knockout, per-head read/patch/ablate, hidden states, answer scoring.

Every check runs on the tiny random models at the real geometry (LLaVA-1.5: 576 tokens, Llama
MHA; InternVL-3.5: 448 px tiles + thumbnail, Qwen3 with grouped-query attention and
heads x head_dim != hidden size) and on both trained toys, in float32 on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vlmloc
from PIL import Image
from vlmloc.interventions import (
    AttentionKnockout,
    HeadAblation,
    HeadPatch,
    HeadRead,
    InputEdit,
    all_heads,
    layer_windows,
)
from vlmloc.scoring import scored_answer, teacher_forced_inputs
from vlmloc.sites import Site, hidden_sites
from vlmloc.sweeps import head_patch_scores

MODELS = ["tiny_llava", "tiny_internvl", "toy_llava", "toy_internvl"]
NULL_ATOL = 1e-5


@pytest.fixture(params=MODELS)
def vlm(request):
    return request.getfixturevalue(request.param)


def _images(vlm, seed: int = 0) -> list[Image.Image]:
    """Two noise images; wide enough for two InternVL tiles plus the thumbnail."""
    side = int(vlm.processor.image_processor.size.get("height", 64))
    size = (2 * side, side) if vlm.spec.family == "internvl" else (3 * side // 2, side)
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(2)]


def _batch(vlm, seed: int = 0):
    """A left-padded batch of two rows (prompts of different lengths) and its layouts."""
    images = _images(vlm, seed)
    prompts = [vlm.prompt("localization", "star"), vlm.prompt("classification")]
    enc = vlm.encode(images, prompts)
    assert (enc["attention_mask"] == 0).any(), "the test batch must be left padded"
    return enc, vlm.layouts(enc, images), images, prompts


def _knockout(layouts, layers) -> AttentionKnockout:
    keys = [lay.positions[::5] for lay in layouts]
    return AttentionKnockout(layers, keys, [int(lay.positions.max()) + 1 for lay in layouts])


def _close(a, b, atol):
    return torch.allclose(a.float(), b.float(), atol=atol, rtol=0)


# --- sites -----------------------------------------------------------------------------------


def test_sites_come_from_the_family_table(vlm):
    cfg = vlm.config
    assert vlm.n_vision_layers == cfg.vision_config.num_hidden_layers
    assert (
        vlm.head_dim * vlm.n_heads
        == vlm.hf.get_submodule("model.language_model.layers.0.self_attn.o_proj").in_features
    )
    names = [s.name for s in hidden_sites(vlm.n_vision_layers, vlm.n_layers)]
    assert names[vlm.n_vision_layers : vlm.n_vision_layers + 3] == ["projector", "llm.input", "llm.0"]


def test_tiny_qwen3_head_width_is_not_hidden_over_heads(tiny_internvl):
    tc = tiny_internvl.config.text_config
    assert tc.num_key_value_heads < tc.num_attention_heads  # grouped-query attention
    assert tiny_internvl.head_dim != tc.hidden_size // tc.num_attention_heads


def test_sites_are_visited_in_forward_order():
    names = [
        "llm.1",
        "llm.1.heads",
        "llm.1.mask",
        "llm.input",
        "llm.0.mask",
        "projector",
        "tower.2",
        "llm.1.skip",
    ]
    ordered = sorted(map(Site.parse, names), key=lambda s: s.order)
    assert [s.name for s in ordered] == [
        "tower.2", "projector", "llm.input", "llm.0.mask", "llm.1.skip", "llm.1.mask", "llm.1.heads", "llm.1",
    ]  # fmt: skip
    assert ordered[-2:] == [("heads", 1), ("layer_out", 1)]  # a site is its (kind, layer) tuple


def test_every_site_name_parses_back_to_its_site():
    sites = [Site("tower", 0), Site("projector"), Site("embeds"), Site("skip", 3), Site("mask", 3),
             Site("heads", 3), Site("layer_out", 3)]  # fmt: skip
    assert [Site.parse(s.name) for s in sites] == sites
    assert [s.name for s in hidden_sites(1, 1)] == ["tower.0", "projector", "llm.input", "llm.0"]
    assert (Site.parse("llm.input").stage, Site.parse("llm.input").layer) == ("llm", -1)
    for bad in ("llm.x", "llm.2.attn", "vision.1", "tower.1.heads"):
        with pytest.raises(ValueError, match="unknown site"):
            Site.parse(bad)
    with pytest.raises(ValueError, match="needs a layer"):
        Site("heads")


def test_layer_windows():
    assert layer_windows(8, 4, 1) == [(0, 3), (1, 4), (2, 5), (3, 6), (4, 7)]
    assert layer_windows(8, 4, 2) == [(0, 3), (2, 5), (4, 7)]
    with pytest.raises(ValueError):
        layer_windows(8, 0, 1)


# --- null edits ------------------------------------------------------------------------------
# Each kind's null version goes through the same hooks and writes as a real edit: the checks assert
# that its hooks ran (so an edit that installs nothing cannot pass) and that a broken null fails.


def _null_edits(vlm, enc, layouts):
    read = HeadRead(range(vlm.n_layers))
    vlm.logits(enc, interventions=[read])
    rows = enc["input_ids"].shape[0]
    every = all_heads(vlm.n_layers, vlm.n_heads)
    return {
        "knockout whose queries start after the last position": AttentionKnockout.null(
            range(vlm.n_layers), [lay.positions for lay in layouts]
        ),
        "every head from its own run": HeadPatch([every] * rows, read.values),
        "every head ablated to its own value": HeadAblation.null(every),
        "identity input edit": InputEdit(lambda emb: emb.clone()),
    }


def _sites(vlm, iv) -> set:
    return {h.site for h in iv.hooks(vlm)}


def test_null_edits_leave_logits_unchanged(vlm):
    enc, layouts, _, _ = _batch(vlm)
    ref = vlm.logits(enc)
    for name, iv in _null_edits(vlm, enc, layouts).items():
        assert _close(vlm.logits(enc, interventions=[iv]), ref, NULL_ATOL), name
        assert iv.calls == dict.fromkeys(_sites(vlm, iv), 1), f"{name}: every hook runs once per forward"


def test_null_edits_leave_generation_unchanged(vlm):
    enc, layouts, _, _ = _batch(vlm)
    ref_logits: list = []
    ref = vlm.generate(enc, max_new_tokens=4, step_logits=ref_logits)
    for name, iv in _null_edits(vlm, enc, layouts).items():
        got: list = []
        assert vlm.generate(enc, max_new_tokens=4, interventions=[iv], step_logits=got) == ref, name
        assert all(_close(a, b, NULL_ATOL) for a, b in zip(got, ref_logits, strict=True)), name
        steps = len(ref_logits) if iv.every_step else 1  # every step, or the prefill only
        assert iv.n_calls > 0 and iv.calls == dict.fromkeys(_sites(vlm, iv), steps), name


def _zeroing(heads) -> HeadAblation:
    """A broken null ablation: it claims to write each head's own value but writes zeros."""

    class Broken(HeadAblation):
        def fill(self, layer, hs, current):
            return torch.zeros_like(current)

    return Broken(heads, identity=True)


def test_a_broken_null_edit_is_caught(vlm):
    """The null checks can fail: the same edits with one thing wrong move the logits."""
    enc, layouts, _, _ = _batch(vlm)
    ref = vlm.logits(enc)
    keys = [lay.positions for lay in layouts]
    broken = {
        "knockout from query 0": AttentionKnockout(range(vlm.n_layers), keys, [0] * len(keys)),
        "identity ablation that writes zeros": _zeroing(all_heads(vlm.n_layers, vlm.n_heads)),
        "input edit that doubles": InputEdit(lambda emb: 2 * emb),
    }
    for name, iv in broken.items():
        assert not _close(vlm.logits(enc, interventions=[iv]), ref, NULL_ATOL), name
        assert iv.n_calls > 0, name


def test_edits_of_nothing_install_nothing(vlm):
    """Why the null checks above use the real-path nulls: these never reach the model at all."""
    enc, layouts, _, _ = _batch(vlm)
    for iv in (_knockout(layouts, []), HeadAblation([])):
        assert iv.hooks(vlm) == []
        vlm.logits(enc, interventions=[iv])
        assert iv.n_calls == 0
    # an empty key set in real layers is no longer skipped: its hooks run and block nothing
    rows = enc["input_ids"].shape[0]
    empty = AttentionKnockout(range(vlm.n_layers), [[]] * rows, [0] * rows)
    assert _close(vlm.logits(enc, interventions=[empty]), vlm.logits(enc), NULL_ATOL)
    assert empty.calls == {("mask", la): 1 for la in range(vlm.n_layers)}


def test_generate_matches_plain_hugging_face_generate(vlm):
    enc, _, _, _ = _batch(vlm)
    with torch.no_grad():
        ids = vlm.hf.generate(**enc, max_new_tokens=6, do_sample=False)
    start = enc["input_ids"].shape[1]
    assert vlm.generate(enc, max_new_tokens=6) == [vlm.decode(r[start:]) for r in ids]


# --- attention knockout ----------------------------------------------------------------------


def test_knockout_changes_nothing_before_its_layer_or_its_first_query(vlm):
    enc, layouts, _, _ = _batch(vlm)
    layer = vlm.n_layers - 1
    ko = _knockout(layouts, [layer])
    sites = [f"llm.{i}" for i in range(vlm.n_layers)]
    ref = vlm.hidden_states(enc, sites)
    got = vlm.hidden_states(enc, sites, interventions=[ko])
    for i in range(layer):
        assert torch.equal(got[f"llm.{i}"], ref[f"llm.{i}"]), f"layer {i} moved"
    first = min(ko.query_from)
    out, out_ref = got[f"llm.{layer}"], ref[f"llm.{layer}"]
    assert _close(out[:, :first], out_ref[:, :first], 1e-6)
    assert (out[:, first:] - out_ref[:, first:]).abs().max() > 1e-5, "blocking the keys must matter"


def test_knockout_changes_the_answer_when_the_keys_matter(toy_llava):
    samples = vlmloc.load_coco(*vlmloc.resolve_data(None, None), limit=4)
    images = [s.load_image() for s in samples]
    enc = toy_llava.encode(images, [toy_llava.prompt("localization", s.category) for s in samples])
    layouts = toy_llava.layouts(enc, images)
    keys = [lay.positions[lay.object_indices(s.mask())] for lay, s in zip(layouts, samples, strict=True)]
    ko = AttentionKnockout(range(toy_llava.n_layers), keys, [int(lay.positions.max()) + 1 for lay in layouts])
    ref = toy_llava.generate(enc)
    assert sum(a != b for a, b in zip(toy_llava.generate(enc, interventions=[ko]), ref, strict=True)) >= 3


def _teacher_forced_logits(vlm, enc, step_logits, interventions):
    """Logits of one forward over prompt + generated tokens, fed as generate fed them."""
    toks = torch.stack([s.argmax(-1) for s in step_logits], 1)
    eos = vlm.hf.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos))
    done = torch.zeros(toks.shape[0], dtype=torch.bool)
    fed = toks.clone()
    for j in range(toks.shape[1]):  # after a row's EOS generate feeds the pad token
        fed[done, j] = vlm.hf.generation_config.pad_token_id
        done |= torch.isin(toks[:, j], eos)
    inputs, _, _ = teacher_forced_inputs(enc, fed[:, :-1].tolist(), vlm.tokenizer.pad_token_id)
    inputs["attention_mask"][:] = torch.cat([enc["attention_mask"], torch.ones_like(fed[:, :-1])], 1)
    s = enc["input_ids"].shape[1]
    return vlm.forward(inputs, interventions, logits_at=slice(s - 1, None)), fed


@pytest.mark.parametrize("kind", ["knockout", "head ablation"])
def test_generation_holds_the_intervention_on_every_step(vlm, kind):
    enc, layouts, _, _ = _batch(vlm)
    iv = _knockout(layouts, range(vlm.n_layers)) if kind == "knockout" else HeadAblation([(0, 0), (1, 1)])
    steps: list = []
    vlm.generate(enc, max_new_tokens=5, interventions=[iv], step_logits=steps)
    forced, fed = _teacher_forced_logits(vlm, enc, steps, [iv])
    for j, s in enumerate(steps):
        live = fed[:, j] != vlm.hf.generation_config.pad_token_id
        assert _close(forced[live, j], s[live], 1e-4), f"step {j}"


def test_sdpa_and_eager_give_the_same_knockout(vlm):
    enc, layouts, _, _ = _batch(vlm)
    ko = _knockout(layouts, [0])
    sdpa = vlm.logits(enc, interventions=[ko])
    vlm.hf.set_attn_implementation("eager")
    try:
        eager = vlm.logits(enc, interventions=[ko])
    finally:
        vlm.hf.set_attn_implementation("sdpa")
    real = enc["attention_mask"].bool()  # padding positions attend nothing: their values are arbitrary
    assert _close(sdpa[real], eager[real], 1e-4)
    assert not _close(sdpa[real], vlm.logits(enc)[real], 1e-4)


def test_left_padded_rows_get_what_they_get_alone(vlm):
    enc, layouts, images, prompts = _batch(vlm)
    both = vlm.logits(enc, interventions=[_knockout(layouts, [0])])
    for row in range(2):
        alone = vlm.encode([images[row]], [prompts[row]])
        lay = vlm.layouts(alone, [images[row]])
        pad = int((enc["attention_mask"][row] == 0).sum())
        one = vlm.logits(alone, interventions=[_knockout(lay, [0])])
        assert _close(both[row, pad:], one[0], 1e-4)


# --- heads -----------------------------------------------------------------------------------


def test_patching_one_head_changes_exactly_its_slice(vlm):
    enc, layouts, _, _ = _batch(vlm)
    other, _, _, _ = _batch(vlm, seed=1)
    source = HeadRead(range(vlm.n_layers))
    vlm.logits(other, interventions=[source])
    base = HeadRead(range(vlm.n_layers))
    vlm.logits(enc, interventions=[base])
    layer, head, d = vlm.n_layers - 1, 1, vlm.head_dim
    start = int(layouts[0].positions.max()) + 1
    patch = HeadPatch([[(layer, head)], []], source.values, from_pos=start)
    after = HeadRead(range(vlm.n_layers))
    vlm.logits(enc, interventions=[patch, after])
    for la in range(layer):
        assert torch.equal(after.values[la], base.values[la]), f"layer {la} moved"
    got, want = after.values[layer], base.values[layer].clone()
    want[0, start:, head * d : (head + 1) * d] = source.values[layer][0, start:, head * d : (head + 1) * d]
    assert torch.equal(got, want)
    assert not torch.equal(got, base.values[layer])


def test_zero_ablation_zeroes_the_head(vlm):
    enc, _, _, _ = _batch(vlm)
    read = HeadRead([0])
    vlm.logits(enc, interventions=[HeadAblation([(0, 2)]), read])
    d = vlm.head_dim
    assert torch.count_nonzero(read.values[0][..., 2 * d : 3 * d]) == 0
    assert torch.count_nonzero(read.values[0][..., :d]) > 0


def _pair(vlm, seed=0):
    images = _images(vlm, seed)
    prompt = vlm.prompt("localization", "star")
    src, base = (vlm.encode([im], [prompt]) for im in images)
    return src, base, vlm.format_box((4.0, 6.0, 40.0, 30.0), images[0].size, "star")


@pytest.mark.parametrize("name", ["toy_llava", "toy_internvl"])
def test_batched_sweep_equals_one_head_per_forward(request, name):
    vlm = request.getfixturevalue(name)
    check_sweep_equals_loop(vlm, *_pair(vlm), batch_size=32)


def check_sweep_equals_loop(vlm, src, base, answer, batch_size: int) -> None:
    """The batched prefix + suffix sweep gives the plain loop's scores for every head (any family)."""
    fast = head_patch_scores(vlm, src, base, answer, "localization", batch_size=batch_size)
    slow = head_patch_scores(vlm, src, base, answer, "localization", batch_size=1, reuse_prefix=False)
    assert len(fast.heads) == vlm.n_layers * vlm.n_heads
    assert _close(fast.patched.token_logprobs, slow.patched.token_logprobs, 1e-5)
    # the fast path scores source and base in one two-row prefix + suffix: as the plain forwards do
    assert _close(fast.source.token_logprobs, slow.source.token_logprobs, 1e-5)
    assert _close(fast.base.token_logprobs, slow.base.token_logprobs, 1e-5)
    assert (fast.source.logprob - fast.base.logprob).abs().max() > 1e-4, "source and base must differ"
    assert (fast.patched.logprob - fast.base.logprob).abs().max() > 1e-4, "some head must matter"


def test_suffix_rows_share_the_prefix_cache_without_writing_it(toy_llava):
    """The sweep repeats one prefix cache for every batch of heads as broadcast views: a forward
    on the repeated cache must leave the prefix as it was, and give what a copied cache gives."""
    import copy

    from vlmloc.prefix_cache import suffix_inputs
    from vlmloc.sweeps import first_after_image

    _, base, _ = _pair(toy_llava)
    start = first_after_image(toy_llava, base["input_ids"])
    prefix = toy_llava.prefix(base, start)
    cache = prefix.cache
    before = [layer.keys.clone() for layer in cache.layers]
    shared = toy_llava.forward(suffix_inputs(base, prefix, 3))
    assert all(torch.equal(a, layer.keys) for a, layer in zip(before, cache.layers, strict=True))
    assert cache.get_seq_length() == start
    copied = copy.deepcopy(cache)
    copied.batch_repeat_interleave(3)
    inputs = {**suffix_inputs(base, prefix, 3), "past_key_values": copied}
    assert _close(shared, toy_llava.forward(inputs), 1e-6)


def test_sweep_of_base_into_base_changes_nothing(tiny_internvl):
    _, base, answer = _pair(tiny_internvl)
    res = head_patch_scores(tiny_internvl, base, base, answer, "localization", batch_size=8)
    assert _close(res.patched.logprob, res.base.logprob.expand(len(res.heads)), 1e-5)


# --- scoring and hidden states ---------------------------------------------------------------


def test_score_equals_log_probs_by_hand(vlm):
    enc, _, images, _ = _batch(vlm)
    answers = [vlm.format_box((4.0, 6.0, 40.0, 30.0), images[0].size, "star"), "star"]
    tasks = ["localization", "classification"]
    got = vlm.score(enc, answers, tasks)
    parts = [scored_answer(vlm.tokenizer, t, a) for t, a in zip(tasks, answers, strict=True)]
    inputs, _, _ = teacher_forced_inputs(enc, [p[0] for p in parts], vlm.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = vlm.hf(**inputs).logits.float()
    check_scores_against_logits(got, parts, logits, enc["input_ids"].shape[1])
    assert sum(parts[0][1]) == 4  # a box scores its four coordinates only


def check_scores_against_logits(got, parts, logits, prompt_len: int) -> None:
    """Each row's summed log-probability and token count equal those read off ``logits`` of the
    teacher-forced forward (answer ``ids`` after ``prompt_len``, scored where ``mask`` says)."""
    for row, (ids, mask) in enumerate(parts):
        lp = torch.log_softmax(logits[row, prompt_len - 1 : prompt_len - 1 + len(ids)], -1)
        want = sum(float(lp[j, t]) for j, (t, m) in enumerate(zip(ids, mask, strict=True)) if m)
        assert got.logprob[row].item() == pytest.approx(want, abs=1e-4)
        assert int(got.n_tokens[row]) == sum(mask)


def test_hidden_states_along_the_path(vlm):
    enc, layouts, _, _ = _batch(vlm)
    sites = [s.name for s in hidden_sites(vlm.n_vision_layers, vlm.n_layers)]
    got = vlm.hidden_states(enc, sites, positions=[lay.positions for lay in layouts])
    assert list(got) == sites
    emb = vlm.input_embeddings(enc)
    for row, lay in enumerate(layouts):
        assert torch.equal(got["llm.input"][row], emb[row, lay.positions].float())
        assert got[f"llm.{vlm.n_layers - 1}"][row].shape == (
            len(lay.positions),
            vlm.config.text_config.hidden_size,
        )
    n_visual = sum(len(lay.positions) for lay in layouts)
    assert got["projector"].shape[0] * got["projector"].shape[1] == n_visual
