"""``almostlinear audit``: how linear is this network, beside what the literature reports."""

from .plan import AuditContext, Budget, Need, Section
from .registry import SECTIONS, make_sections, section_ids
from .run import AuditReport, run_audit
from .schema import Figure, Metric, SectionResult, Series

__all__ = ["SECTIONS", "AuditContext", "AuditReport", "Budget", "Figure", "Metric", "Need", "Section",
           "SectionResult", "Series", "make_sections", "run_audit", "section_ids"]
