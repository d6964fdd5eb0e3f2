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

    @classmethod
    def quick(cls) -> Budget:
        return cls(neutral_texts=48, neutral_new_tokens=80, lens_tokens=384, statements=240,
                   fact_candidates=400, quick_mode=True)

    @classmethod
    def full(cls) -> Budget:
        return cls(neutral_texts=160, neutral_new_tokens=112, lens_tokens=4096, statements=1000,
                   fact_candidates=3000, similarity_tokens=4000, batch_size=16)


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


__all__ += ["CausalSection", "SiteRows"]
