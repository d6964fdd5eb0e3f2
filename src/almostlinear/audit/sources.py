"""The texts the audit reads: model-generated neutral text and true/false statements."""

from __future__ import annotations

from .. import data
from ..truth.prompts import cities_contrast_source
from ..core.errors import EmptyDataError
from .plan import AuditContext


def texts_for(ctx: AuditContext, source: str) -> list[str]:
    """The texts of ``source``, built once per audit and kept in ``ctx.sources``."""
    if source not in ctx.sources:
        builders = {"neutral": _neutral, "cities": _cities, "cities_contrast": cities_contrast_source}
        if source not in builders:
            raise EmptyDataError(f"unknown text source {source!r}; known: {sorted(builders)}")
        ctx.sources[source] = builders[source](ctx)
    items = ctx.sources[source]
    return [getattr(item, "text", item) for item in items]


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
