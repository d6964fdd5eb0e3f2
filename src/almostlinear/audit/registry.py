"""The audit's sections, found through the family manifest (:mod:`almostlinear.families`), in report order."""

from __future__ import annotations

import importlib

from ..core.errors import ChoiceError
from ..core.section import Section
from ..families import section_paths


def _load() -> tuple[type[Section], ...]:
    return tuple(getattr(importlib.import_module(module), name) for module, name in section_paths())


SECTIONS: tuple[type[Section], ...] = _load()


def section_ids() -> list[str]:
    return [cls.id for cls in SECTIONS]


def make_sections(only: list[str] | None = None) -> list[Section]:
    known = section_ids()
    for section in only or ():
        if section not in known:  # the ids without quotes, so the message stays one short line
            raise ChoiceError(f"unknown audit section {section!r}; the sections are {', '.join(known)}")
    return [cls() for cls in SECTIONS if not only or cls.id in only]
