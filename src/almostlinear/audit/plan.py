"""The single collection pass that serves every section's needs (the contract is :mod:`core.section`).

:func:`run_sections` groups the needs by text source and
runs one forward pass per source over the union of the sites, so a new section reading the same
text adds no forward pass. Logits, the costly part of a small model's forward, are computed only
on as many texts as the sections asking for them want.

Sections whose statistics grow as depth x width² (:class:`~almostlinear.core.section.LayeredSection`)
are served in groups of layers when all their layers' state would exceed ``budget.state_bytes``: the
first group rides on the shared pass, each further group gets a pass of its own that stops after its
deepest site, and every group's statistics are reduced and freed before the next begins.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

import torch

from ..core import progress
from ..core.collect import Batch
from ..core.hooks import Positions
from ..core.report import SectionResult
from ..core.section import AuditContext, LayeredSection, Need, Section, last_token_rows, layer_groups
from ..distributed.audit import release_workers, shared_stream  # under torchrun: passes split across ranks


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
    others still finish. ``progress_bar(total, description)`` returns an object with ``update``
    (default: :func:`almostlinear.core.progress.bar`, silent unless progress is on).

    Each result's ``elapsed_s`` is the wall time of the section's own work: its share of the shared
    passes (``consume``) plus its ``finish``; the forward passes themselves are not split among them.
    """
    progress_bar = progress_bar or progress.bar
    spent: dict[str, float] = {}
    results: dict[str, SectionResult] = {}
    live = []
    for section in sections:
        reason = section.applicable(ctx)
        if reason is not None:
            results[section.id] = SectionResult(section.id, section.title, status="skipped", notes=[reason])
        else:
            live.append(section)
    layered = [s for s in live if isinstance(s, LayeredSection)]
    groups = plan_layer_groups(ctx, layered, results)
    wanted: dict[str, list[tuple[Section, Need]]] = {}
    for section in live:
        if section.id in results:
            continue
        try:
            needs = section.begin_layers(ctx, groups[0]) if section in layered else section.needs(ctx)
            for need in needs:
                wanted.setdefault(need.source, []).append((section, need))
        except Exception as error:  # noqa: BLE001 - one section must not sink the audit
            results[section.id] = _failed(section, error)
    failed: set[str] = set(results)
    if ctx.source_builder is None and texts_for is not None:
        ctx.source_builder = lambda _ctx, source: texts_for(source)
    staged = len(groups) > 1
    for number, group in enumerate(groups):
        if number:
            wanted = {}
            for section in layered:
                if section.id in failed:
                    continue
                try:
                    for need in section.begin_layers(ctx, group):
                        wanted.setdefault(need.source, []).append((section, need))
                except Exception as error:  # noqa: BLE001
                    failed.add(section.id)
                    results[section.id] = _failed(section, error)
        label = f" (layers {group.start}-{group.stop - 1})" if staged else ""
        _collect(ctx, wanted, failed, results, progress_bar, spent, label)
        for section in layered:
            if section.id not in failed:
                began = time.perf_counter()
                try:
                    section.end_layers(ctx)
                except Exception as error:  # noqa: BLE001
                    failed.add(section.id)
                    results[section.id] = _failed(section, error)
                spent[section.id] = spent.get(section.id, 0.0) + time.perf_counter() - began
    release_workers()  # the shared passes are done; what follows runs on this rank alone
    pending = [s for s in sections if s.id not in results]
    for number, section in enumerate(pending, 1):
        began = time.perf_counter()
        with progress.stage(f"section {number}/{len(pending)}: {section.title}"):
            try:
                result = section.finish(ctx)
            except Exception as error:  # noqa: BLE001
                result = _failed(section, error)
        result.elapsed_s = time.perf_counter() - began + spent.get(section.id, 0.0)
        results[section.id] = result
    for section_id, seconds in spent.items():  # sections that failed while consuming
        if results[section_id].elapsed_s == 0.0:
            results[section_id].elapsed_s = seconds
    return [results[s.id] for s in sections]


def plan_layer_groups(ctx: AuditContext, layered: list[LayeredSection], results: dict | None = None) -> list[range]:
    """The groups of layers the layered sections are served in, sized by ``ctx.budget.state_bytes``.

    A section whose size cannot be read is reported failed in ``results`` (when given).
    """
    if not layered:
        return [range(0)]
    per_layer = 0
    for section in layered:
        try:
            per_layer += int(section.layer_state_bytes(ctx))
        except Exception as error:  # noqa: BLE001
            if results is None:
                raise
            results[section.id] = _failed(section, error)
    return layer_groups(ctx.structure.n_layers, per_layer, ctx.budget.state_bytes)


def _collect(ctx: AuditContext, wanted: dict[str, list[tuple[Section, Need]]], failed: set[str], results: dict,
             progress_bar, spent: dict, label: str = "") -> None:
    """One forward pass per source over the union of the wanted sites, each batch dispatched to the sections."""
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
        bar = progress_bar(len(texts), f"forward pass over {source} texts{label}") if progress_bar else None
        start = 0
        for part, with_logits in ((texts[:n_logits], True), (texts[n_logits:], False)):
            if not part:
                continue
            for batch in shared_stream(ctx.loaded.model, ctx.loaded.tokenizer, part, sites, positions=positions,
                                       logits=with_logits, batch_size=ctx.budget.batch_size,
                                       max_length=ctx.budget.max_length, skip_first=skip_first,
                                       structure=ctx.structure, progress=bar.update if bar else None):
                batch.text_index += start
                _dispatch(batch, pairs, failed, results, source, spent)
            start += len(part)
        if bar is not None:
            bar.close()


def _dispatch(batch: Batch, pairs, failed: set[str], results: dict, source: str, spent: dict) -> None:
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
        began = time.perf_counter()
        try:
            section.consume(source, view)
        except Exception as error:  # noqa: BLE001
            failed.add(section.id)
            results[section.id] = _failed(section, error)
        spent[section.id] = spent.get(section.id, 0.0) + time.perf_counter() - began


def _failed(section: Section, error: Exception) -> SectionResult:
    detail = "".join(traceback.format_exception_only(type(error), error)).strip()
    return SectionResult(section.id, section.title, status="failed",
                         notes=[f"this section failed: {detail}", traceback.format_exc(limit=6)])
