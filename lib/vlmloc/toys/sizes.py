"""The decoder sizes every toy builder shares (the LLaVA and InternVL toys, and the Qwen2.5-VL one)."""

from __future__ import annotations


def decoder_sizes(t: dict, vocab: int) -> dict[str, int]:
    """The decoder's ``text_config`` sizes from a toy size table (``width``, ``mlp``, ``layers``, ``heads``);
    each family adds its own key-value heads and the rest."""
    return {
        "vocab_size": vocab,
        "hidden_size": t["width"],
        "intermediate_size": t["mlp"],
        "num_hidden_layers": t["layers"],
        "num_attention_heads": t["heads"],
    }
