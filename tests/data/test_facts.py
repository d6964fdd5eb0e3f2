from __future__ import annotations

import subprocess
import sys

from almostlinear.data import Fact, city_country_facts, country_capital_facts
from almostlinear.data.facts import CAPITAL_OF_COUNTRY, CITY_IN_COUNTRY, fold, is_plain


def test_city_facts_count_and_shape():
    facts = city_country_facts()
    assert 800 <= len(facts) <= 2000
    assert all(f.relation == CITY_IN_COUNTRY and is_plain(f.subject) for f in facts)
    assert len({f.subject for f in facts}) == len(facts)
    assert len({f.answer for f in facts}) > 80


def test_city_facts_contain_known_cities():
    facts = set(city_country_facts())
    for city, country in [
        ("Krasnodar", "Russia"), ("Moscow", "Russia"), ("Paris", "France"),
        ("London", "United Kingdom"), ("Tokyo", "Japan"), ("Nairobi", "Kenya"),
    ]:
        assert Fact(city, CITY_IN_COUNTRY, country) in facts


def test_city_facts_drop_ambiguous_and_country_names():
    facts = city_country_facts()
    subjects = {fold(f.subject) for f in facts}
    # Valencia (Spain / Venezuela), Cordoba (Argentina / Spain), Hyderabad (India / Pakistan).
    assert not subjects & {"valencia", "cordoba", "hyderabad", "birmingham"}
    countries = {fold(f.answer) for f in facts}
    assert not subjects & countries  # no "Singapore is in Singapore"
    assert all(not f.answer.startswith("The ") for f in facts)


def test_city_facts_deterministic_and_threshold_monotone():
    a, b = city_country_facts(), city_country_facts()
    assert a == b
    bigger = city_country_facts(min_population=2_000_000)
    assert 0 < len(bigger) < len(a)
    assert set(bigger) <= set(a)
    assert bigger == a[: len(bigger)]  # sorted by population, largest first


def test_city_facts_returns_a_fresh_list():
    facts = city_country_facts()
    facts.clear()
    assert city_country_facts()


def test_capital_facts():
    facts = country_capital_facts()
    assert 150 <= len(facts) <= 260
    assert all(f.relation == CAPITAL_OF_COUNTRY for f in facts)
    assert all(is_plain(f.subject) and is_plain(f.answer) for f in facts)
    assert len({f.subject for f in facts}) == len(facts)
    assert len({f.answer for f in facts}) == len(facts)  # one country per capital
    pairs = {(f.subject, f.answer) for f in facts}
    expected = {("France", "Paris"), ("Japan", "Tokyo"), ("Serbia", "Belgrade"), ("Peru", "Lima")}
    assert expected <= pairs
    subjects = {f.subject for f in facts}
    assert not subjects & {"Serbia and Montenegro", "Scotland", "Burma", "Singapore"}
    assert facts == country_capital_facts()


def test_importing_data_loads_nothing_and_every_public_name_resolves():
    code = (
        "import sys, types\n"
        "import almostlinear.data as package\n"
        "assert 'torch' not in sys.modules, 'importing the package imported torch'\n"
        "for name in package.__all__:  # a name shadowed by its submodule would come back as a module\n"
        "    assert not isinstance(getattr(package, name), types.ModuleType), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
