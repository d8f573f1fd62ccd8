"""Train a toy VLM from scratch on synthetic scenes, on a CPU, in two stages.

Stage 1 trains the vision tower alone on what CLIP-like features carry: *what is at each patch*
(objectness and class), with heads on exactly the tokens the model passes to its projector. It is
never told where boxes are. Stage 2 freezes the tower, caches its features, and trains the
projector and the decoder on both prompts (classification and localization) in the family's own
answer format, with loss on answer tokens only and soft (Gaussian) labels over neighbouring
coordinate tokens. The decoder has to learn *where* things are from the token layout.

    python -m vlmloc.toys.train --family llava --out lib/vlmloc/toys/checkpoints/toy-llava

Seeded and deterministic up to thread scheduling; see ``--help`` for the step counts.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..families import FAMILIES
from ..geometry import View
from ..metrics import class_mentioned, iou, localization_summary, rate_summary
from ..synthetic import CLASSES, EVAL_SEED, TRAIN_SEED, generate_scene
from .build import BUILDERS


@dataclass
class Scene:
    image: object
    objects: list  # (category, mask, box)
    pixel_values: torch.Tensor  # (views, 3, H, W)
    views: list[View]


def scene_objects(visible) -> list[tuple[str, np.ndarray, tuple[float, float, float, float]]]:
    out = []
    for spec, m in visible:
        ys, xs = np.nonzero(m)
        if len(xs) < 12:
            continue
        out.append(
            (spec.category, m, (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
        )
    return out


def make_scenes(family: str, processor, config, n: int, seed: int, desc: str) -> list[Scene]:
    fam = FAMILIES[family]
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in tqdm(range(n), desc=desc, mininterval=5):
        img, visible = generate_scene(rng)
        objs = scene_objects(visible)
        if not objs:
            continue
        # InternVLProcessor forces crop_to_patches=True; the image processor alone would not tile.
        extra = {"crop_to_patches": True} if family == "internvl" else {}
        pv = processor.image_processor(images=[img], return_tensors="pt", **extra)["pixel_values"]
        scenes.append(Scene(img, objs, pv, fam.views(config, processor, img.size)))
    return scenes


def patch_targets(scene: Scene, patch_grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view and patch: objectness (0/1) and class index (-100 where no object)."""
    objness, classes = [], []
    w, h = scene.image.size
    for v in scene.views:
        pv = View(v.name, v.kind, patch_grid, patch_grid, 0, v.region)
        rows, cols = pv.cell_ranges(w, h)
        counts = np.zeros((len(scene.objects), patch_grid, patch_grid))
        for k, (_, m, _) in enumerate(scene.objects):
            for r, (a, b) in enumerate(rows):
                for c, (x0, x1) in enumerate(cols):
                    counts[k, r, c] = m[a:b, x0:x1].sum() if b > a and x1 > x0 else 0
        best = counts.argmax(0)
        has = counts.max(0) > 0
        cls = np.where(has, np.array([CLASSES.index(o[0]) for o in scene.objects])[best], -100)
        objness.append(torch.tensor(has.ravel(), dtype=torch.float32))
        classes.append(torch.tensor(cls.ravel(), dtype=torch.long))
    return torch.stack(objness), torch.stack(classes)


# ----------------------------------------------------------------------------------------------
# family-specific glue: the tower tokens the projector sees, and the projection itself
# ----------------------------------------------------------------------------------------------


def tower_tokens(family: str, model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch tokens as the model's get_image_features selects them, before any projection."""
    cfg = model.config
    out = model.model.vision_tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
    if family == "internvl" and cfg.vision_feature_layer == -1:
        feats = out.last_hidden_state
    else:
        feats = out.hidden_states[cfg.vision_feature_layer]
    return feats[:, 1:]  # "default" strategy drops CLS


def project(family: str, model, tokens: torch.Tensor) -> torch.Tensor:
    """Tower tokens -> LLM input embeddings (InternVL: pixel shuffle first)."""
    if family == "internvl":
        b, n, c = tokens.shape
        side = int(math.isqrt(n))
        x = model.model.pixel_shuffle(
            tokens.reshape(b, side, side, c), scale_factor=model.config.downsample_ratio
        )
        tokens = x.reshape(b, -1, x.shape[-1])
    return model.model.multi_modal_projector(tokens)


def warmup_cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over 5% of the steps, then cosine decay to 5% of the peak."""
    warm = max(1, steps // 20)

    def f(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warm) / max(1, steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


# ----------------------------------------------------------------------------------------------
# stage 1
# ----------------------------------------------------------------------------------------------


def train_tower(
    family: str, model, scenes: list[Scene], steps: int, batch: int, lr: float, seed: int
) -> dict:
    cfg = model.config.vision_config
    img = cfg.image_size[0] if isinstance(cfg.image_size, list | tuple) else cfg.image_size
    patch = cfg.patch_size[0] if isinstance(cfg.patch_size, list | tuple) else cfg.patch_size
    grid = img // patch
    pix, obj, cls = [], [], []
    for s in scenes:
        o, c = patch_targets(s, grid)
        pix.append(s.pixel_values)
        obj.append(o)
        cls.append(c)
    pix_t, obj_t, cls_t = torch.cat(pix), torch.cat(obj), torch.cat(cls)
    width = cfg.hidden_size
    heads = torch.nn.Linear(width, 1 + len(CLASSES))
    tower = model.model.vision_tower
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    g = torch.Generator().manual_seed(seed)
    tower.train()
    log = {}
    bar = tqdm(range(steps), desc=f"stage 1 ({family} tower)", mininterval=10)
    for step in bar:
        idx = torch.randint(len(pix_t), (batch,), generator=g)
        feats = tower_tokens(family, model, pix_t[idx])
        out = heads(feats)
        l_obj = F.binary_cross_entropy_with_logits(out[..., 0], obj_t[idx])
        l_cls = F.cross_entropy(
            out[..., 1:].reshape(-1, len(CLASSES)), cls_t[idx].reshape(-1), ignore_index=-100
        )
        loss = l_obj + l_cls
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(obj=f"{l_obj.item():.3f}", cls=f"{l_cls.item():.3f}")
    tower.eval()
    with torch.no_grad():
        n = min(512, len(pix_t))
        out = heads(tower_tokens(family, model, pix_t[:n]))
        pred_obj = out[..., 0] > 0
        log["patch_objectness_acc"] = float((pred_obj == (obj_t[:n] > 0)).float().mean())
        m = cls_t[:n] >= 0
        log["patch_class_acc"] = float((out[..., 1:].argmax(-1)[m] == cls_t[:n][m]).float().mean())
    return log


# ----------------------------------------------------------------------------------------------
# stage 2
# ----------------------------------------------------------------------------------------------


def classification_answer(scene: Scene) -> str:
    """All classes in the scene, left to right: "circle, star and square"."""
    order = sorted(scene.objects, key=lambda o: (o[2][0] + o[2][2]) / 2)
    names = list(dict.fromkeys(o[0] for o in order))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def expand_prompt(family: str, processor, prompt: str, n_tokens: int) -> str:
    """The prompt with its image placeholder expanded as the processor does (checked against it)."""
    if family == "llava":
        return prompt.replace("<image>", "<image>" * n_tokens)
    tk = processor.tokenizer
    return prompt.replace(
        tk.context_image_token, tk.start_image_token + tk.context_image_token * n_tokens + tk.end_image_token
    )


def build_examples(family: str, processor, scenes: list[Scene]) -> list[tuple[int, list[int], list[int]]]:
    """(scene index, prompt ids, answer ids) for classification and every unambiguous localization."""
    fam = FAMILIES[family]
    tok = processor.tokenizer
    out = []
    for i, s in enumerate(scenes):
        n_tok = sum(v.n_tokens for v in s.views)
        q = fam.chat_prompt(processor, fam.question("classification", ""))
        ids = tok(expand_prompt(family, processor, q, n_tok))["input_ids"]
        out.append((i, ids, tok(classification_answer(s))["input_ids"] + [tok.eos_token_id]))
        counts = {}
        for o in s.objects:
            counts[o[0]] = counts.get(o[0], 0) + 1
        for cat, _, box in s.objects:
            if counts[cat] != 1:
                continue
            q = fam.chat_prompt(processor, fam.question("localization", cat))
            ids = tok(expand_prompt(family, processor, q, n_tok))["input_ids"]
            ans = fam.format_box(box, s.views, s.image.size, cat)
            out.append((i, ids, tok(ans)["input_ids"] + [tok.eos_token_id]))
    return out


def coordinate_targets(family: str, tok, sigma: float) -> tuple[torch.Tensor, dict[int, int], torch.Tensor]:
    """Coordinate token ids, their index, and a Gaussian soft-label matrix over them."""
    values = [i / 100 for i in range(101)] if family == "llava" else list(range(1001))
    words = [f"{v:.2f}" for v in values] if family == "llava" else [str(v) for v in values]
    ids = torch.tensor(tok.convert_tokens_to_ids(words))
    pos = torch.arange(len(values), dtype=torch.float32)
    q = torch.exp(-0.5 * ((pos[:, None] - pos[None, :]) / sigma) ** 2)
    q = q / q.sum(1, keepdim=True)
    return ids, {int(t): k for k, t in enumerate(ids)}, q


def train_decoder(
    family: str,
    model,
    processor,
    scenes: list[Scene],
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    loc_share: float,
) -> dict:
    tok = processor.tokenizer
    with torch.no_grad():
        feats = [
            tower_tokens(family, model, s.pixel_values).to(torch.bfloat16)
            for s in tqdm(scenes, desc="cache tower", mininterval=10)
        ]
    examples = build_examples(family, processor, scenes)
    starts = _box_start_ids(family, tok)
    loc_ex = [e for e in examples if e[2][0] in starts]
    cls_ex = [e for e in examples if e[2][0] not in starts]
    coord_ids, coord_index, q = coordinate_targets(family, tok, sigma=1.5 if family == "llava" else 15.0)
    image_id = FAMILIES[family].image_token_id(model.config)
    for p in model.model.vision_tower.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = warmup_cosine(opt, steps)
    rnd = random.Random(seed)
    lm = model.model.language_model
    model.train()
    bar = tqdm(range(steps), desc=f"stage 2 ({family} decoder)", mininterval=10)
    for step in bar:
        chosen = [
            rnd.choice(loc_ex) if rnd.random() < loc_share else rnd.choice(cls_ex) for _ in range(batch)
        ]
        seqs = [p + a for _, p, a in chosen]
        L = max(len(s) for s in seqs)
        ids = torch.full((batch, L), tok.pad_token_id)
        am = torch.zeros((batch, L), dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
            am[b, : len(s)] = 1
        emb = lm.embed_tokens(ids)
        img = project(family, model, torch.cat([feats[i].float() for i, _, _ in chosen]))
        mask = (ids == image_id).unsqueeze(-1)
        emb = emb.masked_scatter(mask, img.reshape(-1, img.shape[-1]).to(emb.dtype))
        hidden = lm(inputs_embeds=emb, attention_mask=am).last_hidden_state
        rows, cols, targets = [], [], []
        for b, (_, p, a) in enumerate(chosen):
            for k, t in enumerate(a):
                rows.append(b)
                cols.append(len(p) + k - 1)
                targets.append(t)
        logp = F.log_softmax(model.lm_head(hidden[rows, cols]).float(), -1)
        targets_t = torch.tensor(targets)
        is_coord = torch.tensor([t in coord_index for t in targets])
        loss_hard = F.nll_loss(logp[~is_coord], targets_t[~is_coord]) if (~is_coord).any() else 0.0
        loss_soft = 0.0
        if is_coord.any():
            qi = q[torch.tensor([coord_index[t] for t in targets if t in coord_index])]
            loss_soft = -(logp[is_coord][:, coord_ids] * qi).sum(-1).mean()
        loss = loss_hard + loss_soft
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"n_examples": len(examples), "n_localization_examples": len(loc_ex)}


def _box_start_ids(family: str, tok) -> set[int]:
    first = "[" if family == "llava" else "<ref>"
    return {tok.convert_tokens_to_ids(first)}


# ----------------------------------------------------------------------------------------------
# held-out evaluation (plain HF generate on the full model: the path the book uses)
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def quick_eval(family: str, model, processor, scenes: list[Scene], batch: int = 16) -> dict:
    """Classification and localization on held-out scenes with greedy decoding."""
    fam = FAMILIES[family]
    tok = processor.tokenizer
    cls_ok, ious = [], []
    jobs = []
    for s in scenes:
        counts = {}
        for o in s.objects:
            counts[o[0]] = counts.get(o[0], 0) + 1
        for cat, _, box in s.objects:
            if counts[cat] == 1:
                jobs.append((s, cat, box))
    for task in ("classification", "localization"):
        for i in tqdm(range(0, len(jobs), batch), desc=f"eval {task}", mininterval=10):
            chunk = jobs[i : i + batch]
            prompts = [fam.chat_prompt(processor, fam.question(task, c)) for _, c, _ in chunk]
            enc = processor(
                images=[s.image for s, _, _ in chunk], text=prompts, padding=True, return_tensors="pt"
            )
            out = model.generate(**enc, max_new_tokens=20, do_sample=False)
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for (s, cat, box), t in zip(chunk, texts, strict=True):
                if task == "classification":
                    cls_ok.append(class_mentioned(t, cat))
                else:
                    pred = fam.parse_box(t, s.views, s.image.size)
                    ious.append(iou(pred, box) if pred is not None else None)
    return {"classification": rate_summary(cls_ok), "localization": localization_summary(ious)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(BUILDERS), required=True)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--n-scenes", type=int, default=5000)
    p.add_argument("--stage1-steps", type=int, default=1500)
    p.add_argument("--stage2-steps", type=int, default=3000)
    p.add_argument("--batch1", type=int, default=48)
    p.add_argument("--batch2", type=int, default=32)
    p.add_argument("--lr1", type=float, default=1.5e-3)
    p.add_argument("--lr2", type=float, default=1e-3)
    p.add_argument("--loc-share", type=float, default=0.6)
    p.add_argument("--n-eval", type=int, default=500, help="held-out scenes (EVAL_SEED) for the model card")
    p.add_argument("--seed", type=int, default=TRAIN_SEED, help="scene seed (never EVAL_SEED)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--init-from", default=None, help="continue from a checkpoint folder (warm start)")
    a = p.parse_args(argv)
    if a.seed == EVAL_SEED:
        p.error("the training seed must differ from the held-out EVAL_SEED")
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    torch.manual_seed(a.seed)
    if a.init_from:
        from transformers import AutoProcessor

        from ..families import FAMILIES as _F

        model = _F[a.family].hf_class.from_pretrained(a.init_from, dtype=torch.float32).eval()
        processor = AutoProcessor.from_pretrained(a.init_from)
    else:
        model, processor = BUILDERS[a.family](seed=a.seed)
    scenes = make_scenes(a.family, processor, model.config, a.n_scenes, a.seed, "training scenes")
    t_data = time.time() - t0
    log1 = (
        train_tower(a.family, model, scenes, a.stage1_steps, a.batch1, a.lr1, a.seed)
        if a.stage1_steps
        else {}
    )
    t1 = time.time() - t0 - t_data
    log2 = train_decoder(
        a.family, model, processor, scenes, a.stage2_steps, a.batch2, a.lr2, a.seed, a.loc_share
    )
    t2 = time.time() - t0 - t_data - t1
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    metrics = {}
    if a.n_eval:
        held = make_scenes(a.family, processor, model.config, a.n_eval, EVAL_SEED, "held-out scenes")
        metrics = quick_eval(a.family, model, processor, held)
    card = {
        "family": a.family,
        "args": vars(a),
        "seconds": {
            "data": round(t_data),
            "stage1": round(t1),
            "stage2": round(t2),
            "total": round(time.time() - t0),
        },
        "stage1": log1,
        "stage2": log2,
        "held_out": metrics,
        "n_parameters": sum(x.numel() for x in model.parameters()),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "training.json").write_text(json.dumps(card, indent=2))
    (out / "MODEL_CARD.md").write_text(model_card(card, model.config))
    print(json.dumps(card, indent=2))


def model_card(card: dict, config) -> str:
    """A short human-readable card from the training record."""
    h = card.get("held_out") or {}
    loc, cls = h.get("localization", {}), h.get("classification", {})
    tc, vc = config.text_config, config.vision_config
    lines = [
        f"# toy-{card['family']}",
        "",
        f"A {config.__class__.__name__.replace('Config', '')} toy VLM trained from scratch on synthetic scenes by "
        "`python -m vlmloc.toys.train` (see the vlmloc README). Not a model of the world: a model of shapes.",
        "",
        f"- decoder: {tc.model_type}, {tc.num_hidden_layers} layers, {tc.num_attention_heads} heads, width {tc.hidden_size}",
        f"- vision tower: {vc.model_type}, {vc.num_hidden_layers} layers, width {vc.hidden_size}",
        f"- parameters: {card['n_parameters']:,}",
        f"- training scenes: seed {card['args']['seed']}, {card['args']['n_scenes']} scenes; "
        f"stage 1 {card['args']['stage1_steps']} steps, stage 2 {card['args']['stage2_steps']} steps",
        f"- training time: {card['seconds']['total'] / 60:.1f} min on {card['torch_threads']} CPU threads",
        "",
        f"Held out ({h and loc.get('n')} queries of 500 scenes, seed EVAL_SEED, greedy):",
        "",
        "| classification | Loc | IoU>=0.5 | IoU>=0.7 | IoU>=0.9 |",
        "|---|---|---|---|---|",
        f"| {cls.get('rate', float('nan')):.1f}% | {loc.get('loc', float('nan')):.1f}% | {loc.get('iou@0.5', float('nan')):.1f}% "
        f"| {loc.get('iou@0.7', float('nan')):.1f}% | {loc.get('iou@0.9', float('nan')):.1f}% |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
