"""The single collection pass that serves every section's needs (the contract is :mod:`core.section`).

:func:`run_sections` groups the needs by text source and
runs one forward pass per source over the union of the sites, so a new section reading the same
text adds no forward pass. Logits, the costly part of a small model's forward, are computed only
on as many texts as the sections asking for them want.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

import torch

from ..core.collect import Batch, stream
from ..core.hooks import Positions
from ..core.report import SectionResult
from ..core.section import AuditContext, Need, Section, last_token_rows


def _subset(batch: Batch, rows: torch.Tensor | None, sites) -> Batch:
    if rows is None:  # every row: share the tensors instead of copying them (sections only read them)
        return Batch(activations={s: batch.activations[s] for s in sites}, token_ids=batch.token_ids,
                     text_index=batch.text_index, position=batch.position, logits=batch.logits,
                     next_token_ids=batch.next_token_ids)
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


def run_sections(ctx: AuditContext, sections: list[Section],
                 texts_for: Callable[[str], list[str]] | None = None, progress_bar=None) -> list[SectionResult]:
    """Plan and run the collection passes, then let every section finish.

    Sources come from ``ctx`` (its ``sources``, else its ``source_builder``); ``texts_for(source)``
    is a builder of plain text lists for contexts that have none.

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
    if ctx.source_builder is None and texts_for is not None:
        ctx.source_builder = lambda _ctx, source: texts_for(source)
    for source, pairs in wanted.items():
        texts = ctx.texts(source)
        pairs = [(section, need) for section, need in pairs if need.sites]
        if not pairs:
            continue  # sources asked for by name only: built, nothing to collect
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
            rows = None
        if need.skip_first and bool((batch.position == 0).any()):
            # The shared pass keeps first tokens when any other need wants them; drop them here.
            rows = torch.arange(len(batch)) if rows is None else rows
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
