"""Train a toy VLM from scratch on synthetic scenes, on a CPU, in two stages.

Stage 1 trains the vision tower alone on what CLIP-like features carry: *what is at each patch*
(objectness, class and the covered share of the whole patch; ``--grounding precise`` adds the
covered share of every ~2 px sub-cell, which puts sub-patch edges into the tokens), with heads on
exactly the tokens the model passes to its projector. It is never told where boxes are, nor
anything about other patches. Stage 2 freezes the tower, caches its features, and trains the
projector and the decoder on both prompts (classification and localization) in the family's own
answer format, with loss on answer tokens only and soft (Gaussian) labels over neighbouring
coordinate tokens. The decoder has to learn *where* things are from the token layout. Each scene's
image prefix runs once per step and all its questions continue from its KV cache (2-3x cheaper,
same logits; tested). ``--minutes1``/``--minutes`` give each stage a time budget: the cosine
schedule then follows the larger of steps done and time spent, so a run ends on time.

    python -m vlmloc.toys.train --family llava --out lib/vlmloc/toys/checkpoints/toy-llava \
        --colour-linked 0 --minutes1 40 --stage2-steps 0   # then --init-from it for stage 2

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

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..families import FAMILIES
from ..metrics import class_mentioned, iou, localization_summary, rate_summary
from ..sites import SiteMap
from ..synthetic import CLASSES, COLOUR_LINKED, EVAL_SEED, TRAIN_SEED
from .build import BUILDERS
from .cards import phase_history, write_card
from .qwen import MAX_COORDINATE
from .scenes import GROUNDING, Scene, make_scenes, patch_targets, sub_cells

# ----------------------------------------------------------------------------------------------
# family-specific glue: the tower tokens the projector sees, and the projection itself
# ----------------------------------------------------------------------------------------------


def _sites(family: str, model) -> SiteMap:
    """The family's modules on the bare model (the paths live in the family's Sites table)."""
    return SiteMap(FAMILIES[family].sites, model)


QWEN = "qwen2_5_vl"


def tower_tokens(
    family: str, model, pixel_values: torch.Tensor, grid_thw: torch.Tensor | None = None
) -> torch.Tensor:
    """Patch tokens as the model's get_image_features selects them, before any projection.

    LLaVA and InternVL: ``(views, patches, width)``. Qwen2.5-VL (``grid_thw`` of every image):
    ``(1, patches, width)``, the tower's output before its merger, put back from attention-window
    order into token order, each token's ``merge x merge`` patches consecutive (what the merger
    reads), over all images in order.
    """
    cfg = model.config
    if family == QWEN:
        return _qwen_tower_tokens(model, pixel_values, grid_thw)
    out = _sites(family, model).vision_tower(
        pixel_values=pixel_values, output_hidden_states=True, return_dict=True
    )
    if family == "internvl" and cfg.vision_feature_layer == -1:
        feats = out.last_hidden_state
    else:
        feats = out.hidden_states[cfg.vision_feature_layer]
    return feats[:, 1:]  # "default" strategy drops CLS


def _qwen_tower_tokens(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor | None) -> torch.Tensor:
    if grid_thw is None:
        raise ValueError("Qwen2.5-VL's tower needs the images' grid_thw")
    fam = FAMILIES[QWEN]
    hidden = _sites(QWEN, model).vision_tower(pixel_values, grid_thw=grid_thw).last_hidden_state
    group = int(model.config.vision_config.spatial_merge_size) ** 2
    order = fam.window_index(model.config, grid_thw).argsort().to(hidden.device)
    return hidden.reshape(-1, group, hidden.shape[-1])[order].reshape(1, -1, hidden.shape[-1])


def scene_tokens(family: str, model, scene: Scene) -> torch.Tensor:
    """:func:`tower_tokens` of one scene."""
    return tower_tokens(family, model, scene.pixel_values, scene.grid_thw)


def project(family: str, model, tokens: torch.Tensor) -> torch.Tensor:
    """Tower tokens -> LLM input embeddings (InternVL: pixel shuffle first; Qwen2.5-VL: the
    tower's merger, one token per ``merge x merge`` consecutive patches)."""
    if family == "internvl":
        b, n, c = tokens.shape
        side = int(math.isqrt(n))
        x = model.model.pixel_shuffle(
            tokens.reshape(b, side, side, c), scale_factor=model.config.downsample_ratio
        )
        tokens = x.reshape(b, -1, x.shape[-1])
    return _sites(family, model).projector(tokens)


def warmup_cosine(
    opt: torch.optim.Optimizer, steps: int, minutes: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over 5% of the run, then cosine decay to 5% of the peak.

    With ``minutes`` the run's progress is the larger of steps done and time spent, so a run on a
    busy machine still decays fully and ends on time (``schedule_done`` says when).
    """
    warm = max(1, steps // 20)
    t0 = time.time()

    def progress(i: int) -> float:
        by_time = (time.time() - t0) / (60 * minutes) if minutes else 0.0
        return max(i / max(1, steps), by_time)

    def f(i: int) -> float:
        if i < warm and not minutes:
            return (i + 1) / warm
        x = progress(i)
        if x < 0.05:
            return max(x / 0.05, 1 / warm)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (x - 0.05) / 0.95)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    sched.schedule_done = lambda i: progress(i) >= 1.0  # type: ignore[attr-defined]
    return sched


# ----------------------------------------------------------------------------------------------
# stage 1
# ----------------------------------------------------------------------------------------------


@dataclass
class TowerItems:
    """Stage 1's training items and their patch targets: one item per view (LLaVA, InternVL:
    images of one size, stacked) or per scene (Qwen2.5-VL: flat patches of images of many
    sizes, concatenated along the patches)."""

    pixels: list[torch.Tensor]
    grids: list[torch.Tensor] | None
    objness: list[torch.Tensor]  # per item (patches,)
    classes: list[torch.Tensor]
    shares: list[torch.Tensor]  # per item (patches, sub * sub)

    @classmethod
    def of(cls, family: str, model, scenes: list[Scene], sub: int) -> TowerItems:
        cfg = model.config.vision_config
        items = cls([], [] if family == QWEN else None, [], [], [])
        for s in tqdm(scenes, desc="patch targets", mininterval=10):
            if family == QWEN:
                o, c, f = patch_targets(s, None, sub, int(cfg.spatial_merge_size))
                items.pixels.append(s.pixel_values)
                items.grids.append(s.grid_thw)
            else:
                img = cfg.image_size[0] if isinstance(cfg.image_size, list | tuple) else cfg.image_size
                patch = cfg.patch_size[0] if isinstance(cfg.patch_size, list | tuple) else cfg.patch_size
                o, c, f = patch_targets(s, img // patch, sub)
                items.pixels += list(s.pixel_values)
            items.objness += list(o)
            items.classes += list(c)
            items.shares += list(f)
        return items

    def __len__(self) -> int:
        return len(self.objness)

    def tokens(self, family: str, model, idx: torch.Tensor) -> torch.Tensor:
        """The tower's tokens of items ``idx``: ``(items, patches, width)`` or, for images of
        many sizes, ``(1, all their patches, width)``."""
        if self.grids is None:
            return tower_tokens(family, model, torch.stack([self.pixels[i] for i in idx]))
        pixels = torch.cat([self.pixels[i] for i in idx])
        return tower_tokens(family, model, pixels, torch.cat([self.grids[i] for i in idx]))

    def targets(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Objectness, class and shares of items ``idx``, shaped like :meth:`tokens`."""
        join = torch.stack if self.grids is None else (lambda ts: torch.cat(ts)[None])
        return tuple(join([t[i] for i in idx]) for t in (self.objness, self.classes, self.shares))


def train_tower(
    family: str,
    model,
    scenes: list[Scene],
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    minutes: float = 0.0,
    grounding: str = "weak",
) -> dict:
    """Stage 1: the tower and linear patch heads on what each patch contains.

    ``grounding="weak"`` (the default toys) asks each token for its patch's objectness, class and
    covered share of the *whole* patch: what is there, never where inside the patch an edge runs,
    as CLIP-like features are. ``"precise"`` also asks for the covered share of every ~2 px
    sub-cell, which puts sub-patch edges into the tokens' content (the ``-precise`` toys).
    """
    cfg = model.config.vision_config
    patch = cfg.patch_size[0] if isinstance(cfg.patch_size, list | tuple) else cfg.patch_size
    sub = sub_cells(patch, grounding)
    items = TowerItems.of(family, model, scenes, sub)
    width = cfg.hidden_size
    n_cls = len(CLASSES)
    heads = torch.nn.Linear(width, 1 + n_cls + sub * sub)
    tower = _sites(family, model).vision_tower
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps, minutes)
    g = torch.Generator().manual_seed(seed)
    tower.train()
    log = {}
    bar = tqdm(range(steps), desc=f"stage 1 ({family} tower)", mininterval=10)
    for step in bar:
        idx = torch.randint(len(items), (batch,), generator=g)
        out = heads(items.tokens(family, model, idx))
        obj_i, cls_i, shr_i = items.targets(idx)
        l_obj = F.binary_cross_entropy_with_logits(out[..., 0], obj_i)
        l_cls = F.cross_entropy(
            out[..., 1 : 1 + n_cls].reshape(-1, n_cls), cls_i.reshape(-1), ignore_index=-100
        )
        l_sub = F.binary_cross_entropy_with_logits(out[..., 1 + n_cls :], shr_i)
        loss = l_obj + l_cls + l_sub
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(obj=f"{l_obj.item():.3f}", cls=f"{l_cls.item():.3f}", sub=f"{l_sub.item():.3f}")
        log["steps_done"] = step + 1
        if sched.schedule_done(step + 1):
            break
    tower.eval()
    with torch.no_grad():
        first = torch.arange(min(512, len(items)))
        out = torch.cat([heads(items.tokens(family, model, i)).flatten(0, 1) for i in first.split(64)])
        obj_n, cls_n, shr_n = (t.flatten(0, 1) for t in items.targets(first))
        pred_obj = out[..., 0] > 0
        log["patch_objectness_acc"] = float((pred_obj == (obj_n > 0)).float().mean())
        m = cls_n >= 0
        log["patch_class_acc"] = float((out[..., 1 : 1 + n_cls].argmax(-1)[m] == cls_n[m]).float().mean())
        edge = (shr_n > 0) & (shr_n < 1)
        err = (torch.sigmoid(out[..., 1 + n_cls :]) - shr_n).abs()
        log["sub_cell_share_mae"] = float(err.mean())
        log["sub_cell_share_mae_on_edges"] = float(err[edge].mean()) if edge.any() else 0.0
        log["sub_cells_per_patch"] = sub * sub
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
    if family == QWEN:
        return prompt.replace(processor.image_token, processor.image_token * n_tokens)
    tk = processor.tokenizer
    return prompt.replace(
        tk.context_image_token, tk.start_image_token + tk.context_image_token * n_tokens + tk.end_image_token
    )


@dataclass
class SceneQuestions:
    """One scene's questions, split into the prompt prefix they share (the image and the chat
    header) and, per question, the rest of the prompt and the answer. Stage 2 runs the shared
    prefix once and every question from its KV cache: same logits, 2-3x less compute."""

    scene: int
    prefix: list[int]
    questions: list[tuple[list[int], list[int]]]  # (prompt suffix ids, answer ids with EOS)

    @property
    def n_localization(self) -> int:
        return len(self.questions) - 1  # the first question is the classification one


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(x) for x in seqs)
    for k in range(n):
        if any(x[k] != seqs[0][k] for x in seqs):
            return k
    return n


def build_examples(family: str, processor, scenes: list[Scene]) -> list[SceneQuestions]:
    """Per scene: the classification question and every unambiguous localization question."""
    fam = FAMILIES[family]
    tok = processor.tokenizer
    out = []
    for i, s in enumerate(scenes):
        n_tok = sum(v.n_tokens for v in s.views)
        qa = []
        q = fam.chat_prompt(processor, fam.question("classification", ""))
        ids = tok(expand_prompt(family, processor, q, n_tok))["input_ids"]
        qa.append((ids, tok(classification_answer(s))["input_ids"] + [tok.eos_token_id]))
        counts: dict[str, int] = {}
        for o in s.objects:
            counts[o[0]] = counts.get(o[0], 0) + 1
        for cat, _, box in s.objects:
            if counts[cat] != 1:
                continue
            q = fam.chat_prompt(processor, fam.question("localization", cat))
            ids = tok(expand_prompt(family, processor, q, n_tok))["input_ids"]
            ans = fam.format_box(box, s.views, s.image.size, cat)
            qa.append((ids, tok(ans)["input_ids"] + [tok.eos_token_id]))
        # keep at least one prompt token per question so its first answer token has a query
        k = min(_common_prefix([p for p, _ in qa]), min(len(p) for p, _ in qa) - 1)
        out.append(SceneQuestions(i, qa[0][0][:k], [(p[k:], a) for p, a in qa]))
    return out


#: Per family: the words of its coordinates, in order, and the soft labels' width in steps of them
#: (about 1.5% of the image: LLaVA's 0.00-1.00, InternVL's 0-1000, Qwen2.5-VL's resized pixels of
#: toy images about 100 px wide).
COORDINATES = {
    "llava": ([f"{i / 100:.2f}" for i in range(101)], 1.5),
    "internvl": ([str(i) for i in range(1001)], 15.0),
    QWEN: ([str(i) for i in range(MAX_COORDINATE + 1)], 1.5),
}


def coordinate_targets(family: str, tok, sigma: float) -> tuple[torch.Tensor, dict[int, int], torch.Tensor]:
    """Coordinate token ids, their index, and a Gaussian soft-label matrix over them."""
    words = COORDINATES[family][0]
    ids = torch.tensor(tok.convert_tokens_to_ids(words))
    pos = torch.arange(len(words), dtype=torch.float32)
    q = torch.exp(-0.5 * ((pos[:, None] - pos[None, :]) / sigma) ** 2)
    q = q / q.sum(1, keepdim=True)
    return ids, {int(t): k for k, t in enumerate(ids)}, q


def answer_logits(
    family: str,
    model,
    tok,
    feats: list[torch.Tensor],
    batch: list[SceneQuestions],
    grids: list[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Logits at every answer position of every question of the batch, and the answer ids.

    All scenes of ``batch`` must have prefixes of one length (same number of image tokens). The
    prefix runs once per scene; its KV cache is repeated for each question of the scene.
    ``grids`` (Qwen2.5-VL: each scene's ``grid_thw``) gives the prefix its M-RoPE positions; the
    text after it continues from the prefix's last position, as ``get_rope_index`` counts.
    """
    lm = _sites(family, model).language_model
    image_id = FAMILIES[family].image_token_id(model.config)
    P = len(batch[0].prefix)
    if any(len(b.prefix) != P for b in batch):
        raise ValueError("answer_logits needs scenes with prefixes of one length")
    prefix = torch.tensor([b.prefix for b in batch])
    emb = lm.embed_tokens(prefix)
    img = project(family, model, torch.cat([feats[b.scene].float() for b in batch]))
    mask = (prefix == image_id).unsqueeze(-1)
    emb = emb.masked_scatter(mask, img.reshape(-1, img.shape[-1]).to(emb.dtype))
    prefix_pos = _prefix_positions(family, model, prefix, grids and [grids[b.scene] for b in batch])
    cache = lm(inputs_embeds=emb, position_ids=prefix_pos, use_cache=True).past_key_values
    owner = [j for j, b in enumerate(batch) for _ in b.questions]
    cache.reorder_cache(torch.tensor(owner))
    seqs = [q + a for b in batch for q, a in b.questions]
    S = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), S), tok.pad_token_id)
    am = torch.zeros((len(seqs), P + S), dtype=torch.long)
    am[:, :P] = 1
    for r, x in enumerate(seqs):
        ids[r, : len(x)] = torch.tensor(x)
        am[r, P : P + len(x)] = 1
    if prefix_pos is None:
        pos = torch.arange(P, P + S).expand(len(seqs), S)
    else:  # text after the prefix: one step per token from its last position, on all three axes
        pos = prefix_pos[:, owner, -1:] + 1 + torch.arange(S)
    hidden = lm(input_ids=ids, attention_mask=am, position_ids=pos, past_key_values=cache).last_hidden_state
    rows, cols, targets = [], [], []
    r = 0
    for b in batch:
        for q, a in b.questions:
            for k, t in enumerate(a):
                rows.append(r)
                cols.append(len(q) + k - 1)
                targets.append(t)
            r += 1
    return _sites(family, model).lm_head(hidden[rows, cols]).float(), targets


def _prefix_positions(
    family: str, model, prefix: torch.Tensor, grids: list[torch.Tensor] | None
) -> torch.Tensor | None:
    """M-RoPE positions ``(3, scenes, prefix)`` of Qwen2.5-VL prefixes (the model's own
    ``get_rope_index``); None for the other families, whose positions are sequence indices."""
    if family != QWEN:
        return None
    inputs = {
        "input_ids": prefix,
        "attention_mask": torch.ones_like(prefix),
        "image_grid_thw": torch.cat(grids),
    }
    return FAMILIES[QWEN].position_ids(model, inputs)


def train_decoder(
    family: str,
    model,
    processor,
    scenes: list[Scene],
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    max_questions: int = 4,
    minutes: float = 0.0,
) -> dict:
    """Projector + decoder on both prompts, ``batch`` scenes a step with up to ``max_questions``
    questions each (classification always, localization questions sampled)."""
    tok = processor.tokenizer
    with torch.no_grad():
        feats = [
            scene_tokens(family, model, s).to(torch.bfloat16)
            for s in tqdm(scenes, desc="cache tower", mininterval=10)
        ]
    grids = [s.grid_thw for s in scenes]
    examples = build_examples(family, processor, scenes)
    groups: dict[int, list[SceneQuestions]] = {}
    for e in examples:
        groups.setdefault(len(e.prefix), []).append(e)
    sizes = sorted(groups)
    weights = [len(groups[k]) for k in sizes]
    coord_ids, coord_index, q = coordinate_targets(family, tok, sigma=COORDINATES[family][1])
    for p in _sites(family, model).vision_tower.parameters():
        p.requires_grad_(False)
    for p in _sites(family, model).projector.parameters():  # Qwen2.5-VL's merger is in its tower
        p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = warmup_cosine(opt, steps, minutes)
    rnd = random.Random(seed)
    model.train()
    done = 0
    bar = tqdm(range(steps), desc=f"stage 2 ({family} decoder)", mininterval=10)
    for step in bar:
        group = groups[rnd.choices(sizes, weights)[0]]
        chosen = []
        for e in (rnd.choice(group) for _ in range(batch)):
            loc = e.questions[1:]
            keep = [e.questions[0]] + rnd.sample(loc, min(len(loc), max_questions - 1))
            chosen.append(SceneQuestions(e.scene, e.prefix, keep))
        logits, targets = answer_logits(family, model, tok, feats, chosen, grids)
        logp = F.log_softmax(logits, -1)
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
        done = step + 1
        if step % 50 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if sched.schedule_done(done):
            break
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {
        "steps_done": done,
        "final_loss": float(loss.detach()),
        "n_scenes": len(examples),
        "n_questions": sum(len(e.questions) for e in examples),
        "n_localization_questions": sum(e.n_localization for e in examples),
    }


# ----------------------------------------------------------------------------------------------
# held-out evaluation (plain HF generate on the full model: the path the book uses)
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def quick_eval(family: str, model, processor, scenes: list[Scene], batch: int = 16) -> dict:
    """Classification and localization on held-out scenes with greedy decoding.

    Classification is also split by whether the object wears its class's usual colour: a toy that
    names objects by colour alone scores near 100% on those and near chance on the others.
    """
    fam = FAMILIES[family]
    tok = processor.tokenizer
    tok.padding_side = "left"  # batched greedy generation; saved toy tokenizers pad right
    cls_ok, ious = [], []
    jobs, coloured = [], []
    for s in scenes:
        counts = {}
        for o in s.objects:
            counts[o[0]] = counts.get(o[0], 0) + 1
        for (cat, _, box), c in zip(s.objects, s.class_coloured, strict=True):
            if counts[cat] == 1:
                jobs.append((s, cat, box))
                coloured.append(c)
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
    by_colour = {
        name: rate_summary([ok for ok, c in zip(cls_ok, coloured, strict=True) if c == want])
        for name, want in (("class_colour", True), ("other_colour", False))
        if want in coloured
    }
    return {
        "classification": rate_summary(cls_ok),
        "classification_by_colour": by_colour,
        "localization": localization_summary(ious),
    }


def set_rope_theta(config, theta: float) -> None:
    """Set the decoder's rotary base in ``config`` before the model is built from it (the rotary
    embedding computes its frequencies once, at construction)."""
    text = config.get_text_config()
    if getattr(text, "rope_parameters", None):
        text.rope_parameters["rope_theta"] = theta
    else:
        text.rope_theta = theta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(BUILDERS), required=True)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--n-scenes", type=int, default=5000)
    p.add_argument("--stage1-steps", type=int, default=1500)
    p.add_argument("--stage2-steps", type=int, default=3000)
    p.add_argument("--batch1", type=int, default=48)
    p.add_argument("--batch2", type=int, default=16, help="scenes per stage-2 step")
    p.add_argument("--lr1", type=float, default=1.5e-3)
    p.add_argument("--lr2", type=float, default=1e-3)
    p.add_argument("--stage1-scenes", type=int, default=3000, help="scenes with patch targets for stage 1")
    p.add_argument("--minutes1", type=float, default=0.0, help="stage-1 time budget (0: by steps)")
    p.add_argument("--minutes", type=float, default=0.0, help="stage-2 time budget (0: by steps)")
    p.add_argument("--max-questions", type=int, default=4, help="questions per scene and step")
    p.add_argument("--n-eval", type=int, default=500, help="held-out scenes (EVAL_SEED) for the model card")
    p.add_argument("--seed", type=int, default=TRAIN_SEED, help="scene seed (never EVAL_SEED)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument(
        "--colour-linked",
        type=float,
        default=COLOUR_LINKED,
        help="chance a training object has its class's colour (held-out scenes keep the default)",
    )
    p.add_argument("--init-from", default=None, help="continue from a checkpoint folder (warm start)")
    p.add_argument(
        "--grounding",
        choices=GROUNDING,
        default="weak",
        help="stage-1 coverage target: the whole patch (weak, CLIP-like) or ~2 px sub-cells (precise)",
    )
    p.add_argument(
        "--decoder-from",
        default=None,
        help="a fresh tower (seeded) with the projector and decoder of this checkpoint folder: "
        "retrains the tower without relearning the answer format from nothing",
    )
    p.add_argument(
        "--rope-theta",
        type=float,
        default=None,
        help="set the decoder's rotary base for this phase (a warm start keeps the weights): how "
        "toy-qwen's second phase left Qwen's 1e6, under which its M-RoPE width pairs hardly turn",
    )
    a = p.parse_args(argv)
    if a.rope_theta is not None and not (a.init_from or a.decoder_from):
        p.error("--rope-theta changes a warm start's decoder; a fresh toy takes its builder's rotary base")
    if a.seed == EVAL_SEED:
        p.error("the training seed must differ from the held-out EVAL_SEED")
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    torch.manual_seed(a.seed)
    if a.init_from and a.decoder_from:
        p.error("--init-from and --decoder-from exclude each other")
    if a.init_from or a.decoder_from:
        from transformers import AutoConfig, AutoProcessor

        config = AutoConfig.from_pretrained(a.init_from or a.decoder_from)
        if a.rope_theta is not None:
            set_rope_theta(config, a.rope_theta)
        model = (
            FAMILIES[a.family]
            .hf_class.from_pretrained(a.init_from or a.decoder_from, config=config, dtype=torch.float32)
            .eval()
        )
        processor = AutoProcessor.from_pretrained(a.init_from or a.decoder_from)
        if a.decoder_from:
            fresh, _ = BUILDERS[a.family](seed=a.seed)
            _sites(a.family, model).vision_tower.load_state_dict(
                _sites(a.family, fresh).vision_tower.state_dict()
            )
    else:
        model, processor = BUILDERS[a.family](seed=a.seed)
    scenes = make_scenes(
        a.family, processor, model.config, a.n_scenes, a.seed, "training scenes", a.colour_linked
    )
    t_data = time.time() - t0
    log1 = (
        train_tower(
            a.family,
            model,
            scenes[: a.stage1_scenes],
            a.stage1_steps,
            a.batch1,
            a.lr1,
            a.seed,
            a.minutes1,
            a.grounding,
        )
        if a.stage1_steps
        else {}
    )
    t1 = time.time() - t0 - t_data
    log2 = (
        train_decoder(
            a.family,
            model,
            processor,
            scenes,
            a.stage2_steps,
            a.batch2,
            a.lr2,
            a.seed,
            a.max_questions,
            a.minutes,
        )
        if a.stage2_steps
        else {}
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
        "history": phase_history(a.init_from or a.decoder_from),
    }
    (out / "training.json").write_text(json.dumps(card, indent=2))
    write_card(out)
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
