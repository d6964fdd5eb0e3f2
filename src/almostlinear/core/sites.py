"""The one vocabulary of places where levers read or write activations.

=============  ==========================================================================
site           the tensor ``[batch, seq, d]``
=============  ==========================================================================
resid_pre      the residual stream entering block ``layer``
resid_post     the residual stream leaving block ``layer`` (before any final norm)
attn_in        what the attention of block ``layer`` reads: the input of the attention module,
               i.e. the stream after the pre-attention norm (the block input without one)
attn_out       what the attention of block ``layer`` writes: its output projection's output
mlp_in         what the MLP of block ``layer`` reads: the input of the module holding the MLP
               (after its pre-norm; in a parallel block such as GPT-NeoX's, the block input
               through the MLP's own norm)
mlp_out        what the MLP of block ``layer`` writes: its down projection's output
mlp_key        the input of the MLP's down projection (``d_mlp`` wide): the keys ROME edits
=============  ==========================================================================

``attn_in`` to ``attn_out`` and ``mlp_in`` to ``mlp_out`` are each sublayer's input and output, so
one pass can read what a sublayer maps to what. Parallel blocks with one norm (GPT-J, Falcon) feed
both sublayers the same tensor, so there ``attn_in`` equals ``mlp_in``. ``mlp_in`` needs one module
holding the whole MLP (BERT splits it over two children, so it has no ``mlp_in``).

``attn_out`` and ``mlp_out`` are taken at the output projections so that they mean the same thing
in pre-norm decoders and post-norm encoders: the vector the sublayer contributes, before any
residual addition or post-norm the architecture applies.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .errors import SiteError
from .locate import Structure

SITE_NAMES = ("resid_pre", "resid_post", "attn_in", "attn_out", "mlp_in", "mlp_out", "mlp_key")
Point = Literal["input", "output"]


@dataclass(frozen=True, order=True)
class Site:
    """A site name at one layer. ``Site("resid_post", 5)`` or ``Site.parse("resid_post.5")``."""

    name: str
    layer: int

    def __post_init__(self) -> None:
        if self.name not in SITE_NAMES:
            raise SiteError(f"unknown site {self.name!r}; the sites are {', '.join(SITE_NAMES)}")
        if isinstance(self.layer, numbers.Integral) and not isinstance(self.layer, bool):
            object.__setattr__(self, "layer", int(self.layer))  # numpy integers too
        else:
            raise SiteError(f"layer must be an int, got {self.layer!r}")

    @classmethod
    def parse(cls, text: str) -> Site:
        name, _, layer = text.rpartition(".")
        if not name or not layer.lstrip("-").isdigit():
            raise SiteError(f"cannot read site {text!r}: write it as NAME.LAYER, e.g. resid_post.5")
        return cls(name, int(layer))

    def __str__(self) -> str:
        return f"{self.name}.{self.layer}"

    def width(self, structure: Structure) -> int:
        """The size of the last dimension of activations at this site."""
        return structure.d_mlp if self.name == "mlp_key" else structure.d_model

    def normalized(self, structure: Structure) -> Site:
        """The same site with a non-negative layer; raises ``LayerError`` when out of range."""
        return Site(self.name, structure.block(self.layer).index)

    def target(self, structure: Structure) -> tuple[nn.Module, Point]:
        """The module to hook and whether the site is its input or its output."""
        block = structure.block(self.layer)
        if self.name == "resid_pre":
            return block.module, "input"
        if self.name == "resid_post":
            return block.module, "output"
        if self.name == "attn_in":
            return block.attention, "input"
        if self.name == "attn_out":
            return block.attn_out_proj, "output"
        if self.name == "mlp_in":
            if block.mlp is None:
                raise SiteError(f"{self}: block {block.index} has no single module holding its MLP (e.g. BERT "
                                "splits it over 'intermediate' and 'output'), so nothing reads the MLP input")
            return block.mlp, "input"
        if self.name == "mlp_out":  # a mixture of experts writes through its sparse block
            return (block.mlp, "output") if block.moe else (block.mlp_down_proj, "output")
        if block.moe:
            raise SiteError(f"{self}: block {block.index} is a mixture of experts, so there is no single "
                            "down projection whose input is the MLP keys; use mlp_out or a residual site")
        return block.mlp_down_proj, "input"


def as_sites(structure: Structure, sites) -> list[Site]:
    """Accept a Site, a "name.layer" string, or a list of them; return normalised Sites."""
    if isinstance(sites, (Site, str)):
        sites = [sites]
    out = []
    for s in sites:
        site = Site.parse(s) if isinstance(s, str) else s
        if not isinstance(site, Site):
            raise SiteError(f"expected a Site or 'name.layer' string, got {s!r}")
        out.append(site.normalized(structure))
    if not out:
        raise SiteError("no sites given")
    return out


def all_layers(structure: Structure, name: str, layers=None) -> list[Site]:
    """``name`` at every layer (or at the given ones)."""
    chosen = range(structure.n_layers) if layers is None else layers
    return [Site(name, layer).normalized(structure) for layer in chosen]
