"""The modules experiments touch, found from a family's :class:`~vlmloc.families.Sites` table.

Why one place: published reproductions break when a path is typed in five files and one of them
is wrong for the second model. Here a path is resolved from the family's table, on the nnsight
wrapper (inside traces) or on the bare Hugging Face model (for shapes and training), and the
hidden-state sites have one canonical order, the order the forward pass reaches them, because
nnsight refuses to read a module after the model has run past it.

    sm = SiteMap(vlm.family.sites, vlm.hf)        # or vlm.model (the nnsight envoy)
    sm.o_proj(3).in_features
    hidden_site_names(vlm)   # ["tower.0", ..., "projector", "llm.input", "llm.0", ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .families import Sites

__all__ = ["HiddenSite", "SiteMap", "hidden_sites", "resolve"]


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


@dataclass(frozen=True)
class HiddenSite:
    """One place a hidden state is read: ``stage`` is ``tower``, ``projector`` or ``llm``.

    ``layer`` is the layer index within the stage (``-1`` for the decoder *input*, i.e. the token
    embeddings with the projected visual tokens merged in; ``0`` for the projector). ``order`` is
    the position in the forward pass, so sorting by it gives nnsight's access order.
    """

    stage: str
    layer: int

    @property
    def name(self) -> str:
        if self.stage == "projector":
            return "projector"
        if self.stage == "llm" and self.layer < 0:
            return "llm.input"
        return f"{self.stage}.{self.layer}"

    @property
    def order(self) -> tuple[int, int]:
        return ({"tower": 0, "projector": 1, "llm": 2}[self.stage], self.layer)

    @classmethod
    def parse(cls, name: str) -> HiddenSite:
        """``"tower.3"``, ``"projector"``, ``"llm.input"`` or ``"llm.5"``."""
        if name == "projector":
            return cls("projector", 0)
        if name == "llm.input":
            return cls("llm", -1)
        stage, _, layer = name.partition(".")
        if stage not in ("tower", "llm") or not layer.lstrip("-").isdigit():
            raise ValueError(f"unknown site {name!r}; use tower.<i>, projector, llm.input or llm.<i>")
        return cls(stage, int(layer))


def hidden_sites(n_vision_layers: int, n_layers: int) -> list[HiddenSite]:
    """Every hidden-state site along the path, in forward order: tower, projector, LLM input, LLM layers."""
    return (
        [HiddenSite("tower", i) for i in range(n_vision_layers)]
        + [HiddenSite("projector", 0), HiddenSite("llm", -1)]
        + [HiddenSite("llm", i) for i in range(n_layers)]
    )
