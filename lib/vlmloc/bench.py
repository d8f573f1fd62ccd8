"""Benchmarks: commands that print figures, not timed tests.

    python -m vlmloc.bench heads                 # both toys, 20 pairs, both tasks' cost in one run
    python -m vlmloc.bench heads --models toy-llava --pairs 5 --batch-size 64

``heads`` times the sweep over every attention head (the exact causal-mediation sweep of
chapter 6) on source/base pairs made like the control set's (the object inpainted away), once
batched with the image prefix reused (:func:`vlmloc.sweeps.head_patch_scores`) and once as the
plain loop, one full forward per head, and checks that both give the same scores.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Sequence

import torch

__all__ = ["bench_heads", "main"]


def _pairs(vlm, n: int) -> list[tuple]:
    """``n`` (source encoding, base encoding, answer) triples: a synthetic object and its inpainting."""
    from . import load_coco, resolve_data
    from .inpaint import inpaint

    out = []
    for s in load_coco(*resolve_data(None, None), limit=n, seed=0):
        image = s.load_image()
        removed, _ = inpaint(image, s.mask())
        prompt = vlm.prompt("localization", s.category)
        out.append(
            (
                vlm.encode([image], [prompt]),
                vlm.encode([removed], [prompt]),
                vlm.format_box(s.box, image.size, s.category),
            )
        )
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_heads(model_id: str, n_pairs: int = 20, batch_size: int = 64, threads: int | None = None) -> dict:
    """Heads per second of the batched sweep and of the loop, their ratio, and the largest
    difference of a per-token log-probability between the two."""
    from . import load_model
    from .sweeps import head_patch_scores

    if threads:
        torch.set_num_threads(threads)
    vlm = load_model(model_id, device="cpu")
    pairs = _pairs(vlm, n_pairs)
    n_heads = vlm.n_layers * vlm.n_heads
    methods = {"batched": dict(batch_size=batch_size), "loop": dict(batch_size=1, reuse_prefix=False)}
    times = dict.fromkeys(methods, 0.0)
    results: dict[str, list] = {name: [] for name in methods}
    for s, b, a in pairs:  # both methods pair by pair, so a drift in machine speed hits both alike
        for name, kw in methods.items():
            t0 = time.perf_counter()
            results[name].append(head_patch_scores(vlm, s, b, a, "localization", **kw))
            times[name] += time.perf_counter() - t0
    diff = max(
        float((f.patched.token_logprobs - s.patched.token_logprobs).abs().max())
        for f, s in zip(results["batched"], results["loop"], strict=True)
    )
    rate = {k: n_heads * len(pairs) / v for k, v in times.items()}
    return {
        "model": model_id,
        "heads": n_heads,
        "pairs": len(pairs),
        "batched_heads_per_s": rate["batched"],
        "loop_heads_per_s": rate["loop"],
        "ratio": rate["batched"] / rate["loop"],
        "max_abs_diff": diff,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlmloc.bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    h = sub.add_parser(
        "heads", help="every-head patch sweep: batched with prefix reuse vs one head per forward"
    )
    h.add_argument("--models", nargs="+", default=["toy-llava", "toy-internvl"])
    h.add_argument("--pairs", type=int, default=20)
    h.add_argument("--batch-size", type=int, default=64)
    h.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    print(
        "| model | heads | pairs | batched heads/s | loop heads/s | ratio | max token log-prob diff | peak RSS MB | threads |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model in a.models:
        r = bench_heads(model, a.pairs, a.batch_size, a.threads)
        print(
            f"| {r['model']} | {r['heads']} | {r['pairs']} | {r['batched_heads_per_s']:.0f} | "
            f"{r['loop_heads_per_s']:.1f} | {r['ratio']:.1f}x | {r['max_abs_diff']:.1e} | "
            f"{r['peak_rss_mb']:.0f} | {r['threads']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
