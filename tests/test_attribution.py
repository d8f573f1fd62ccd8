"""Gradient attributions: Integrated Gradients over the visual tokens (shape, completeness, agreement
with the nnsight path) and attribution patching of the heads (against a finite difference, the
exact sweep, and the raw-hook computation it replaced).

Completeness (Sundararajan et al., 2017) is IG's classical sanity check: the attributions sum to
f(x) - f(x') up to the error of the Riemann sum, which shrinks with the number of steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_ch06_mediation import _pairs
from vlmloc.attribution import (
    answer_log_prob,
    attribution_patching,
    finite_difference,
    integrated_gradients,
    teacher_forced_answer,
    top_k,
)
from vlmloc.stats import spearman
from vlmloc.sweeps import head_patch_scores


def _image(vlm) -> Image.Image:
    # one view for both families (336 px LLaVA square; one 448 px InternVL tile) keeps sequences short
    side = 336 if vlm.family.name == "llava" else 448
    im = Image.new("RGB", (side, side), (200, 40, 40))
    im.paste((30, 30, 220), (60, 80, 200, 240))
    return im


def _case(vlm, task="localization"):
    im = _image(vlm)
    box = (60.0, 80.0, 200.0, 240.0)
    prompt = vlm.prompt(task, "star")
    answer = teacher_forced_answer(vlm, task, "star", box, im.size)
    enc = vlm.encode([im], [prompt])
    lay = vlm.layouts(enc, [im])[0]
    emb = vlm.input_embeddings(enc)[0]
    return im, prompt, answer, enc, lay, emb


def test_teacher_forced_answer_is_the_class_name_or_the_models_own_box(tiny_vlm):
    box = (10.0, 20.0, 30.0, 40.0)
    assert teacher_forced_answer(tiny_vlm, "classification", "star", box, (100, 100)) == "star"
    loc = teacher_forced_answer(tiny_vlm, "localization", "star", box, (100, 100))
    assert loc == tiny_vlm.format_box(box, (100, 100), "star")
    parsed = tiny_vlm.parse_box(loc, (100, 100))
    assert np.allclose(parsed, box, atol=1.0)  # the answer parses back to the box it was made from


@pytest.mark.parametrize("task", ["classification", "localization"])
def test_ig_shape_and_completeness(tiny_vlm, task):
    im, prompt, answer, enc, lay, emb = _case(tiny_vlm, task)
    baseline = emb[lay.positions].mean(0)  # one vector at every visual position, as the mean embedding
    res = integrated_gradients(tiny_vlm, im, prompt, answer, baseline, steps=64, step_batch=32)
    assert res.per_token.shape == (lay.n_tokens,)
    assert res.per_token_abs.shape == (lay.n_tokens,)
    assert (res.per_token_abs >= 0).all()
    assert (res.per_token_abs >= res.per_token.abs() - 1e-6).all()  # |sum| <= sum of |.|
    delta = res.f_input - res.f_baseline
    assert abs(delta) > 1e-6, "the baseline should change the answer's log-probability"
    # completeness: sum of attributions = f(x) - f(x') up to the Riemann error (rel. tol 0.1 at 64 steps)
    assert abs(res.completeness_gap) <= 0.1 * abs(delta) + 1e-5, (float(res.per_token.sum()), delta)


def test_ig_endpoints_match_the_nnsight_forward(tiny_llava):
    """f(x) from the batched HF path equals the log-probability read from ``vlm.logits`` (nnsight)."""
    im, prompt, _, enc, lay, emb = _case(tiny_llava, "classification")
    answer = "star"
    ids = tiny_llava.tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1  # one token: the next-token logits of the prompt give its log-probability
    ref = torch.log_softmax(tiny_llava.logits(enc)[0, -1].float(), -1)[ids[0]].item()
    assert answer_log_prob(tiny_llava, im, prompt, answer) == pytest.approx(ref, abs=1e-4)
    res = integrated_gradients(tiny_llava, im, prompt, answer, emb[lay.positions].mean(0), steps=2)
    assert res.f_input == pytest.approx(ref, abs=1e-4)
    mean = emb[lay.positions].mean(0)
    assert answer_log_prob(tiny_llava, im, prompt, answer, visual=mean) == pytest.approx(
        res.f_baseline, abs=1e-4
    )


def test_ig_step_batches_do_not_change_the_result(tiny_llava):
    im, prompt, answer, enc, lay, emb = _case(tiny_llava)
    base = emb[lay.positions].mean(0)
    a = integrated_gradients(tiny_llava, im, prompt, answer, base, steps=6)
    b = integrated_gradients(tiny_llava, im, prompt, answer, base, steps=6, step_batch=4)
    torch.testing.assert_close(a.per_token, b.per_token, atol=1e-5, rtol=1e-4)


def test_ig_rejects_bad_arguments(tiny_llava):
    im, prompt, answer, enc, lay, emb = _case(tiny_llava)
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(tiny_llava, im, prompt, answer, emb[0], steps=0)
    with pytest.raises(ValueError, match="baseline has shape"):
        integrated_gradients(tiny_llava, im, prompt, answer, emb[:3], steps=1)


def test_top_k_is_sorted_deterministic_and_clipped():
    scores = torch.tensor([0.1, 5.0, 3.0, 5.0, -1.0])
    assert top_k(scores, 2).tolist() == [1, 3]
    assert top_k(scores, 3).tolist() == [1, 2, 3]
    assert top_k(scores, 0).tolist() == []
    assert top_k(scores, 99).tolist() == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------- attribution patching


def _reference_attribution(
    vlm, source_enc, base_enc, answer: str, task: str
) -> tuple[float, float, torch.Tensor]:
    """Attribution patching as it was computed before it went through the door: raw forward
    pre-hooks on every ``o_proj`` capture its input in a plain autograd forward of the suffix.
    Kept here as the independent reference the intervention path must reproduce exactly."""
    from functools import partial

    from vlmloc.interventions import HeadRead
    from vlmloc.prefix_cache import suffix_inputs
    from vlmloc.scoring import answer_scores, scored_answer, teacher_forced_inputs
    from vlmloc.sites import SiteMap
    from vlmloc.sweeps import first_after_image

    layers = list(range(vlm.n_layers))
    read = HeadRead(layers)
    p_src = float(vlm.score(source_enc, [answer], task, [read]).perplexity[0])
    ids, mask = scored_answer(vlm.tokenizer, task, answer)
    inputs, targets, _ = teacher_forced_inputs(base_enc, [ids], vlm.tokenizer.pad_token_id)
    start = first_after_image(vlm, inputs["input_ids"])
    inputs["position_ids"] = vlm.position_ids(inputs)
    suffix = suffix_inputs(inputs, vlm.prefix(inputs, start), 1)
    captured = {}

    def grab(layer, _module, args):
        captured[layer] = args[0]

    sm = SiteMap(vlm.family.sites, vlm.hf)
    handles = [sm.o_proj(la).register_forward_pre_hook(partial(grab, la)) for la in layers]
    try:
        with torch.enable_grad():
            logits = vlm.hf(**suffix, use_cache=True).logits
            s = base_enc["input_ids"].shape[1] - 1 - start
            scores = answer_scores(logits[:, s : s + targets.shape[1]], targets, torch.as_tensor([mask]))
            f = scores.mean_logprob[0]
            grads = torch.autograd.grad(f, [captured[la] for la in layers])
    finally:
        for h in handles:
            h.remove()
    out = []
    for la, g in zip(layers, grads, strict=True):
        z_base = captured[la].detach()
        z_src = read.values[la][:, start:].to(z_base.device, z_base.dtype)
        prod = (g.float() * (z_src - z_base).float()).reshape(*g.shape[:2], vlm.n_heads, vlm.head_dim)
        out.append(prod.sum((0, 1, 3)))
    return p_src, float(torch.exp(-f.detach())), torch.cat(out).cpu()


@pytest.mark.parametrize("name", ["toy_llava", "tiny_internvl"])
def test_attribution_patching_through_the_door_equals_the_raw_hook_reference(
    request, name, tmp_path, synthetic_coco
):
    vlm = request.getfixturevalue(name)
    src, base, answer = _pairs(tmp_path, synthetic_coco, 1)[0].encode(vlm, "localization")
    att = attribution_patching(vlm, src, base, answer, "localization")
    p_src, p_base, dlogp = _reference_attribution(vlm, src, base, answer, "localization")
    assert att.dlogp.abs().max() > 1e-3, "some head must matter"
    assert torch.equal(att.dlogp, dlogp)
    assert (att.p_src, att.p_base) == (p_src, p_base)


def test_head_gradient_is_a_null_edit_that_runs_in_every_layer(toy_llava):
    """Holding the heads for a gradient goes through the head hooks of every layer and leaves the
    logits as they were; the gradient it returns is that of the output it was asked about."""
    from vlmloc.interventions import HeadGradient

    im, prompt, answer, enc, lay, emb = _case(toy_llava)
    held = HeadGradient(range(toy_llava.n_layers))
    logits = toy_llava.forward(enc, [held])
    assert held.n_calls == toy_llava.n_layers
    assert logits.requires_grad
    assert torch.equal(logits.detach(), toy_llava.forward(enc))
    grads = held.gradients(logits[0, -1].logsumexp(-1))
    assert set(grads) == set(range(toy_llava.n_layers))
    assert grads[0].shape == held.values[0].shape and grads[0].abs().max() > 0


@pytest.mark.parametrize("name", ["toy_llava", "toy_internvl", "tiny_internvl"])
def test_attribution_matches_a_finite_difference(request, name, tmp_path, synthetic_coco):
    vlm = request.getfixturevalue(name)
    pair = _pairs(tmp_path, synthetic_coco, 1)[0]
    src, base, answer = pair.encode(vlm, "localization")
    att = attribution_patching(vlm, src, base, answer, "localization")
    assert att.dlogp.shape == (vlm.n_layers * vlm.n_heads,)
    assert att.p_src == pytest.approx(float(vlm.score(src, [answer], "localization").perplexity[0]), rel=1e-5)
    assert att.p_base == pytest.approx(
        float(vlm.score(base, [answer], "localization").perplexity[0]), rel=1e-4
    )
    heads = [(0, 0), (vlm.n_layers - 1, vlm.n_heads - 1), (vlm.n_layers // 2, 1)]
    for head in heads:
        fd = finite_difference(vlm, src, base, answer, "localization", head, eps=1e-2)
        est = float(att.dlogp[head[0] * vlm.n_heads + head[1]])
        assert est == pytest.approx(fd, rel=0.05, abs=2e-4), head
    assert att.dlogp.abs().max() > 1e-3, "some head must matter"


def test_attribution_of_a_source_equal_to_the_base_is_zero(toy_internvl, tmp_path, synthetic_coco):
    pair = _pairs(tmp_path, synthetic_coco, 1)[0]
    _, base, answer = pair.encode(toy_internvl, "classification")
    att = attribution_patching(toy_internvl, base, base, answer, "classification")
    assert att.dlogp.abs().max() < 1e-5
    assert att.p_src == pytest.approx(att.p_base, rel=1e-5)


def test_attribution_ranks_heads_like_the_exact_sweep(toy_llava, tmp_path, synthetic_coco):
    pair = _pairs(tmp_path, synthetic_coco, 1)[0]
    src, base, answer = pair.encode(toy_llava, "localization")
    att = attribution_patching(toy_llava, src, base, answer, "localization")
    ex = head_patch_scores(toy_llava, src, base, answer, "localization")
    exact = (ex.patched.mean_logprob - ex.base.mean_logprob).numpy()
    assert spearman(att.dlogp.numpy(), exact) > 0.5
