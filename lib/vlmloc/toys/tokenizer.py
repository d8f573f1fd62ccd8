"""A small word-level tokenizer for the toy models, built locally with the ``tokenizers`` library.

Why word level: every coordinate of an answer ("0.37" for LLaVA, "370" for InternVL) is one token,
so a tiny decoder can learn boxes, and the answers decode to the exact formats of the real models
(spaces between tokens are tolerated by the parsers).
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ..families.base import CLASSIFICATION_Q, LOCALIZATION_Q
from ..families.internvl import INTERNVL_LOCALIZATION_Q
from ..synthetic import CLASSES

BASE_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
LLAVA_SPECIAL = ["<image>"]
INTERNVL_SPECIAL = [
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<video>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
]
#: Named special tokens InternVLProcessor reads from its tokenizer (saved in tokenizer_config.json).
INTERNVL_NAMED = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

#: Splits "0.37," into "0.37" and ","; "describes:" into "describes" and ":".
_SPLIT = Regex(r"\d+\.\d+|\d+|[\[\],.?:]")

#: A Qwen-style chat template like InternVL's, so the adapter's apply_chat_template path runs unchanged.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _words(text: str) -> list[str]:
    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(_SPLIT, "isolated")]
    )
    return [w for w, _ in pre.pre_tokenize_str(text)]


def vocabulary(family: str) -> list[str]:
    """All words of the toy's world: chat words, both questions, class names, coordinates."""
    words: list[str] = []
    texts = [
        "USER : ASSISTANT : user assistant system and [ ] , . ?",
        CLASSIFICATION_Q,
        LOCALIZATION_Q.format(name=""),
        INTERNVL_LOCALIZATION_Q.format(name=""),
    ]
    for t in texts:
        words += _words(t.replace("<ref>", " ").replace("</ref>", " "))
    words += list(CLASSES)
    if family == "llava":
        words += [f"{i / 100:.2f}" for i in range(101)]
    else:
        words += [str(i) for i in range(1001)]
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The toy tokenizer of a family (``"llava"`` or ``"internvl"``)."""
    special = BASE_SPECIAL + (LLAVA_SPECIAL if family == "llava" else INTERNVL_SPECIAL)
    vocab = {w: i for i, w in enumerate(special + vocabulary(family))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(_SPLIT, "isolated")]
    )
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    kwargs = dict(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if family == "internvl":
        kwargs["extra_special_tokens"] = dict(INTERNVL_NAMED)
    tok = PreTrainedTokenizerFast(**kwargs)
    # Chat and image markers are special; <ref>/<box> are ordinary atomic words, kept when decoding.
    markers = [t for t in special[len(BASE_SPECIAL) :] if t not in ("<ref>", "</ref>", "<box>", "</box>")]
    tok.add_special_tokens({"additional_special_tokens": markers})
    tok.add_tokens([t for t in special if t in ("<ref>", "</ref>", "<box>", "</box>")])
    tok.padding_side = "left"
    return tok
