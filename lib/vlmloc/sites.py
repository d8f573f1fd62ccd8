"""The modules experiments touch, found from a family's :class:`~vlmloc.families.Sites` table.

Why one place: published reproductions break when a path is typed in five files and one of them
is wrong for the second model. Here a path is resolved from the family's table, on the nnsight
wrapper (inside traces) or on the bare Hugging Face model (for shapes and training).

Sites have one naming scheme, :class:`Site`: a ``(kind, layer)`` tuple that the interventions
hook (``Site("heads", 5)``) with a text name that results and parameters use (``"llm.5.heads"``;
a hidden state ``"llm.5"``), and one canonical order, the order the forward pass reaches them,
because nnsight refuses to read a module after the model has run past it.

    sm = SiteMap(vlm.family.sites, vlm.hf)        # or vlm.model (the nnsight envoy)
    sm.o_proj(3).in_features
    [s.name for s in hidden_sites(vlm.n_vision_layers, vlm.n_layers)]
    # ["tower.0", ..., "projector", "llm.input", "llm.0", ...]
    Site.parse("llm.5.heads") == ("heads", 5)
"""

from __future__ import annotations

from typing import Any

from .families import Sites

__all__ = ["KINDS", "HiddenSite", "Site", "SiteMap", "hidden_sites", "resolve"]


def resolve(root: Any, path: str) -> Any:
    """Follow a dotted path from ``root``; digit components index module lists."""
    node = root
    for part in path.split(".") if path else []:
        try:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        except (AttributeError, IndexError, TypeError) as err:
            raise AttributeError(
                f"no module {part!r} on the way to {path!r} (from {type(root).__name__}); "
                "the family's Sites table does not match this model"
            ) from err
    return node


class SiteMap:
    """A family's sites resolved on one root: the nnsight envoy (``vlm.model``) or the HF model."""

    def __init__(self, sites: Sites, root: Any) -> None:
        self.sites = sites
        self.root = root

    def _at(self, path: str) -> Any:
        return resolve(self.root, path)

    @property
    def vision_tower(self) -> Any:
        return self._at(self.sites.vision_tower)

    @property
    def vision_layers(self) -> Any:
        return self._at(self.sites.vision_layers)

    def vision_layer(self, i: int) -> Any:
        return self.vision_layers[i]

    @property
    def projector(self) -> Any:
        return self._at(self.sites.projector)

    @property
    def language_model(self) -> Any:
        return self._at(self.sites.language_model)

    @property
    def decoder_layers(self) -> Any:
        return self._at(self.sites.decoder_layers)

    def decoder_layer(self, layer: int) -> Any:
        return self.decoder_layers[layer]

    def attention(self, layer: int) -> Any:
        return resolve(self.decoder_layer(layer), self.sites.attention)

    def o_proj(self, layer: int) -> Any:
        return resolve(self.decoder_layer(layer), self.sites.o_proj)

    @property
    def lm_head(self) -> Any:
        return self._at(self.sites.lm_head)


#: Site kinds in the order the forward pass reaches them within their stage; the decoder's
#: per layer: ``skip`` (before the layer runs), ``mask`` (its attention mask), ``heads`` (its
#: ``o_proj`` input, the heads' outputs) and ``layer_out`` (its output, the hidden state).
KINDS: tuple[str, ...] = ("tower", "projector", "embeds", "skip", "mask", "heads", "layer_out")
_LAYERED = ("tower", "skip", "mask", "heads", "layer_out")
_PARTS = {"skip": "skip", "mask": "mask", "heads": "heads"}  # the text name's suffix after "llm.<l>"


class Site(tuple):
    """One place in the forward pass: the package's one name for where a value is read or edited.

    A site is the tuple ``(kind, layer)`` (``(kind,)`` for ``projector`` and ``embeds``), with
    ``kind`` one of :data:`KINDS`; it equals that plain tuple, so ``("heads", 5)`` may stand for
    ``Site("heads", 5)`` wherever sites are compared (hook counts, tests). Its text :attr:`name`,
    which :meth:`parse` reads back, is what results and parameters use:

    ======================  =======================  ==============================================
    ``Site``                ``name``                 what is there
    ======================  =======================  ==============================================
    ``("tower", i)``        ``"tower.3"``            vision-tower layer ``i``'s output
    ``("projector",)``      ``"projector"``          the projector's output (the visual tokens)
    ``("embeds",)``         ``"llm.input"``          the LLM input, visual tokens merged in
    ``("skip", l)``         ``"llm.5.skip"``         decoder layer ``l``, before it runs (skipping it)
    ``("mask", l)``         ``"llm.5.mask"``         decoder layer ``l``'s attention mask
    ``("heads", l)``        ``"llm.5.heads"``        decoder layer ``l``'s head outputs (``o_proj``'s input)
    ``("layer_out", l)``    ``"llm.5"``              decoder layer ``l``'s output (its hidden state)
    ======================  =======================  ==============================================

    The hidden states a probe reads are the sites with a value *of* the stream (:func:`hidden_sites`);
    :attr:`stage` and :attr:`layer` place them along the path (the LLM input is layer ``-1``).
    """

    def __new__(cls, kind: str, layer: int | None = None) -> Site:
        if kind not in KINDS:
            raise ValueError(f"unknown site kind {kind!r}; one of {KINDS}")
        if (layer is None) == (kind in _LAYERED):
            raise ValueError(
                f"site kind {kind!r} " + ("needs a layer" if layer is None else "takes no layer")
            )
        return super().__new__(cls, (kind,) if layer is None else (kind, int(layer)))

    def __repr__(self) -> str:
        return f"Site({self.name!r})"

    @property
    def kind(self) -> str:
        return self[0]

    @property
    def stage(self) -> str:
        """``tower``, ``projector`` or ``llm``."""
        return self.kind if self.kind in ("tower", "projector") else "llm"

    @property
    def layer(self) -> int:
        """The layer within the stage: ``-1`` for the LLM input, ``0`` for the projector."""
        return self[1] if len(self) > 1 else (-1 if self.kind == "embeds" else 0)

    @property
    def name(self) -> str:
        if self.kind == "projector":
            return "projector"
        if self.kind == "embeds":
            return "llm.input"
        if self.kind == "tower":
            return f"tower.{self.layer}"
        part = _PARTS.get(self.kind)
        return f"llm.{self.layer}" + (f".{part}" if part else "")

    @property
    def order(self) -> tuple[int, int, int]:
        """The forward-pass order (sorting by it gives nnsight's access order): tower layers,
        projector, LLM input, then per decoder layer its skip, mask, heads and output."""
        if self.stage != "llm":
            return (0, self.layer, 0) if self.kind == "tower" else (1, 0, 0)
        if self.kind == "embeds":
            return (2, 0, 0)
        return (3, self.layer, KINDS.index(self.kind) - KINDS.index("skip"))

    @classmethod
    def parse(cls, name: str) -> Site:
        """The site of a text name (see the table above); a :class:`Site` or tuple is returned as one."""
        if not isinstance(name, str):
            return name if isinstance(name, Site) else cls(*name)
        if name == "projector":
            return cls("projector")
        if name == "llm.input":
            return cls("embeds")
        stage, _, rest = name.partition(".")
        layer, _, part = rest.partition(".")
        kinds = {"": "layer_out", **{v: k for k, v in _PARTS.items()}} if stage == "llm" else {"": "tower"}
        if stage not in ("tower", "llm") or not layer.isdigit() or part not in kinds:
            raise ValueError(
                f"unknown site {name!r}; use tower.<i>, projector, llm.input, llm.<i> or llm.<i>.{{skip,mask,heads}}"
            )
        return cls(kinds[part], int(layer))


#: The name chapter 4 reads hidden-state sites by (they are :class:`Site`\ s).
HiddenSite = Site


def hidden_sites(n_vision_layers: int, n_layers: int) -> list[Site]:
    """Every hidden-state site along the path, in forward order: tower, projector, LLM input, LLM layers."""
    return (
        [Site("tower", i) for i in range(n_vision_layers)]
        + [Site("projector"), Site("embeds")]
        + [Site("layer_out", i) for i in range(n_layers)]
    )
