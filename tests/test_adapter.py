"""The model adapters at the real geometry: token counts and positions, the vision path's token
order (patch -> token -> LLM position), both box formats, and the loading errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import vlmloc
from PIL import Image
from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas
from vlmloc import registry
from vlmloc.registry import ModelSpec, UnknownModelError


def _image(size, colour=(120, 80, 40)):
    return Image.new("RGB", size, colour)


# --------------------------------------------------------------------------- token counts and positions


def test_llava_576_contiguous_visual_tokens(tiny_llava):
    vc = tiny_llava.config.vision_config
    assert (vc.image_size, vc.patch_size) == (336, 14)
    im = _image((640, 480))
    enc = tiny_llava.encode([im], [tiny_llava.prompt("localization", "star")])
    ids = enc["input_ids"][0]
    pos = (ids == tiny_llava.config.image_token_id).nonzero().squeeze(-1)
    assert len(pos) == 576  # (336 / 14)^2 = 24 * 24, CLS dropped
    assert pos.tolist() == list(range(int(pos[0]), int(pos[0]) + 576))  # one contiguous block
    lay = tiny_llava.layouts(enc, [im])[0]
    assert lay.positions.tolist() == pos.tolist()
    assert [(v.name, v.rows, v.cols, v.offset) for v in lay.views] == [("image", 24, 24, 0)]
    assert tiny_llava.image_token_id == tiny_llava.config.image_token_id


@pytest.mark.parametrize("size", [(640, 480), (300, 900), (1000, 200), (448, 448)])
def test_internvl_token_count_and_views(tiny_internvl, size):
    w, h = size
    cols, rows = get_optimal_tiled_canvas((h, w), (448, 448), 1, 12)
    n = cols * rows
    expected = 256 if n == 1 else 256 * (n + 1)
    im = _image(size)
    enc = tiny_internvl.encode([im], [tiny_internvl.prompt("classification")])
    assert int((enc["input_ids"][0] == tiny_internvl.config.image_token_id).sum()) == expected
    assert enc["pixel_values"].shape[0] == (1 if n == 1 else n + 1)
    lay = tiny_internvl.layouts(enc, [im])[0]
    assert lay.n_tokens == expected
    if n == 1:
        assert [v.name for v in lay.views] == ["image"]
        return
    assert [v.name for v in lay.views] == [f"tile {i}" for i in range(n)] + ["thumbnail"]
    assert [v.kind for v in lay.views] == ["local"] * n + ["global"]
    assert [v.offset for v in lay.views] == [256 * i for i in range(n + 1)]
    for i, v in enumerate(lay.views[:n]):  # row-major tiles of w / cols x h / rows original pixels
        c, r = i % cols, i // cols
        assert v.region == pytest.approx((c * w / cols, r * h / rows, (c + 1) * w / cols, (r + 1) * h / rows))
    assert lay.views[-1].region == (0.0, 0.0, float(w), float(h))


def test_internvl_tile_grids_by_hand():
    # Sanity of the reference itself: aspect 5 -> 5 x 1 tiles; a square 448 image -> one tile.
    assert get_optimal_tiled_canvas((200, 1000), (448, 448), 1, 12) == (5, 1)
    assert get_optimal_tiled_canvas((900, 300), (448, 448), 1, 12) == (1, 3)
    assert get_optimal_tiled_canvas((448, 448), (448, 448), 1, 12) == (1, 1)


def test_batch_layouts_with_left_padding(tiny_llava):
    ims = [_image((300, 200)), _image((200, 300))]
    prompts = [tiny_llava.prompt("classification"), tiny_llava.prompt("localization", "star")]
    enc = tiny_llava.encode(ims, prompts)
    lays = tiny_llava.layouts(enc, ims)
    short = enc["attention_mask"][0] == 0  # the shorter prompt is padded on the left
    assert short.any() and short[0]
    for row, lay in enumerate(lays):
        assert (enc["input_ids"][row, lay.positions] == tiny_llava.image_token_id).all()
        assert lay.image_size == ims[row].size
    assert int(lays[0].positions[0]) - int(lays[1].positions[0]) == int(short.sum())


def test_encode_rejects_mismatched_batch(tiny_llava):
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        tiny_llava.encode([_image((10, 10))] * 2, ["x"])


# --------------------------------------------------------------------------- the vision path's token order


def _embeddings_module(vlm):
    return vlm.hf.model.vision_tower.embeddings


def _vision_rows_changed(vlm, block):
    """Rows of the vision embeddings output ([CLS] + patches) that change when a pixel block is lit."""
    side = vlm.config.vision_config.image_size
    side = side[0] if isinstance(side, list | tuple) else side
    base = torch.zeros(1, 3, side, side)
    lit = base.clone()
    y0, y1, x0, x1 = block
    lit[:, :, y0:y1, x0:x1] = 1.0
    cap = []
    h = _embeddings_module(vlm).register_forward_hook(lambda m, a, out: cap.append(out.detach().clone()))
    try:
        with torch.no_grad():
            vlm.hf.model.vision_tower(pixel_values=base)
            vlm.hf.model.vision_tower(pixel_values=lit)
    finally:
        h.remove()
    diff = (cap[0] - cap[1]).abs().sum(-1)[0]
    return torch.nonzero(diff > 1e-6).squeeze(-1).tolist()


def test_llava_pixels_to_patch_rows(tiny_llava):
    # A 14 x 14 block at patch (r=3, c=5) changes only patch row 1 + 3 * 24 + 5 (row 0 is CLS).
    assert _vision_rows_changed(tiny_llava, (42, 56, 70, 84)) == [1 + 3 * 24 + 5]


def test_internvl_pixels_to_patch_rows(tiny_internvl):
    # A 28 x 28 block at token cell (r=3, c=5) covers patches (6..7, 10..11) of the 32 x 32 grid.
    expected = sorted(1 + pr * 32 + pc for pr in (6, 7) for pc in (10, 11))
    assert _vision_rows_changed(tiny_internvl, (84, 112, 140, 168)) == expected


def _trace_markers(vlm, im):
    """Run the LLM input of one image with markers: tower output row 1 + p holds p (row 0, CLS, holds
    -1), and the projector output token k of view t holds t * n + k. Returns the projector input,
    the LLM input embeddings and the encoding."""
    enc = vlm.encode([im], [vlm.prompt("classification")])
    layer = vlm.config.vision_feature_layer
    cap = {}

    def marker(x):
        m = torch.zeros_like(x)
        m[:, 0, 0] = -1.0
        m[:, 1:, 0] = torch.arange(x.shape[1] - 1, dtype=x.dtype)
        return m

    def tower(mod, args, out):
        if layer == -1 and vlm.family.name == "internvl":
            out.last_hidden_state = marker(out.last_hidden_state)
        else:
            hs = list(out.hidden_states)
            hs[layer] = marker(hs[layer])
            out.hidden_states = tuple(hs)
        return out

    def proj_in(mod, args):
        cap["proj_in"] = args[0].detach().clone()

    def proj_out(mod, args, out):
        n, k, h = out.shape
        return torch.arange(n * k, dtype=out.dtype).reshape(n, k, 1).expand(n, k, h).clone()

    hooks = [
        vlm.hf.model.vision_tower.register_forward_hook(tower),
        vlm.hf.model.multi_modal_projector.register_forward_pre_hook(proj_in),
        vlm.hf.model.multi_modal_projector.register_forward_hook(proj_out),
    ]
    try:
        emb = vlm.input_embeddings(enc)
    finally:
        for h in hooks:
            h.remove()
    return cap["proj_in"], emb, enc


def _check_scatter(vlm, emb, enc, im):
    lay = vlm.layouts(enc, [im])[0]
    vis = emb[0, lay.positions]
    assert (vis == torch.arange(lay.n_tokens, dtype=vis.dtype)[:, None]).all()  # token j -> j-th position
    other = torch.ones(enc["input_ids"].shape[1], dtype=torch.bool)
    other[lay.positions] = False
    with torch.no_grad():
        text = vlm.hf.get_input_embeddings()(enc["input_ids"][0, other])
    assert torch.equal(emb[0, other], text)  # text positions keep their token embeddings


def test_llava_patch_to_token_to_position(tiny_llava):
    im = _image((336, 336))
    proj_in, emb, enc = _trace_markers(tiny_llava, im)
    # CLS dropped, no reordering: projector input token k is patch k = (k // 24, k % 24).
    assert proj_in.shape[:2] == (1, 576)
    assert proj_in[0, :, 0].tolist() == list(range(576))
    _check_scatter(tiny_llava, emb, enc, im)


def test_internvl_pixel_shuffle_order(tiny_internvl):
    im = _image((896, 448))  # 2 tiles + thumbnail: three views through the tower
    proj_in, emb, enc = _trace_markers(tiny_internvl, im)
    assert proj_in.shape[:2] == (3, 256)
    c = proj_in.shape[-1] // 4  # pixel shuffle stacks 2 x 2 patches of c channels
    blocks = proj_in.reshape(3, 256, 4, c)
    assert not blocks[..., 1:].any()  # only each patch's marker channel is set
    got = blocks[0, :, :, 0]  # the four patch markers of each token of tile 0
    for k in range(256):
        r, col = divmod(k, 16)
        patches = sorted((2 * r + i) * 32 + (2 * col + j) for i in (0, 1) for j in (0, 1))
        assert sorted(got[k].tolist()) == patches, f"token {k}"
    assert sorted(got[3 * 16 + 5].tolist()) == [202, 203, 234, 235]  # cell (3, 5): patches (6..7, 10..11)
    _check_scatter(tiny_internvl, emb, enc, im)


# --------------------------------------------------------------------------- prompts and box formats


def test_prompts(tiny_llava, tiny_internvl):
    assert tiny_llava.prompt("localization", "star") == (
        "USER: <image>\nPlease provide the bounding box coordinate of the region this sentence describes: star."
        " ASSISTANT:"
    )
    assert tiny_llava.prompt("classification") == "USER: <image>\nWhat objects are in this image? ASSISTANT:"
    p = tiny_internvl.prompt("localization", "star")
    assert "this sentence describes: <ref>star</ref>" in p and "<IMG_CONTEXT>" in p
    with pytest.raises(ValueError, match="unknown task"):
        tiny_llava.prompt("counting")


def test_llava_box_format_on_padded_square(tiny_llava):
    size = (640, 480)  # padded to 640 x 640 at y offset (640 - 480) // 2 = 80
    box = (64.0, 48.0, 320.0, 400.0)
    # by hand: x / 640 and (y + 80) / 640 -> 0.1, 0.2, 0.5, 0.75
    assert tiny_llava.format_box(box, size, "star") == "[0.10, 0.20, 0.50, 0.75]"
    assert tiny_llava.parse_box("[0.10, 0.20, 0.50, 0.75]", size) == pytest.approx(box)
    # the padding band is part of the 0-1 square: y = 0 of the square is y = -80 of the image
    assert tiny_llava.parse_box("It is at [0.5, 0.0, 1.0, 0.125].", size) == pytest.approx((320, -80, 640, 0))
    assert tiny_llava.parse_box("no box here", size) is None
    assert tiny_llava.parse_box("[0.1, 0.2, 0.3]", size) is None  # three numbers are no box


def test_internvl_box_format_thousandths_of_the_original(tiny_internvl):
    size = (640, 480)
    box = (64.0, 48.0, 320.0, 400.0)
    # by hand: 64/640, 48/480, 320/640, 400/480 -> 100, 100, 500, 833.3 -> 833
    assert tiny_internvl.format_box(box, size, "star") == "<ref>star</ref><box>[[100, 100, 500, 833]]</box>"
    parsed = tiny_internvl.parse_box("<ref>star</ref><box>[[100, 100, 500, 833]]</box>", size)
    assert parsed == pytest.approx((64.0, 48.0, 320.0, 833 / 1000 * 480))
    assert tiny_internvl.parse_box("[0.1, 0.2, 0.5, 0.75]", size) is None  # LLaVA's format has no <box>
    assert tiny_internvl.parse_box("I don't know", size) is None


def test_box_round_trip_through_the_tokenizer(tiny_vlm):
    size, box = (320, 160), (32.0, 16.0, 160.0, 144.0)
    text = tiny_vlm.format_box(box, size, "star")
    ids = tiny_vlm.tokenizer(text, add_special_tokens=False)["input_ids"] + [tiny_vlm.tokenizer.eos_token_id]
    decoded = tiny_vlm.decode(torch.tensor(ids))
    assert tiny_vlm.tokenizer.eos_token not in decoded
    # exact in both formats: LLaVA [0.10, 0.30, 0.50, 0.70] of the 320 square (y offset 80),
    # InternVL [[100, 100, 500, 900]] of the 320 x 160 image
    assert tiny_vlm.parse_box(decoded, size) == pytest.approx(box)


# --------------------------------------------------------------------------- loading errors


def test_unknown_model_id_lists_supported_ids():
    with pytest.raises(UnknownModelError) as err:
        vlmloc.load_model("llava-hf/llava-1.5-70b-hf", device="cpu")
    msg = str(err.value)
    assert "llava-1.5-70b-hf" in msg
    for mid in ("llava-hf/llava-1.5-7b-hf", "OpenGVLab/InternVL3_5-8B-HF", "toy-llava", "toy-internvl"):
        assert mid in msg
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnknownModelError):
        registry.get_spec(None)


def test_missing_toy_checkpoint_names_the_retrain_command(monkeypatch, tmp_path):
    missing = tmp_path / "no-such-toy"
    monkeypatch.setitem(
        registry.REGISTRY, "missing-toy", ModelSpec("missing-toy", "llava", str(missing), "float32", toy=True)
    )
    with pytest.raises(FileNotFoundError) as err:
        vlmloc.load_model("missing-toy", device="cpu")
    msg = str(err.value)
    assert str(missing) in msg
    assert f"python -m vlmloc.toys.train --family llava --out {missing}" in msg


def test_bad_dtype_and_preprocess(tiny_llava):
    with pytest.raises(ValueError, match="float32, float16 or bfloat16.*'float64'"):
        vlmloc.load_model(tiny_llava.model_id, device="cpu", dtype="float64")
    with pytest.raises(ValueError, match="llava_preprocess must be 'pad' or 'crop'"):
        vlmloc.load_model(tiny_llava.model_id, device="cpu", llava_preprocess="stretch")


def test_registry_lists_the_builtin_ids():
    ids = vlmloc.model_ids()
    assert ids == sorted(ids)
    assert {"llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf", "OpenGVLab/InternVL3_5-8B-HF"} <= set(
        ids
    )
    assert registry.get_spec("OpenGVLab/InternVL3_5-8B-HF").family == "internvl"


def test_model_facts(tiny_vlm):
    assert tiny_vlm.dtype == torch.float32
    assert tiny_vlm.n_layers == 2 and tiny_vlm.n_heads == 4
    # the tiny Qwen3 has 12-wide heads (4 x 12 != hidden 32), as a head slice must not assume otherwise
    assert tiny_vlm.head_dim == (12 if tiny_vlm.spec.family == "internvl" else 8)
    assert len(tiny_vlm.layers) == tiny_vlm.n_layers
    assert np.isscalar(tiny_vlm.image_token_id)
