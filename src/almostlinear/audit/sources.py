"""The texts the audit reads: model-generated neutral text and true/false statements."""

from __future__ import annotations

from .. import data
from ..core.collect import shard_of
from ..core.errors import EmptyDataError
from ..core.section import AuditContext
from ..truth.prompts import contrast_prompts, whole_subjects


def build_source(ctx: AuditContext, source: str, shard: tuple[int, int] | None = None) -> list:
    """The items of ``source`` (texts or statements); :meth:`AuditContext.items` keeps them.

    ``shard=(rank, world)`` keeps this process's contiguous block of them (uneven and empty blocks
    allowed; see :func:`~almostlinear.core.collect.shard_bounds`)."""
    builders = {"neutral": _neutral, "cities": _cities, "cities_contrast": _cities_contrast}
    if source not in builders:
        raise EmptyDataError(f"unknown text source {source!r}; known: {sorted(builders)}")
    items = builders[source](ctx)
    return items if shard is None else shard_of(items, shard)


def _neutral(ctx: AuditContext) -> list[str]:
    if not ctx.causal:
        return list(data.FALLBACK_TEXTS)
    ctx.progress(f"{ctx.budget.neutral_texts} neutral texts: read from the cache, or sampled from the model once")
    return data.neutral_texts(ctx.loaded.model, ctx.loaded.tokenizer, ctx.budget.neutral_texts,
                              max_new_tokens=ctx.budget.neutral_new_tokens, seed=ctx.seed,
                              cache_key=ctx.loaded.fingerprint)


def _cities(ctx: AuditContext) -> list:
    candidates = data.city_country_facts()[: ctx.budget.fact_candidates]
    ctx.progress(f"checking which of {len(candidates)} city facts the model knows")
    known = data.known_facts(ctx.loaded.model, ctx.loaded.tokenizer, candidates, top_k=1)
    ctx.sources["cities_meta"] = {"candidates": len(candidates), "known": len(known),
                                  "known_share": len(known) / len(candidates)}
    n = min(ctx.budget.statements, 2 * len(known))
    n -= n % 2
    if n < 8:
        raise EmptyDataError(
            f"the model knows only {len(known)} of {len(candidates)} city facts: too few for truth probes"
        )
    return data.city_statements(n, seed=ctx.seed, facts=known)


def _cities_contrast(ctx: AuditContext) -> list:
    """Contrast prompts from the ``"cities"`` statements, so both truth sections read the same known facts.

    Each statement costs two prompts of ~14 tokens (four with the distractor), against one of ~10
    for the truth probes, so this source takes a third of the budget's statements (80 in
    ``--quick``: 160 clean and 80 distractor prompts) to keep its forward pass near the others'.
    """
    statements = whole_subjects(ctx.items("cities"), max(8, ctx.budget.statements // 3))
    return contrast_prompts(statements, seed=ctx.seed)
