"""The audit's section contract: what a family implements to add a section, below every family.

A section declares :class:`Need` objects (which texts, which sites, which positions, whether
logits) and receives batches through ``consume``; the runner (``almostlinear.audit``) groups the
needs of all sections by text source and serves them from one forward pass per source. A section
that runs forward passes of its own (it intervenes, or generates) declares no activation need: it
reads its texts in ``finish`` through :meth:`AuditContext.texts`, and a ``Need(source)`` with no
sites asks the runner to build that source without collecting anything.

Families import this module and :mod:`.report`; they never import the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .collect import Batch
from .errors import EmptyDataError
from .models import LoadedModel
from .report import SectionResult
from .sites import Site

__all__ = ["AuditContext", "Budget", "Need", "Section", "SectionResult", "last_token_rows"]

@dataclass(frozen=True)
class Budget:
    """How much text each source gets. ``quick`` fits a few minutes on 2 CPU cores."""

    neutral_texts: int
    neutral_new_tokens: int
    lens_tokens: int
    statements: int
    fact_candidates: int
    similarity_tokens: int = 2000
    max_length: int = 128
    batch_size: int = 8
    # Sections that run work of their own (edits, generation, training) size it by this flag rather
    # than by guessing from the text counts above.
    quick_mode: bool = False
    # Training tokens of the tuned lens (SGD through the unembedding: about three vocabulary-sized
    # products per state and token, the costliest lens); 0 leaves it out, None means lens_tokens
    # outside quick mode and none in it.
    tuned_lens_tokens: int | None = None
    # Bytes of per-layer statistics that the layered sections (LayeredSection) may hold at once. When
    # all layers' state would exceed it, the runner serves those sections a group of layers per forward
    # pass, so memory stays bounded whatever the depth (180 B·d² per layer for the linearity and lens
    # sections: 3.0 GB at d = 4096, so 3 layers a pass at the default; SmolLM2's 30 layers take 1.8 GB).
    state_bytes: int = 10 * 10**9

    @property
    def tuned_tokens(self) -> int:
        """The tuned lens's training tokens, ``tuned_lens_tokens`` resolved."""
        if self.tuned_lens_tokens is None:
            return 0 if self.quick_mode else self.lens_tokens
        return self.tuned_lens_tokens

    @classmethod
    def quick(cls) -> Budget:
        return cls(neutral_texts=48, neutral_new_tokens=80, lens_tokens=384, statements=240,
                   fact_candidates=400, quick_mode=True, tuned_lens_tokens=128)

    @classmethod
    def full(cls) -> Budget:
        return cls(neutral_texts=160, neutral_new_tokens=112, lens_tokens=4096, statements=1000,
                   fact_candidates=3000, similarity_tokens=4000, batch_size=16, tuned_lens_tokens=4096)


@dataclass
class AuditContext:
    """Everything a section may read: the model, its structure, the settings and the text sources."""

    loaded: LoadedModel
    budget: Budget
    seed: int = 0
    progress: Callable[[str], None] = print
    sources: dict[str, list] = field(default_factory=dict)
    # Builds a text source on first request; the runner sets it. Sections call :meth:`texts`.
    source_builder: Callable[[AuditContext, str], list] | None = None

    @property
    def quick(self) -> bool:
        return self.budget.quick_mode

    def items(self, source: str) -> list:
        """The items of ``source`` (texts, or statements with labels), built once per audit."""
        if source not in self.sources:
            if self.source_builder is None:
                raise EmptyDataError(f"no text source {source!r} was given and this context cannot build one")
            self.sources[source] = self.source_builder(self, source)
        return self.sources[source]

    def texts(self, source: str) -> list[str]:
        """The texts of ``source``, built once per audit."""
        return [getattr(item, "text", item) for item in self.items(source)]

    @property
    def structure(self):
        return self.loaded.structure

    @property
    def causal(self) -> bool:
        return self.loaded.kind == "causal-lm" and self.loaded.structure.unembedding is not None


@dataclass(frozen=True)
class Need:
    """One section's request for activations from a text source."""

    source: str
    sites: tuple[Site, ...] = ()  # none: build the source for finish(), collect nothing
    positions: str = "all"  # "all" or "last" (the last real token of each text)
    logits_texts: int = 0  # how many texts (from the start) need logits
    skip_first: bool = False


class Section:
    """Base class of audit sections. Subclasses set ``id`` and ``title`` and override the hooks."""

    id: str = ""
    title: str = ""

    def applicable(self, ctx: AuditContext) -> str | None:
        """``None`` when the section can run on this model, else the reason it cannot."""
        return None

    def needs(self, ctx: AuditContext) -> list[Need]:
        return []

    def consume(self, source: str, batch: Batch) -> None:
        """Receive one batch of a source this section asked for."""

    def finish(self, ctx: AuditContext) -> SectionResult:
        raise NotImplementedError


def last_token_rows(batch: Batch) -> torch.Tensor:
    """Indices of each text's last real token among the rows of ``batch``."""
    keep = torch.zeros(len(batch), dtype=torch.bool)
    for text in batch.text_index.unique():
        rows = (batch.text_index == text).nonzero()[:, 0]
        keep[rows[batch.position[rows].argmax()]] = True
    return keep.nonzero()[:, 0]




class CausalSection(Section):
    """A section that needs a causal language model; ``causal_reason`` says why when it is skipped."""

    causal_reason = "this section needs a causal language model"

    def applicable(self, ctx: AuditContext) -> str | None:
        return None if ctx.causal else self.causal_reason


class SiteRows:
    """Rows of one source's batches at ``sites``, gathered batch by batch.

    :meth:`result` gives ``[sites, rows, d]`` (on the CPU, in ``dtype``) and each row's text index, in
    arrival order; :meth:`add` keeps every row of a batch, or only ``rows`` (e.g. :func:`last_token_rows`).
    """

    def __init__(self, sites, dtype: torch.dtype = torch.float32) -> None:
        self.sites, self.dtype = tuple(sites), dtype
        self._parts: list[torch.Tensor] = []
        self._index: list[torch.Tensor] = []

    def add(self, batch: Batch, rows: torch.Tensor | None = None) -> None:
        pick = (lambda t: t) if rows is None else (lambda t: t[rows.to(t.device)])
        self._parts.append(torch.stack([pick(batch.activations[s]).to(self.dtype).cpu() for s in self.sites]))
        self._index.append(pick(batch.text_index).cpu())

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._parts:
            raise EmptyDataError("no batch reached this section: its text source gave no rows")
        return torch.cat(self._parts, dim=1), torch.cat(self._index)


class LayeredSection(Section):
    """A section whose statistics are kept per layer and reduced layer by layer.

    The runner may serve it in stages: for each group of layers (a ``range`` of block indices) it
    calls :meth:`begin_layers`, streams the batches of that group's needs to :meth:`consume`, then
    calls :meth:`end_layers`, which reduces the group's statistics to per-layer results and frees
    them. All layers in one group is the ordinary single pass. Subclasses implement
    :meth:`layer_state_bytes` (what one layer's statistics cost, so the runner can size the groups),
    :meth:`layer_needs`, :meth:`reduce_layers` and :meth:`report`.
    """

    _open_layers: range | None = None

    def layer_state_bytes(self, ctx: AuditContext) -> int:
        raise NotImplementedError

    def layer_needs(self, ctx: AuditContext, layers: range) -> list[Need]:
        raise NotImplementedError

    def reduce_layers(self, ctx: AuditContext, layers: range) -> None:
        raise NotImplementedError

    def report(self, ctx: AuditContext) -> SectionResult:
        raise NotImplementedError

    def needs(self, ctx: AuditContext) -> list[Need]:
        return self.begin_layers(ctx, range(ctx.structure.n_layers))

    def begin_layers(self, ctx: AuditContext, layers: range) -> list[Need]:
        """Start the statistics of ``layers`` (``layers.start == 0`` starts a new audit)."""
        self._open_layers = layers
        return self.layer_needs(ctx, layers)

    def end_layers(self, ctx: AuditContext) -> None:
        """Reduce and free the open group's statistics; nothing when no group is open."""
        layers, self._open_layers = self._open_layers, None
        if layers is not None:
            self.reduce_layers(ctx, layers)

    def finish(self, ctx: AuditContext) -> SectionResult:
        self.end_layers(ctx)  # a runner that never staged the layers: the one group is still open
        return self.report(ctx)


def layer_groups(n_layers: int, per_layer_bytes: int, state_bytes: int) -> list[range]:
    """Consecutive groups of layers whose statistics fit ``state_bytes`` together (at least one layer
    each); one group of all layers when everything fits."""
    if n_layers <= 0:
        return [range(0)]
    size = n_layers if per_layer_bytes * n_layers <= state_bytes else max(1, state_bytes // max(per_layer_bytes, 1))
    return [range(start, min(start + size, n_layers)) for start in range(0, n_layers, size)]


__all__ += ["CausalSection", "LayeredSection", "SiteRows", "layer_groups"]
