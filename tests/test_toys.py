"""The shipped toy models: they load offline, answer fixed scenes correctly, and the trainer runs."""

from __future__ import annotations

import json

import pytest
import vlmloc
from vlmloc.metrics import class_mentioned, iou
from vlmloc.registry import TOY_DIR
from vlmloc.synthetic import EVAL_SEED

TOYS = ["toy-llava", "toy-internvl", "toy-qwen"]
PRECISE = ["toy-llava-precise", "toy-internvl-precise"]

#: Regression guard of the shipped weights on 12 large held-out objects: (named at least, IoU >= 0.5 at
#: least). At release the weakly grounded toys name 12 and 12 and box 11 and 12 of them (toy-llava,
#: toy-internvl), the precise ones 11 and 11 and 11 and 11; each bar sits one or two below. This is a smoke
#: test of the weights, not the quality bar on 500 held-out scenes, which the model cards report.
SMOKE_BAR = {
    "toy-llava": (10, 10),
    "toy-internvl": (10, 10),
    "toy-qwen": (10, 10),  # at release 12 named and 12 boxed
    "toy-llava-precise": (10, 10),
    "toy-internvl-precise": (10, 10),
}


@pytest.fixture(scope="module")
def fixed_samples():
    """The first scenes of the held-out set (never used in training), largest objects first."""
    ann, images = vlmloc.resolve_data(None, None)
    samples = vlmloc.load_coco(ann, images, seed=EVAL_SEED)
    return sorted(samples, key=lambda s: -s.area)[:12]


def test_qwen_training_logits_equal_the_models_own_forward():
    """Qwen2.5-VL in stage 2: the tower's tokens put back in token order, the merger as projector,
    M-RoPE positions for the prefix and text positions after it from its last one: the logits at
    every answer position equal those of the model's own forward on the processor's inputs."""
    import torch
    from vlmloc.toys import scenes as toy_scenes
    from vlmloc.toys import train
    from vlmloc.toys.build import BUILDERS

    family = "qwen2_5_vl"
    model, processor = BUILDERS[family](seed=4)
    scenes = toy_scenes.make_scenes(family, processor, model.config, 6, 5, "scenes")
    assert len({tuple(s.grid_thw[0].tolist()) for s in scenes}) > 1  # several aspect ratios
    examples = train.build_examples(family, processor, scenes)
    batch = [e for e in examples if len(e.prefix) == len(examples[0].prefix)][:3]
    feats = [train.scene_tokens(family, model, s) for s in scenes]
    image_id = model.config.image_token_id
    with torch.no_grad():
        shared, targets = train.answer_logits(
            family, model, processor.tokenizer, feats, batch, [s.grid_thw for s in scenes]
        )
        full, full_targets = [], []
        for e in batch:
            scene = scenes[e.scene]
            for question, answer in e.questions:
                ids = torch.tensor([e.prefix + question + answer])
                out = model(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    pixel_values=scene.pixel_values,
                    image_grid_thw=scene.grid_thw,
                    mm_token_type_ids=(ids == image_id).int(),
                )
                start = len(e.prefix) + len(question) - 1
                full.append(out.logits[0, start : start + len(answer)])
                full_targets += answer
    assert targets == full_targets
    assert torch.allclose(shared, torch.cat(full), atol=1e-4), (shared - torch.cat(full)).abs().max()


def _width_turn(theta: float, mrope: list[int], head_dim: int, tokens: int) -> float:
    """The least angle (rad) any of M-RoPE's width pairs turns across ``tokens`` image columns: the
    width section is the last ``mrope[2]`` of the ``head_dim / 2`` rotary frequencies."""
    half = head_dim // 2
    freqs = [theta ** (-2 * j / head_dim) for j in range(half)]
    return min(freqs[half - mrope[2] :]) * tokens


def test_toy_qwen_can_tell_left_from_right_in_its_rotary_positions():
    """toy-qwen's tower says what, not where, so the decoder reads a token's column from M-RoPE's
    width pairs alone: they must turn a radian or more across the widest toy row (96 px / 8 px =
    12 tokens). At Qwen2.5-VL's own base (1e6) on a 16-wide head they turn 0.002 rad or less: the first
    toy-qwen, trained so, placed boxes left-right five times worse than up-down."""
    from vlmloc.toys.qwen import QWEN_ROPE_THETA, QWEN_TOY_GEOMETRY, QWEN_TOY_TEXT

    cfg = json.loads((TOY_DIR / "toy-qwen" / "config.json").read_text())["text_config"]
    rope = cfg["rope_parameters"]
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    row = int(QWEN_TOY_GEOMETRY["max_pixels"] ** 0.5) // (
        QWEN_TOY_GEOMETRY["patch"] * QWEN_TOY_GEOMETRY["merge"]
    )
    assert rope["rope_theta"] == QWEN_TOY_TEXT["rope_theta"], "the checkpoint and its builder disagree"
    assert _width_turn(rope["rope_theta"], rope["mrope_section"], head_dim, row) >= 1.0
    assert _width_turn(QWEN_ROPE_THETA, rope["mrope_section"], head_dim, row) < 0.01


def test_qwen_prompts_expand_as_its_processor_does():
    from vlmloc.families import FAMILIES
    from vlmloc.toys import scenes as toy_scenes
    from vlmloc.toys import train
    from vlmloc.toys.build import BUILDERS

    family = "qwen2_5_vl"
    model, processor = BUILDERS[family](seed=0)
    fam = FAMILIES[family]
    for scene in toy_scenes.make_scenes(family, processor, model.config, 3, 5, "scenes"):
        prompt = fam.chat_prompt(processor, fam.question("localization", scene.objects[0][0]))
        want = processor(images=[scene.image], text=[prompt], return_tensors="pt")["input_ids"][0].tolist()
        n_tokens = sum(v.n_tokens for v in scene.views)
        assert (
            processor.tokenizer(train.expand_prompt(family, processor, prompt, n_tokens))["input_ids"] == want
        )


def test_merge_group_order_lists_each_2x2_block_together():
    from vlmloc.toys.scenes import merge_group_order

    assert merge_group_order(2, 4, 2).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert merge_group_order(3, 3, 1).tolist() == list(range(9))


@pytest.mark.parametrize("model_id", TOYS + PRECISE)
def test_toy_loads_offline_with_model_card(model_id, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vlm = vlmloc.load_model(model_id, device="cpu")
    assert vlm.spec.toy
    assert vlm.n_layers >= 8 and vlm.n_heads >= 8
    assert vlm.config.vision_config.num_hidden_layers >= 4
    card = json.loads((TOY_DIR / model_id / "training.json").read_text())
    assert card["held_out"]["classification"]["n"] > 0
    assert (TOY_DIR / model_id / "MODEL_CARD.md").read_text().startswith(f"# {model_id}")


def test_toy_llava_grid_is_fine_enough():
    vlm = vlmloc.load_model("toy-llava", device="cpu")
    view = vlm.views((200, 100))[0]
    assert view.rows >= 12 and view.cols >= 12


@pytest.mark.parametrize("model_id", TOYS + PRECISE)
def test_toy_answers_fixed_scenes(model_id, fixed_samples):
    """Large held-out objects are named and boxed as well as at release (a smoke test, not the bar)."""
    vlm = vlmloc.load_model(model_id, device="cpu")
    images = [s.load_image() for s in fixed_samples]
    cls = vlm.generate(vlm.encode(images, [vlm.prompt("classification")] * len(images)))
    loc = vlm.generate(vlm.encode(images, [vlm.prompt("localization", s.category) for s in fixed_samples]))
    named = [class_mentioned(a, s.category) for a, s in zip(cls, fixed_samples, strict=True)]
    ious = [
        iou(vlm.parse_box(a, s.load_image().size), s.box) for a, s in zip(loc, fixed_samples, strict=True)
    ]
    min_named, min_boxed = SMOKE_BAR[model_id]
    assert sum(named) >= min_named, list(zip(cls, [s.category for s in fixed_samples], strict=True))
    assert sum(i >= 0.5 for i in ious) >= min_boxed, ious


@pytest.mark.parametrize("family", ["llava", "internvl", "qwen2_5_vl"])
def test_training_script_runs_end_to_end(family, tmp_path):
    from vlmloc.toys.train import main

    out = tmp_path / f"toy-{family}"
    main(
        [
            "--family", family, "--out", str(out), "--n-scenes", "6", "--stage1-steps", "2",
            "--stage2-steps", "2", "--batch1", "2", "--batch2", "2", "--n-eval", "2",
        ]
    )  # fmt: skip
    card = json.loads((out / "training.json").read_text())
    assert card["args"]["stage2_steps"] == 2
    assert (out / "model.safetensors").exists()
    assert set(card["held_out"]) == {"classification", "classification_by_colour", "localization"}
    by_colour = card["held_out"]["classification_by_colour"]
    assert sum(v["n"] for v in by_colour.values()) == card["held_out"]["classification"]["n"]
    spec = vlmloc.register(vlmloc.ModelSpec(f"retrained-{family}", family, str(out), "float32", toy=True))
    assert vlmloc.load_model(spec.model_id, device="cpu").spec.family == family


@pytest.mark.parametrize(("family", "model_id"), [("llava", "toy-llava"), ("internvl", "toy-internvl")])
def test_shared_prefix_training_logits_equal_full_sequences(family, model_id):
    """Stage 2 runs each scene's image prefix once and its questions from the KV cache; the logits
    at every answer position must be those of the full prompt + answer run through the model."""
    import torch
    from vlmloc.families import FAMILIES
    from vlmloc.toys import scenes as toy_scenes
    from vlmloc.toys import train

    vlm = vlmloc.load_model(model_id, device="cpu")
    model, processor = vlm.hf, vlm.processor
    scenes = toy_scenes.make_scenes(family, processor, model.config, 6, 5, "scenes")
    examples = train.build_examples(family, processor, scenes)
    batch = [e for e in examples if len(e.prefix) == len(examples[0].prefix)][:3]
    assert sum(len(e.questions) for e in batch) > len(batch)  # at least one scene shares its prefix
    feats = [train.tower_tokens(family, model, s.pixel_values) for s in scenes]
    image_id = FAMILIES[family].image_token_id(model.config)
    lm = model.model.language_model
    with torch.no_grad():
        shared, targets = train.answer_logits(family, model, processor.tokenizer, feats, batch)
        full, full_targets = [], []
        for e in batch:
            for question, answer in e.questions:
                ids = torch.tensor([e.prefix + question + answer])
                emb = lm.embed_tokens(ids)
                img = train.project(family, model, feats[e.scene])
                emb = emb.masked_scatter((ids == image_id).unsqueeze(-1), img.reshape(-1, img.shape[-1]))
                logits = model.lm_head(lm(inputs_embeds=emb).last_hidden_state)[0]
                start = len(e.prefix) + len(question) - 1
                full.append(logits[start : start + len(answer)])
                full_targets += answer
    assert targets == full_targets
    assert torch.allclose(shared, torch.cat(full), atol=1e-4), (shared - torch.cat(full)).abs().max()


@pytest.mark.parametrize("model_id", TOYS + PRECISE)
def test_default_toys_are_weakly_grounded_and_their_twins_precise(model_id):
    """The defaults' towers last learned patch-level targets; the ``-precise`` ones ~2 px sub-cells.
    The card says so, and toy-llava names its twin as chapter 2's contrast (toy-internvl does not,
    for CI's time)."""
    from vlmloc.registry import get_spec
    from vlmloc.toys.cards import grounding

    card = json.loads((TOY_DIR / model_id / "training.json").read_text())
    want = "precise" if model_id.endswith("-precise") else "weak"
    assert grounding(card) == want
    text = (TOY_DIR / model_id / "MODEL_CARD.md").read_text()
    assert ("Weakly grounded tokens" in text) == (want == "weak")
    assert get_spec(model_id).contrast == ("toy-llava-precise" if model_id == "toy-llava" else None)


def test_weak_targets_are_the_covered_share_of_the_whole_patch():
    """``grounding="weak"`` gives one coverage number per patch, nonzero exactly where a precise
    sub-cell is covered, and near the sub-cells' mean (sub-cells differ in area after rounding)."""
    from vlmloc.toys import scenes as toy_scenes

    vlm = vlmloc.load_model("toy-llava", device="cpu")
    scene = toy_scenes.make_scenes("llava", vlm.processor, vlm.hf.config, 1, 11, "scene")[0]
    grid, patch = 12, 8
    assert toy_scenes.sub_cells(patch, "weak") == 1 and toy_scenes.sub_cells(patch, "precise") == 4
    with pytest.raises(ValueError, match="grounding must be one of"):
        toy_scenes.sub_cells(patch, "exact")
    obj, _, weak = toy_scenes.patch_targets(scene, grid, toy_scenes.sub_cells(patch, "weak"))
    _, _, fine = toy_scenes.patch_targets(scene, grid, toy_scenes.sub_cells(patch, "precise"))
    assert weak.shape[-1] == 1 and fine.shape[-1] == 16
    assert ((weak[..., 0] > 0) == (fine.amax(-1) > 0)).all() and obj.sum() > 0
    assert (weak[..., 0] - fine.mean(-1)).abs().max() < 0.2
    assert ((weak[..., 0] > 0) & (weak[..., 0] < 1)).any()  # partial patches: a share, not a flag


def test_decoder_from_keeps_the_decoder_and_starts_a_fresh_seeded_tower(tmp_path):
    import torch
    from vlmloc.toys.build import BUILDERS
    from vlmloc.toys.train import main

    src = TOY_DIR / "toy-llava"
    out = tmp_path / "fresh-tower"
    main(
        [
            "--family", "llava", "--out", str(out), "--n-scenes", "2", "--stage1-steps", "0",
            "--stage2-steps", "0", "--n-eval", "0", "--decoder-from", str(src), "--seed", "3",
        ]
    )  # fmt: skip
    old = vlmloc.load_model("toy-llava", device="cpu").hf.state_dict()
    spec = vlmloc.register(vlmloc.ModelSpec("fresh-tower", "llava", str(out), "float32", toy=True))
    new = vlmloc.load_model(spec.model_id, device="cpu").hf.state_dict()
    fresh = BUILDERS["llava"](seed=3)[0].state_dict()
    for name, value in new.items():
        want = fresh[name] if "vision_tower" in name else old[name]
        assert torch.equal(value, want), name
    card = json.loads((out / "training.json").read_text())
    assert card["history"] and card["args"]["decoder_from"] == str(src)
    with pytest.raises(SystemExit):
        main(["--family", "llava", "--out", str(out), "--init-from", str(src), "--decoder-from", str(src)])
