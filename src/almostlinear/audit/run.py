"""``run_audit``: load a model, run the registered sections over shared forward passes, write the report."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..core import progress as progress_lines
from ..core.errors import DeviceError
from ..core.paths import check_writable_folder
from ..core.models import DEFAULT_MODEL, LoadedModel, load
from ..core.section import AuditContext, Budget
from ..distributed.audit import audit_group, audit_rank, audit_world, is_worker, loading_in_turn, run_shared
from .plan import run_sections
from .registry import make_sections
from .report import render_html, terminal_summary, write_atomically
from ..core.report import SCHEMA_VERSION, Band, Figure, Metric, SectionResult, Series, to_json
from .scorecard import score
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
              random_weights: bool = False, apply: list | None = None) -> AuditReport:
    """Audit ``model`` and, when ``out`` is given, write ``report.json`` and ``report.html`` there.

    ``dtype``, ``device_map``, ``max_memory``, ``offload_folder`` and ``random_weights`` go to
    :func:`~almostlinear.core.models.load` (unused when ``model`` is already loaded); the report's
    settings record the dtype and placement the audit ran with.

    ``texts`` replaces a text source with the caller's own: ``{"neutral": [str, ...]}`` for the
    linearity and lens sections, ``{"cities": [Statement, ...]}`` for the truth probes.

    ``apply`` lists levers (artifact files or loaded artifacts: edits, steering vectors, task
    vectors, erasers, ...) that are applied, in order, while the audit runs: the report then
    describes the model with those interventions. The model is restored bit for bit afterwards.

    Nothing is written unless every step up to rendering succeeded; a section that fails is
    reported as failed while the others complete.
    """
    began = time.perf_counter()
    chosen = make_sections(sections)
    group = audit_group()  # under torchrun: this process is one rank of several; rank 0 writes
    if out is not None and not is_worker(group):
        check_writable_folder(out)  # before any work: an unwritable folder must not cost the results
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but torch sees no CUDA device on this machine; "
                          "use --device cpu")
    levers = [_lever(item) for item in apply or ()]  # read before the model: a bad file costs nothing
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        progress(f"loading {model}")
        with loading_in_turn(group), progress_lines.stage(f"loading {model}"):
            loaded = load(model, device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
                          offload_folder=offload_folder, random_weights=random_weights, progress=progress)
    budget = budget or (Budget.quick() if quick else Budget.full())
    progress(f"auditing {loaded.name}: {len(chosen)} section(s), {'quick' if budget.quick_mode else 'full'} budget"
             + (f", {len(levers)} lever(s) applied" if levers else ""))
    ctx = AuditContext(loaded, budget, seed=seed, progress=progress, sources=dict(texts or {}),
                       source_builder=build_source)
    # The audit's own heartbeat: it speaks only when no counter inside has spoken for a while.
    with contextlib.ExitStack() as applied, progress_lines.stage(f"auditing {loaded.name}"):
        for label, lever in levers:
            progress(f"applying {label} for the audit")
            applied.enter_context(lever.apply(loaded))
        results = run_shared(group, lambda: run_sections(ctx, chosen, progress_bar=progress_bar),
                             loaded.model, loaded.tokenizer, loaded.structure)
    if results is None:  # a rank other than 0: it ran its share of the forward passes; rank 0 reports
        return AuditReport({"rank": audit_rank(group)}, [])
    report = {
        "schema_version": SCHEMA_VERSION,
        "scorecard": score(results),  # the verdict first, as in the page and the terminal summary
        "tool": {"name": "almostlinear", "version": __version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": time.perf_counter() - began,
        "settings": {"quick": quick, "own_texts": sorted(texts or {}), "device": device, "seed": seed,
                     "threads": torch.get_num_threads(), "dtype": loaded.dtype, "device_map": loaded.device_map,
                     "random_weights": loaded.random_weights, "budget": to_json(budget),
                     "sections": [s.id for s in chosen], "applied": [_describe(label, lever) for label, lever in levers],
                     **({"processes": audit_world(group)} if group is not None else {})},
        "model": {"name": loaded.name, "source": model_source(loaded), "kind": loaded.kind,
                  "fingerprint": loaded.fingerprint, "structure": loaded.structure.summary()},
        "sections": to_json(results),
    }
    report = without_machine_paths(report)
    results = [_section_from_json(section) for section in report["sections"]]
    result = AuditReport(report, results)
    if out is not None:
        write_atomically(Path(out), {
            "report.json": json.dumps(report, indent=1, ensure_ascii=False),
            "report.html": render_html(report, results),
        })
    return result


def _lever(item) -> tuple[str, object]:
    """``(label, artifact)`` for a lever file or a loaded lever; anything else is a clear error."""
    from ..core.artifact import load as load_artifact
    from ..core.errors import LeverError
    from ..core.lever import Lever

    artifact = load_artifact(item) if isinstance(item, (str, Path)) else item
    label = Path(item).name if isinstance(item, (str, Path)) else type(item).__name__
    if not isinstance(artifact, Lever):
        kind = getattr(artifact, "kind", type(artifact).__name__)
        raise LeverError(f"{label} holds a {kind!r}, which does not act on a model; --apply takes edits, "
                         "steering vectors, task vectors, erasers and other levers")
    return label, artifact


def _describe(label: str, lever) -> dict:
    provenance = getattr(lever, "provenance", None)
    return {"file": label, "kind": getattr(lever, "kind", type(lever).__name__),
            "fitted_on": getattr(provenance, "model_fingerprint", None)}


def _section_from_json(data: dict) -> SectionResult:
    """A section result back from its (path-free) JSON form."""
    figures = [Figure(**{**f, "series": [Series(**s) for s in f["series"]], "bands": [Band(**b) for b in f["bands"]]})
               for f in data["figures"]]
    return SectionResult(data["id"], data["title"], data["status"], [Metric(**m) for m in data["metrics"]],
                         figures, list(data["notes"]), data["elapsed_s"])


def model_source(loaded: LoadedModel) -> str:
    """Where the model came from, as a kind, never as a path: embedded, local folder, hub or in memory."""
    from ..core.models import EMBEDDED

    if loaded.name in EMBEDDED:
        return "embedded"
    if not os.path.isabs(str(loaded.path)):
        return "in memory"
    if "/" in loaded.name and not os.path.exists(loaded.name):
        return "hub"
    return "local folder"


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~<>-])/(?:[\w.+@-]+/)+[\w.+@-]*")


def without_machine_paths(data):
    """``data`` with every absolute path shortened to its last two parts, so a shared report names no
    home folder, cache or checkout (tracebacks in failed sections name files too)."""
    if isinstance(data, dict):
        return {key: without_machine_paths(value) for key, value in data.items()}
    if isinstance(data, list):
        return [without_machine_paths(value) for value in data]
    if isinstance(data, str) and "/" in data:
        return _ABSOLUTE_PATH.sub(lambda m: "…/" + "/".join(m.group(0).rstrip("/").split("/")[-2:]), data)
    return data
