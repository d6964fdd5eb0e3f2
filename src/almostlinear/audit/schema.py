"""The JSON Schema of ``report.json``, shipped with the package (``audit/report.schema.json``)."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files

SCHEMA_FILE = "report.schema.json"


@lru_cache(maxsize=1)
def _text() -> str:
    return files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def report_schema() -> dict:
    """The JSON Schema (draft 2020-12) that every ``report.json`` of this version validates against."""
    return json.loads(_text())
