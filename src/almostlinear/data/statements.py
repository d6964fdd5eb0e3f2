"""Labelled true/false statements built from facts, in matched pairs, deterministic for a seed.

Each chosen fact yields one true statement and one false one that swaps in another answer from
the same fact set, so true and false sentences share their subject and wording and differ only
in the fact they assert: a linear truth direction cannot lean on topic or template.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..core.errors import AlmostLinearError, EmptyDataError
from .facts import Fact, city_country_facts, country_capital_facts

T = TypeVar("T")

CITY_TEMPLATE = "The city of {subject} is in {answer}."
CAPITAL_TEMPLATE = "The capital of {subject} is {answer}."

# Country names that read with "the" inside a sentence ("is in the United States").
_ARTICLE_WORDS = frozenset(
    "United Republic Kingdom Islands States Emirates Netherlands Philippines Bahamas Gambia "
    "Maldives Comoros Seychelles Territory Territories".split()
)


@dataclass(frozen=True)
class Statement:
    """A sentence and its label; ``stated``: the answer it asserts, ``truth``: the right one."""

    text: str
    label: bool
    subject: str
    stated: str
    truth: str


def with_article(name: str) -> str:
    """``"United States"`` -> ``"the United States"``; names without a customary article as is."""
    if name.startswith(("the ", "The ")) or not _ARTICLE_WORDS.intersection(name.split()):
        return name
    return "the " + name


def _render(template: str, subject: str, answer: str) -> str:
    return template.format(subject=with_article(subject), answer=with_article(answer))


def statements_from_facts(
    facts: Sequence[Fact], n: int, *, seed: int = 0, template: str
) -> list[Statement]:
    """``n`` statements, half true and half false, about ``n/2`` distinct subjects, seeded."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2:
        raise AlmostLinearError(
            "n must be an even integer >= 2 (one true and one false statement per fact); "
            f"got {n!r}."
        )
    unique: dict[str, Fact] = {}
    for fact in facts:
        unique.setdefault(fact.subject, fact)
    answers = sorted({fact.answer for fact in unique.values()})
    if len(answers) < 2:
        raise EmptyDataError(
            "False statements need at least two distinct answers among the facts; "
            f"got {len(answers)}. Pass a larger or more varied fact list."
        )
    if n // 2 > len(unique):
        raise EmptyDataError(
            f"n={n} needs {n // 2} distinct subjects but the facts have only {len(unique)}; "
            f"ask for n <= {2 * len(unique)} or pass more facts (e.g. a lower min_population)."
        )
    rng = random.Random(seed)
    chosen = rng.sample(list(unique.values()), n // 2)
    out: list[Statement] = []
    for fact in chosen:
        wrong = rng.choice([a for a in answers if a != fact.answer])
        for stated in (fact.answer, wrong):
            text = _render(template, fact.subject, stated)
            out.append(Statement(text, stated == fact.answer, fact.subject, stated, fact.answer))
    rng.shuffle(out)
    return out


def city_statements(
    n: int = 400,
    *,
    seed: int = 0,
    facts: list[Fact] | None = None,
    template: str = CITY_TEMPLATE,
) -> list[Statement]:
    """True/false "city is in country" statements from :func:`city_country_facts` by default."""
    return statements_from_facts(
        city_country_facts() if facts is None else facts, n, seed=seed, template=template
    )


def capital_statements(
    n: int = 200,
    *,
    seed: int = 0,
    facts: list[Fact] | None = None,
    template: str = CAPITAL_TEMPLATE,
) -> list[Statement]:
    """True/false "capital of country" statements from :func:`country_capital_facts` by default."""
    return statements_from_facts(
        country_capital_facts() if facts is None else facts, n, seed=seed, template=template
    )


def contrast_pairs(statements: Iterable[Statement]) -> list[tuple[Statement, Statement]]:
    """``(true, false)`` pairs sharing a subject, in order of first appearance.

    Unsupervised truth methods (CCS, contrast PCA) compare the two members of each pair.
    Subjects lacking either side are skipped; with several, the first of each is used.
    """
    sides: dict[str, dict[bool, Statement]] = {}
    for st in statements:
        sides.setdefault(st.subject, {}).setdefault(bool(st.label), st)
    pairs = [(s[True], s[False]) for s in sides.values() if True in s and False in s]
    if not pairs:
        raise EmptyDataError("No subject has both a true and a false statement; nothing to pair.")
    return pairs


def _default_key(item: Any, index: int) -> Hashable:
    subject = getattr(item, "subject", None)
    return ("subject", subject) if subject is not None else ("index", index)


def split(
    items: Sequence[T],
    fraction: float = 0.5,
    *,
    seed: int = 0,
    key: Callable[[T], Hashable] | None = None,
) -> tuple[list[T], list[T]]:
    """Split into (first, second) with about ``fraction`` of the items first; same key, same side.

    The key defaults to the ``subject`` attribute, so no subject is seen in training and tested
    on: a probe must generalise to new facts rather than recall the training ones. Items keep
    their original order within each side.
    """
    if not 0.0 <= fraction <= 1.0:
        raise AlmostLinearError(f"fraction must lie in [0, 1]; got {fraction!r}.")
    items = list(items)
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        k = _default_key(item, i) if key is None else key(item)
        groups.setdefault(k, []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    target = fraction * len(items)
    first: set[int] = set()
    for idx in order:
        # Put the group first when that brings the first side closer to its target size.
        if abs(len(first) + len(idx) - target) < abs(len(first) - target):
            first.update(idx)
    return (
        [x for i, x in enumerate(items) if i in first],
        [x for i, x in enumerate(items) if i not in first],
    )
