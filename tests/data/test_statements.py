from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from almostlinear.core.errors import AlmostLinearError, EmptyDataError, ShapeError
from almostlinear.core.digest import data_hash
from almostlinear.data import (
    Fact,
    Statement,
    capital_statements,
    city_country_facts,
    city_statements,
    contrast_pairs,
    country_capital_facts,
    split,
    with_article,
)

SMALL = [
    Fact("Alpha", "city_in_country", "Russia"),
    Fact("Bravo", "city_in_country", "France"),
    Fact("Charlie", "city_in_country", "Chile"),
    Fact("Delta", "city_in_country", "France"),
]


def test_city_statements_counts_balance_and_pairs():
    sts = city_statements(400)
    assert len(sts) == 400
    assert sum(s.label for s in sts) == 200
    per_subject = Counter(s.subject for s in sts)
    assert len(per_subject) == 200 and set(per_subject.values()) == {2}
    for s in sts:
        assert (s.stated == s.truth) == s.label
        assert s.subject in s.text and with_article(s.stated) in s.text


def test_false_statements_name_a_wrong_country_from_the_fact_set():
    facts = city_country_facts()
    truth = {f.subject: f.answer for f in facts}
    countries = {f.answer for f in facts}
    for s in city_statements(200, seed=3):
        assert s.truth == truth[s.subject]
        assert s.stated in countries
        if not s.label:
            assert s.stated != truth[s.subject]


def test_statement_text_follows_template():
    sts = city_statements(20, seed=1, template="{subject}: {answer}")
    for s in sts:
        assert s.text == f"{s.subject}: {with_article(s.stated)}"
    pattern = re.compile(r"The city of .+ is in .+\.")
    assert all(pattern.fullmatch(s.text) for s in city_statements(20))


def test_same_seed_same_output_other_seed_differs():
    assert city_statements(100, seed=7) == city_statements(100, seed=7)
    assert city_statements(100, seed=7) != city_statements(100, seed=8)
    assert capital_statements(50, seed=2) == capital_statements(50, seed=2)
    assert capital_statements(50, seed=2) != capital_statements(50, seed=5)


def test_order_is_shuffled():
    labels = [s.label for s in city_statements(200, seed=0)]
    assert labels != [True, False] * 100 and labels != [False, True] * 100


@pytest.mark.parametrize("n", [0, 1, 3, 401, -2])
def test_bad_n_raises(n):
    with pytest.raises(AlmostLinearError, match="n"):
        city_statements(n, facts=city_country_facts()[:200])


def test_too_many_or_too_uniform_facts_raise():
    with pytest.raises(EmptyDataError, match="distinct subjects"):
        city_statements(10, facts=SMALL)
    with pytest.raises(EmptyDataError, match="two distinct answers"):
        city_statements(2, facts=[Fact("A", "r", "X"), Fact("B", "r", "X")])
    assert issubclass(EmptyDataError, ValueError)


def test_custom_facts_use_all_subjects_once():
    sts = city_statements(8, facts=SMALL, seed=4)
    assert Counter(s.subject for s in sts) == {f.subject: 2 for f in SMALL}
    for s in sts:
        if not s.label:
            assert s.stated in {"Russia", "France", "Chile"} and s.stated != s.truth


def test_duplicate_subjects_in_facts_are_used_once():
    facts = SMALL + [Fact("Alpha", "city_in_country", "Chile")]
    with pytest.raises(EmptyDataError):
        city_statements(10, facts=facts)
    assert len(city_statements(8, facts=facts)) == 8


def test_capital_statements():
    truth = {f.subject: f.answer for f in country_capital_facts()}
    sts = capital_statements(100, seed=1)
    assert len(sts) == 100 and sum(s.label for s in sts) == 50
    for s in sts:
        assert s.truth == truth[s.subject]
        assert s.text.startswith("The capital of ")
        assert s.text.endswith(with_article(s.stated) + ".")
        assert (s.stated == s.truth) == s.label


def test_with_article():
    assert with_article("United States") == "the United States"
    assert with_article("Netherlands") == "the Netherlands"
    assert with_article("Czech Republic") == "the Czech Republic"
    assert with_article("France") == "France"
    assert with_article("Paris") == "Paris"


def test_contrast_pairs():
    sts = city_statements(60, seed=2)
    pairs = contrast_pairs(sts)
    assert len(pairs) == 30
    for true, false in pairs:
        assert true.label and not false.label
        assert true.subject == false.subject and true.truth == false.truth
        assert true.stated != false.stated
    partial = [s for s in sts if not (s.subject == sts[0].subject and s.label)]
    assert len(contrast_pairs(partial)) == 29
    with pytest.raises(EmptyDataError):
        contrast_pairs([s for s in sts if s.label])


def test_split_keeps_subjects_on_one_side():
    sts = city_statements(200, seed=0)
    train, test = split(sts, 0.7, seed=1)
    assert len(train) + len(test) == 200
    assert abs(len(train) - 140) <= 2
    assert not {s.subject for s in train} & {s.subject for s in test}
    assert sorted(train + test, key=sts.index) == sts
    assert [sts.index(s) for s in train] == sorted(sts.index(s) for s in train)  # order kept
    assert split(sts, 0.7, seed=1) == (train, test)
    assert split(sts, 0.7, seed=2) != (train, test)


def test_split_without_subject_and_with_key():
    items = list(range(10))
    a, b = split(items, 0.3, seed=0)
    assert len(a) == 3 and sorted(a + b) == items
    a, b = split(items, 0.5, key=lambda x: x % 2)
    assert {x % 2 for x in a} | {x % 2 for x in b} == {0, 1}
    assert len({x % 2 for x in a}) == 1 and len({x % 2 for x in b}) == 1
    assert split(items, 0.0) == ([], items)
    assert split(items, 1.0) == (items, [])
    with pytest.raises(AlmostLinearError):
        split(items, 1.5)


@settings(max_examples=50, deadline=None)
@given(
    subjects=st.lists(st.integers(0, 15), min_size=0, max_size=40),
    fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_split_property(subjects, fraction, seed):
    items = [Statement(f"t{i}", bool(i % 2), f"s{k}", "a", "a") for i, k in enumerate(subjects)]
    a, b = split(items, fraction, seed=seed)
    assert sorted(a + b, key=items.index) == items
    assert not {s.subject for s in a} & {s.subject for s in b}
    largest = max(Counter(subjects).values(), default=0)
    assert abs(len(a) - fraction * len(items)) <= largest / 2 + 1e-9 or len(items) == 0


def test_data_hash():
    sts = city_statements(20, seed=0)
    h = data_hash(sts)
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", h)
    assert data_hash(list(sts)) == h and data_hash(city_statements(20, seed=0)) == h
    flipped = dataclasses.replace(sts[0], label=not sts[0].label)
    assert data_hash([flipped, *sts[1:]]) != h
    assert data_hash(sts[::-1]) != h
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", data_hash(contrast_pairs(sts)))
    assert data_hash(["a", 1]) == data_hash(("a", 1))
    with pytest.raises(ShapeError):
        data_hash([object()])
