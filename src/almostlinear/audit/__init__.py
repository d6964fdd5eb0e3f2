"""``almostlinear audit``: how linear is this network, beside what the literature reports.

The registry and the runner import every family's section, and the sections import
``audit.plan``; they are therefore loaded on first use, not when this package is imported.
"""

from .plan import AuditContext, Budget, Need, Section
from .schema import Figure, Metric, SectionResult, Series

_LAZY = {
    "SECTIONS": "registry", "make_sections": "registry", "section_ids": "registry",
    "AuditReport": "run", "run_audit": "run",
}

__all__ = ["SECTIONS", "AuditContext", "AuditReport", "Budget", "Figure", "Metric", "Need", "Section",
           "SectionResult", "Series", "make_sections", "run_audit", "section_ids"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
