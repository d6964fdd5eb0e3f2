"""``run_audit``: load a model, run the registered sections over shared forward passes, write the report."""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..core.errors import DeviceError
from ..core.paths import check_writable_folder
from ..core.models import DEFAULT_MODEL, LoadedModel, load
from ..core.section import AuditContext, Budget
from .plan import run_sections
from .registry import make_sections
from .report import render_html, terminal_summary, write_atomically
from ..core.report import SCHEMA_VERSION, SectionResult, to_json
from .sources import build_source


@dataclass
class AuditReport:
    report: dict
    sections: list[SectionResult]

    def section(self, section_id: str) -> SectionResult:
        for s in self.sections:
            if s.id == section_id:
                return s
        raise KeyError(f"no section {section_id!r}; sections: {[s.id for s in self.sections]}")

    def summary(self) -> str:
        return terminal_summary(self.report, self.sections)


def run_audit(model: str | LoadedModel = DEFAULT_MODEL, *, out: str | Path | None = None, quick: bool = False,
              device: str = "cpu", sections: list[str] | None = None, seed: int = 0,
              budget: Budget | None = None, texts: dict[str, list] | None = None, progress=print,
              progress_bar=None, dtype: str | torch.dtype = "float32", device_map: str | dict | None = None,
              max_memory: dict | None = None, offload_folder: str | Path | None = None,
              random_weights: bool = False) -> AuditReport:
    """Audit ``model`` and, when ``out`` is given, write ``report.json`` and ``report.html`` there.

    ``dtype``, ``device_map``, ``max_memory``, ``offload_folder`` and ``random_weights`` go to
    :func:`~almostlinear.core.models.load` (unused when ``model`` is already loaded); the report's
    settings record the dtype and placement the audit ran with.

    ``texts`` replaces a text source with the caller's own: ``{"neutral": [str, ...]}`` for the
    linearity and lens sections, ``{"cities": [Statement, ...]}`` for the truth probes.

    Nothing is written unless every step up to rendering succeeded; a section that fails is
    reported as failed while the others complete.
    """
    began = time.perf_counter()
    chosen = make_sections(sections)
    if out is not None:
        check_writable_folder(out)  # before any work: an unwritable folder must not cost the results
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but torch sees no CUDA device on this machine; "
                          "use --device cpu")
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        loaded = load(model, device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
                      offload_folder=offload_folder, random_weights=random_weights, progress=progress)
    budget = budget or (Budget.quick() if quick else Budget.full())
    ctx = AuditContext(loaded, budget, seed=seed, progress=progress, sources=dict(texts or {}),
                       source_builder=build_source)
    results = run_sections(ctx, chosen, progress_bar=progress_bar)
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "almostlinear", "version": __version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": time.perf_counter() - began,
        "settings": {"quick": quick, "own_texts": sorted(texts or {}), "device": device, "seed": seed, "threads": torch.get_num_threads(),
                     "dtype": loaded.dtype, "device_map": loaded.device_map, "random_weights": loaded.random_weights,
                     "budget": to_json(budget), "sections": [s.id for s in chosen]},
        "model": {"name": loaded.name, "path": loaded.path, "kind": loaded.kind,
                  "fingerprint": loaded.fingerprint, "structure": loaded.structure.summary()},
        "sections": to_json(results),
    }
    result = AuditReport(report, results)
    if out is not None:
        write_atomically(Path(out), {
            "report.json": json.dumps(report, indent=1, ensure_ascii=False),
            "report.html": render_html(report, results),
        })
    return result
