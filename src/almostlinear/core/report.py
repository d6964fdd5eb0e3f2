"""The audit report's data model; ``report.json`` is these dataclasses as JSON.

Schema (version 2; the JSON Schema file ``audit/report.schema.json`` is the exact statement)::

    {
      "schema_version": 2,
      "tool": {"name": "almostlinear", "version": str},
      "created": ISO-8601 time, "elapsed_s": float,
      "scorecard": {"rule": str, "rows": [{"id": str, "claim": str, "section": str, "metric": str,
                    "value": number|null, "unit": str, "layer": int|null, "literature": str,
                    "source": str, "verdict": "holds"|"partly"|"fails"|"not tested", "rule": str,
                    "note": str}]},
      "settings": {"quick": bool, "device": str, "dtype": str, "device_map": dict|str|null,
                   "random_weights": bool, "seed": int, "threads": int, "applied": [...], ...},
      "model": {"name": str, "source": "embedded"|"local folder"|"hub"|"in memory",
                "kind": "causal-lm"|"encoder", "fingerprint": str, "structure": {...}},
      "sections": [
        {"id": str, "title": str, "status": "ok"|"skipped"|"failed",
         "metrics": [{"name": str, "value": number|null, "unit": str,
                      "reference": number|[low, high]|str|null, "source": str|null,
                      "layer": int|null, "note": str|null}],
         "figures": [{"id": str, "title": str, "x_label": str, "y_label": str,
                      "series": [{"name": str, "x": [number], "y": [number|null]}],
                      "reference": number|null, "reference_label": str|null,
                      "bands": [{"low": number, "high": number, "label": str, "source": str|null}]}],
         "notes": [str], "elapsed_s": float}
      ]
    }

``reference`` is the literature's value: a number, a ``[low, high]`` range, or a sentence when the
literature states only a direction ("decreases with depth"). ``source`` names it (an arXiv id).
Per-layer metrics repeat ``name`` with a ``layer``; summaries have ``layer: null``. A figure's
``reference`` is a horizontal line (``reference_label`` says what it is: "chance", a budget, ...);
``bands`` are literature ranges drawn behind the curves. No absolute path of the machine that ran
the audit appears anywhere (version 1 had ``model.path``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 2


@dataclass
class Metric:
    name: str
    value: float | int | None
    unit: str = ""
    reference: float | list[float] | str | None = None
    source: str | None = None
    layer: int | None = None
    note: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.value, float) and not math.isfinite(self.value):
            self.value = None  # JSON has no NaN; a missing value is stated as null


@dataclass
class Series:
    name: str
    x: list[float]
    y: list[float | None]


@dataclass
class Band:
    """A range of values from the literature, drawn behind a figure's curves."""

    low: float
    high: float
    label: str = "literature"
    source: str | None = None


@dataclass
class Figure:
    id: str
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    reference: float | None = None
    reference_label: str | None = None  # what the reference line is; None: "reference"
    bands: list[Band] = field(default_factory=list)


@dataclass
class SectionResult:
    id: str
    title: str
    status: str = "ok"
    metrics: list[Metric] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def metric(self, name: str, layer: int | None = None) -> Metric:
        for m in self.metrics:
            if m.name == name and m.layer == layer:
                return m
        raise KeyError(f"no metric {name!r} at layer {layer} in section {self.id}")


def to_json(obj: Any) -> Any:
    """Dataclasses to plain JSON-ready structures, non-finite floats to null."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
