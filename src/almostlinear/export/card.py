"""A model card (``README.md``) for every export: what was exported, from what, at what strength.

The card is Markdown with a YAML front matter that model hubs read (``library_name``, ``tags``,
``base_model`` when it is a hub id). It records, per lever: the kind and method, the base model's
fingerprint, the data hash, where it acts, the strength with its unit, the measured side effects
when the lever or the caller recorded them, and the library version that fitted it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.paths import replace_files

# Units as the card spells them out (core.units holds the vocabulary)
UNIT_MEANING = {
    "residual": "multiples of the median residual-stream norm at the site",
    "diff": "multiples of the fitted mean difference (CAA's multiplier)",
    "typical": "multiples of the typical activation norm",
    "fraction": "fraction of the component removed",
    "raw": "the stored delta times this number",
    "none": "no strength",
}
# Diagnostics that measure what a lever cost (edits record these while they are solved)
SIDE_EFFECT_KEYS = ("kl", "kl_max", "delta_ce", "ce_base", "ce_intervened", "nll_before", "nll_after",
                    "top1_agreement", "n_tokens")


@dataclass(frozen=True)
class LeverEntry:
    """One lever as the card describes it."""

    kind: str
    method: str | None
    fingerprint: str | None
    data_hash: str | None
    where: str | None
    strength: float
    units: str | None
    library_version: str | None
    side_effects: dict = field(default_factory=dict)
    modules: tuple[str, ...] = ()

    @classmethod
    def of(cls, lever: Any, strength: float, *, units: str | None = None, modules: Sequence[str] = ()) -> LeverEntry:
        provenance = getattr(lever, "provenance", None)
        method = getattr(lever, "method", None) if isinstance(getattr(lever, "method", None), str) else None
        method = method or (provenance.method if provenance is not None else None)
        found = {}
        for source in (getattr(lever, "diagnostics", None), provenance.extra if provenance is not None else None):
            if isinstance(source, dict):
                found.update({k: source[k] for k in SIDE_EFFECT_KEYS if isinstance(source.get(k), (int, float))})
                nested = source.get("side_effects")
                if isinstance(nested, dict):
                    found.update({k: v for k, v in nested.items() if isinstance(v, (int, float))})
        return cls(kind=getattr(lever, "kind", type(lever).__name__), method=method,
                   fingerprint=provenance.model_fingerprint if provenance is not None else None,
                   data_hash=provenance.data_hash if provenance is not None else None,
                   where=str(provenance.where) if provenance is not None and provenance.where is not None else None,
                   strength=float(strength), units=units or (provenance.units if provenance is not None else None),
                   library_version=provenance.library_version if provenance is not None else None,
                   side_effects=found, modules=tuple(modules))


def _front_matter(library_name: str | None, base_name: str | None, tags: Sequence[str]) -> str:
    lines = ["---"]
    if library_name:
        lines.append(f"library_name: {library_name}")
    # a hub accepts base_model only as a hub id (owner/name), not a local path
    if base_name and base_name.count("/") == 1 and not os.path.exists(base_name):
        lines.append(f"base_model: {base_name}")
    lines.append("tags:")
    lines += [f"- {tag}" for tag in tags]
    lines.append("---")
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_card(*, target: str, entries: Sequence[LeverEntry], base_fingerprint: str | None,
                base_name: str | None = None, details: Sequence[str] = (), usage: str | None = None,
                side_effects: dict | None = None, library_name: str | None = None) -> str:
    from .. import __version__

    tags = ["almostlinear", *sorted({e.kind.split(".")[0] for e in entries})]
    kinds = ", ".join(dict.fromkeys(e.kind for e in entries))
    out = [_front_matter(library_name, base_name, tags), "", f"# {kinds} as a {target}", "",
           f"Exported by almostlinear {__version__}.", "", "## Base model", "",
           f"- fingerprint: `{base_fingerprint}`"]
    if base_name:
        out.append(f"- name or path: `{base_name}`")
    mismatched = sorted({e.fingerprint for e in entries if e.fingerprint and e.fingerprint != base_fingerprint})
    if mismatched:
        out.append(f"- note: fitted on model(s) {', '.join(mismatched)}, exported against this one")
    out += ["", "## Levers", ""]
    for i, e in enumerate(entries, 1):
        units = e.units or "raw"
        out += [f"### {i}. `{e.kind}`", "",
                f"- method: {e.method or 'not recorded'}",
                f"- fitted on model: `{e.fingerprint or 'not recorded'}`",
                f"- data hash: `{e.data_hash or 'not recorded'}`",
                f"- site: `{e.where or 'not recorded'}`",
                f"- strength: {_number(e.strength)} in units `{units}` ({UNIT_MEANING.get(units, units)})",
                f"- fitted with almostlinear {e.library_version or 'unknown'}"]
        if e.modules:
            shown = ", ".join(f"`{m}`" for m in e.modules[:8]) + (f" and {len(e.modules) - 8} more"
                                                                  if len(e.modules) > 8 else "")
            out.append(f"- modules: {shown}")
        if e.side_effects:
            out.append("- side effects recorded when fitted: "
                       + ", ".join(f"{k} {_number(v)}" for k, v in e.side_effects.items()))
        out.append("")
    out += ["## Measured side effects", ""]
    if side_effects:
        out.append(", ".join(f"{k}: {_number(v)}" for k, v in side_effects.items())
                   + " (KL and cross-entropy in nats per token on neutral text)")
    else:
        out.append("Not measured at export; `lever.side_effects(model, texts)` measures KL and ΔCE on neutral text.")
    out += ["", "## This export", ""] + [f"- {line}" for line in details]
    if usage:
        out += ["", "## Use", "", usage]
    header = {"target": target, "base_fingerprint": base_fingerprint, "library_version": __version__,
              "levers": [{"kind": e.kind, "where": e.where, "strength": e.strength, "units": e.units,
                          "data_hash": e.data_hash, "fingerprint": e.fingerprint} for e in entries]}
    out += ["", "<!-- almostlinear export record", json.dumps(header, sort_keys=True), "-->", ""]
    return "\n".join(out)


def write_card(path: str | os.PathLike, **fields: Any) -> Path:
    """Render the card and write it atomically to ``path``."""
    path = Path(path)
    text = render_card(**fields)
    replace_files(path.parent, {path.name: lambda tmp: Path(tmp).write_text(text, encoding="utf-8")})
    return path
