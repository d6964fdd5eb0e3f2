"""``almostlinear audit``: how linear is this network, beside what the literature reports.

The section contract lives in :mod:`almostlinear.core.section` and :mod:`almostlinear.core.report`,
below the families; this package is the runner, which imports every family's section. Names load
on first use.
"""

from ..core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "registry": ("SECTIONS", "make_sections", "section_ids"),
    "run": ("AuditReport", "run_audit"),
    "plan": ("run_sections",),
    "compare": ("compare_reports",),
    "scorecard": ("CLAIMS", "score"),
    "schema": ("report_schema",),
})
