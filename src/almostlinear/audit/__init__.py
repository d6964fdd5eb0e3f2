"""``almostlinear audit``: how linear is this network, beside what the literature reports.

The section contract lives in :mod:`almostlinear.core.section` and :mod:`almostlinear.core.report`,
below the families; this package is the runner, which imports every family's section, so its
names load on first use.
"""

from ..core.report import Figure, Metric, SectionResult, Series
from ..core.section import AuditContext, Budget, Need, Section

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
