"""Sections, what they need, and the single collection pass that serves them all.

A section declares :class:`Need` objects (which texts, sites, positions, whether logits) and
receives batches through ``consume``. :func:`run_sections` groups the needs by text source and
runs one forward pass per source over the union of the sites, so a new section reading the same
text adds no forward pass. Logits, the costly part of a small model's forward, are computed only
on as many texts as the sections asking for them want.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.collect import Batch, stream
from ..core.hooks import Positions
from ..core.models import LoadedModel
from ..core.sites import Site
from .schema import SectionResult


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

    @classmethod
    def quick(cls) -> Budget:
        return cls(neutral_texts=48, neutral_new_tokens=80, lens_tokens=384, statements=240,
                   fact_candidates=400)

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
    sites: tuple[Site, ...]
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


def _subset(batch: Batch, rows: torch.Tensor, sites) -> Batch:
    return Batch(
        activations={s: batch.activations[s][rows.to(batch.activations[s].device)] for s in sites},
        token_ids=batch.token_ids[rows],
        text_index=batch.text_index[rows],
        position=batch.position[rows],
        logits=batch.logits[rows.to(batch.logits.device)] if batch.logits is not None else None,
        next_token_ids=batch.next_token_ids[rows] if batch.next_token_ids is not None else None,
    )


def _positions_for(needs: list[Need]) -> Positions:
    return "all" if any(n.positions == "all" for n in needs) else "last"


def run_sections(ctx: AuditContext, sections: list[Section], texts_for: Callable[[str], list[str]],
                 progress_bar=None) -> list[SectionResult]:
    """Plan and run the collection passes, then let every section finish.

    A section that raises is reported with status ``failed`` and its traceback in the notes; the
    others still finish. ``progress_bar(total, description)`` returns an object with ``update``.
    """
    results: dict[str, SectionResult] = {}
    wanted: dict[str, list[tuple[Section, Need]]] = {}
    for section in sections:
        reason = section.applicable(ctx)
        if reason is not None:
            results[section.id] = SectionResult(section.id, section.title, status="skipped", notes=[reason])
            continue
        try:
            for need in section.needs(ctx):
                wanted.setdefault(need.source, []).append((section, need))
        except Exception as error:  # noqa: BLE001 - one section must not sink the audit
            results[section.id] = _failed(section, error)
    failed: set[str] = set(results)
    for source, pairs in wanted.items():
        texts = texts_for(source)
        needs = [need for _, need in pairs]
        sites = sorted({s for need in needs for s in need.sites}, key=lambda s: (s.layer, s.name))
        positions = _positions_for(needs)
        skip_first = all(n.skip_first for n in needs)
        n_logits = min(len(texts), max(n.logits_texts for n in needs))
        bar = progress_bar(len(texts), f"forward pass over {source} texts") if progress_bar else None
        start = 0
        for part, with_logits in ((texts[:n_logits], True), (texts[n_logits:], False)):
            if not part:
                continue
            for batch in stream(ctx.loaded.model, ctx.loaded.tokenizer, part, sites, positions=positions,
                                logits=with_logits, batch_size=ctx.budget.batch_size,
                                max_length=ctx.budget.max_length, skip_first=skip_first,
                                structure=ctx.structure, progress=bar.update if bar else None):
                batch.text_index += start
                _dispatch(batch, pairs, failed, results, source)
            start += len(part)
        if bar is not None:
            bar.close()
    for section in sections:
        if section.id in results:
            continue
        began = time.perf_counter()
        try:
            result = section.finish(ctx)
        except Exception as error:  # noqa: BLE001
            result = _failed(section, error)
        result.elapsed_s = time.perf_counter() - began
        results[section.id] = result
    return [results[s.id] for s in sections]


def _dispatch(batch: Batch, pairs, failed: set[str], results: dict, source: str) -> None:
    last_rows = None
    for section, need in pairs:
        if section.id in failed:
            continue
        if need.positions == "last":
            if last_rows is None:
                last_rows = last_token_rows(batch)
            rows = last_rows
        else:
            rows = torch.arange(len(batch))
        if need.skip_first:
            # The shared pass keeps first tokens when any other need wants them; drop them here.
            rows = rows[batch.position[rows] > 0]
        view = _subset(batch, rows, need.sites)
        if view.logits is not None and need.logits_texts == 0:
            view.logits = None
        try:
            section.consume(source, view)
        except Exception as error:  # noqa: BLE001
            failed.add(section.id)
            results[section.id] = _failed(section, error)


def _failed(section: Section, error: Exception) -> SectionResult:
    detail = "".join(traceback.format_exception_only(type(error), error)).strip()
    return SectionResult(section.id, section.title, status="failed",
                         notes=[f"this section failed: {detail}", traceback.format_exc(limit=6)])
