"""Whole sublayers: the attention and the MLP of a block, from what each reads to what it writes.

A sublayer is a pair of core sites, ``attn_in`` → ``attn_out`` or ``mlp_in`` → ``mlp_out``, so the
audit's shared collection pass (or :func:`~almostlinear.core.hooks.record`) reads both ends.
:func:`replace_sublayer` makes a sublayer write an affine function of its input instead, through
:func:`~almostlinear.core.hooks.intervene`, so the model is left as it was also when the body raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..core.errors import ShapeError, SiteError, StructureError, check_choice
from ..core.hooks import intervene
from ..core.locate import Structure, locate
from ..core.sites import Site
from .affine import AffineFit

Kind = Literal["attn", "mlp"]
KINDS: tuple[Kind, ...] = ("attn", "mlp")


@dataclass(frozen=True)
class Sublayer:
    """A sublayer of one block: the site it reads and the site it writes."""

    layer: int
    kind: Kind

    @property
    def input(self) -> Site:
        return Site(f"{self.kind}_in", self.layer)

    @property
    def output(self) -> Site:
        return Site(f"{self.kind}_out", self.layer)


def sublayer(structure: Structure, layer: int, kind: Kind) -> Sublayer:
    """Block ``layer``'s attention or MLP; a ``StructureError`` when the model has no such module."""
    check_choice(kind, KINDS, "sublayer kind")
    part = Sublayer(structure.block(layer).index, kind)
    for site in (part.input, part.output):
        try:
            site.target(structure)
        except SiteError as error:
            raise StructureError(f"no {'MLP' if kind == 'mlp' else 'attention'} sublayer to read: {error}") from error
    return part


@contextlib.contextmanager
def replace_sublayer(model: nn.Module, part: Sublayer,
                     fn: AffineFit | Callable[[torch.Tensor], torch.Tensor], *,
                     skip_first: bool = False, structure: Structure | None = None) -> Iterator[None]:
    """Make ``part`` write ``fn(its input)`` in place of its own output while the context is open.

    ``fn`` is an :class:`AffineFit` (``(x - x_mean) @ A + y_mean``) or any function of the input
    ``[batch, seq, d]``. The sublayer still runs (its output is discarded), so the model's other
    hooks and caches see a normal call. ``skip_first`` keeps the true output at sequence position 0
    (right-padded batches: each text's first token), for maps fitted without first tokens.
    """
    if isinstance(fn, AffineFit):
        fn = affine_map(fn)
    structure = structure or locate(model)
    held: list[torch.Tensor] = []

    def read(hidden: torch.Tensor, _chosen) -> None:
        held[:] = [hidden]

    def write(current: torch.Tensor, _chosen) -> torch.Tensor:
        if not held:
            raise ShapeError("the sublayer's output projection ran without its module's input being seen")
        new = fn(held[0])
        if new.shape != current.shape:
            raise ShapeError(f"the replacement gives {tuple(new.shape)}, the sublayer writes {tuple(current.shape)}")
        new = new.to(dtype=current.dtype, device=current.device)
        if skip_first:
            new = torch.cat([current[:, :1], new[:, 1:]], dim=1)
        return new

    with intervene(model, {part.input: read, part.output: write}, structure=structure):
        yield


def affine_map(fit: AffineFit) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> (x - x_mean) @ A + y_mean``, computed in float64 and cast back by the caller."""
    cache: dict = {}

    def apply(x: torch.Tensor) -> torch.Tensor:
        key = x.device
        if key not in cache:
            cache[key] = (fit.A.to(device=key, dtype=torch.float64), fit.x_mean.to(key, torch.float64),
                          fit.y_mean.to(key, torch.float64))
        A, mx, my = cache[key]
        return (x.double() - mx) @ A + my

    return apply
