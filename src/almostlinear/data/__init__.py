"""Offline prompt sets: facts from packaged geographic data, true/false statements, contrast
pairs, and neutral text sampled from the model. Importing loads nothing; data load on first use."""

from __future__ import annotations

from ..core.lazy import lazy_exports

_PUBLIC = {
    "facts": ("CAPITAL_OF_COUNTRY", "CITY_IN_COUNTRY", "Fact", "city_country_facts", "country_capital_facts"),
    "known": ("CITY_PROMPT", "known_facts"),
    "neutral": ("FALLBACK_TEXTS", "NEUTRAL_SEEDS", "generate_neutral_texts", "neutral_texts"),
    "statements": ("CAPITAL_TEMPLATE", "CITY_TEMPLATE", "Statement", "capital_statements", "city_statements",
                   "contrast_pairs", "split", "statements_from_facts", "with_article"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
