"""Offline prompt sets: facts from packaged geographic data, true/false statements, contrast
pairs, and neutral text sampled from the model. Importing loads nothing; data load on first use."""

from almostlinear.data.facts import (
    CAPITAL_OF_COUNTRY,
    CITY_IN_COUNTRY,
    Fact,
    city_country_facts,
    country_capital_facts,
)
from almostlinear.data.known import CITY_PROMPT, known_facts
from almostlinear.data.neutral import (
    FALLBACK_TEXTS,
    NEUTRAL_SEEDS,
    generate_neutral_texts,
    neutral_texts,
)
from almostlinear.data.statements import (
    CAPITAL_TEMPLATE,
    CITY_TEMPLATE,
    Statement,
    capital_statements,
    city_statements,
    contrast_pairs,
    split,
    statements_from_facts,
    with_article,
)

__all__ = [
    "CAPITAL_OF_COUNTRY",
    "CAPITAL_TEMPLATE",
    "CITY_IN_COUNTRY",
    "CITY_PROMPT",
    "CITY_TEMPLATE",
    "FALLBACK_TEXTS",
    "NEUTRAL_SEEDS",
    "Fact",
    "Statement",
    "capital_statements",
    "city_country_facts",
    "city_statements",
    "contrast_pairs",
    "country_capital_facts",
    "generate_neutral_texts",
    "known_facts",
    "neutral_texts",
    "split",
    "statements_from_facts",
    "with_article",
]
