"""Integrated Gradients over the visual tokens: shape, completeness, and agreement with the nnsight path.

Completeness (Sundararajan et al., 2017) is IG's classical sanity check: the attributions sum to
f(x) - f(x') up to the error of the Riemann sum, which shrinks with the number of steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vlmloc.attribution import answer_log_prob, integrated_gradients, teacher_forced_answer, top_k


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
