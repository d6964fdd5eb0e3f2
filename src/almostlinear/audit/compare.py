"""Two audits side by side: ``almostlinear compare A/report.json B/report.json``.

Two models, or one model before and after an intervention (a merge, a fine-tune, an edit, levers
applied with ``audit --apply``): the scorecard's verdicts and values for both, every summary metric
with its change, each section's status and time, and every per-layer figure with both audits'
curves overlaid (A solid, B dashed, one colour per curve). Writes ``compare.json`` and a
self-contained ``compare.html``.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ReportFileError
from ..core.progress import duration
from ..core.report import Figure, Series
from .plots import svg_plot
from .report import STYLE, VERDICT_MARK, _verdict, format_value, write_atomically
from .scorecard import score

COMPARISON_VERSION = 1


def read_report(path: str | Path) -> dict:
    """An audit's ``report.json`` (schema 1 or 2); a clear error for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ReportFileError(f"{path} is not UTF-8 text (byte {error.start}); give an audit's report.json") from None
    except json.JSONDecodeError as error:
        raise ReportFileError(f"{path} is not JSON ({error.msg} at line {error.lineno}); "
                              "give an audit's report.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("sections"), list) or "model" not in data:
        raise ReportFileError(f"{path} is JSON but not an almostlinear audit report (no 'model' and 'sections')")
    version = data.get("schema_version")
    if version not in (1, 2):
        raise ReportFileError(f"{path} has report schema version {version!r}; this almostlinear reads 1 and 2")
    if "scorecard" not in data:  # version 1: score it now, from its sections
        from .run import _section_from_json

        data["scorecard"] = score([_section_from_json(_upgrade_section(s)) for s in data["sections"]])
    return data


def _upgrade_section(section: dict) -> dict:
    figures = [{"reference_label": None, "bands": [], **f} for f in section.get("figures", [])]
    return {**section, "figures": figures, "elapsed_s": section.get("elapsed_s", 0.0)}


def _labels(a: dict, b: dict, path_a: Path, path_b: Path) -> tuple[str, str]:
    name_a, name_b = a["model"]["name"], b["model"]["name"]
    if name_a != name_b:
        return name_a, name_b
    # One model twice: the folders tell the runs apart (their names only, never the full paths).
    folder_a, folder_b = path_a.resolve().parent.name, path_b.resolve().parent.name
    if folder_a != folder_b:
        return f"{name_a} ({folder_a})", f"{name_b} ({folder_b})"
    return f"{name_a} (A)", f"{name_b} (B)"


def _summary_metrics(section: dict) -> dict[str, dict]:
    return {m["name"]: m for m in section.get("metrics", []) if m.get("layer") is None}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _metric_rows(sa: dict | None, sb: dict | None) -> list[dict]:
    ma, mb = _summary_metrics(sa or {}), _summary_metrics(sb or {})
    rows = []
    for name in list(dict.fromkeys([*ma, *mb])):
        a, b = ma.get(name, {}), mb.get(name, {})
        va, vb = _number(a.get("value")), _number(b.get("value"))
        delta = vb - va if va is not None and vb is not None else None
        rows.append({"name": name, "unit": a.get("unit") or b.get("unit") or "", "a": a.get("value"),
                     "b": b.get("value"), "delta": delta,
                     "relative": delta / abs(va) if delta is not None and va else None})
    return rows


def _overlay(fa: dict, fb: dict, label_a: str, label_b: str) -> tuple[Figure, frozenset[int], list[int], list[int]]:
    """One figure with A's series (solid) and B's (dashed), the same colour per series name."""
    names = list(dict.fromkeys([s["name"] for s in fa["series"]] + [s["name"] for s in fb["series"]]))
    series, dashed, colours, markers = [], set(), [], []
    for which, (figure, label) in enumerate(((fa, label_a), (fb, label_b))):
        for s in figure["series"]:
            if which:
                dashed.add(len(series))
            series.append(Series(f"{label}: {s['name']}", s["x"], s["y"]))
            colours.append(names.index(s["name"]))
            markers.append(which * 2 + names.index(s["name"]) % 2)
    from ..core.report import Band

    figure = Figure(fa["id"], fa["title"], fa["x_label"], fa["y_label"], series, reference=fa.get("reference"),
                    reference_label=fa.get("reference_label"), bands=[Band(**b) for b in fa.get("bands", [])])
    return figure, frozenset(dashed), colours, markers


@dataclass
class Comparison:
    data: dict
    figures: dict[str, list[tuple[Figure, frozenset[int], list[int], list[int]]]]

    def summary(self, limit: int = 12) -> str:
        d = self.data
        lines = [f"almostlinear comparison: A = {d['a']['label']}, B = {d['b']['label']}", "", "== Scorecard (A → B)"]
        for row in d["scorecard"]:
            mark = "  *" if row["changed"] else "   "
            lines.append(f"{mark} {row['claim'][:50]:50}  {row['a']['verdict']:>10} → {row['b']['verdict']:<10}  "
                         f"{_value(row['a']['value'])} → {_value(row['b']['value'])}")
        changed = [r for r in d["scorecard"] if r["changed"]]
        compared = sum(r["compared"] for r in d["scorecard"])
        lines.append(f"  {len(changed)} of {compared} compared verdicts changed (marked *); "
                     f"{len(d['scorecard']) - compared} claims were tested by only one audit's sections")
        moved = sorted((m for s in d["sections"] for m in s["metrics"] if m["relative"]),
                       key=lambda m: -abs(m["relative"]))[:limit]
        lines += ["", f"== The {len(moved)} metrics that changed most (relative to A)" if moved
                  else "== No summary metric changed"]
        if moved:
            for m in moved:
                lines.append(f"  {m['name'][:48]:48} {_value(m['a'])} → {_value(m['b'])} ({m['relative']:+.1%})")
        return "\n".join(lines)


def _value(value) -> str:
    return "—" if value is None else format_value(value)


def _side(row: dict | None) -> dict:
    if row is None:
        return {"value": None, "unit": "", "verdict": "not tested"}
    return {"value": row["value"], "unit": row["unit"], "verdict": row["verdict"]}


def _about(report: dict, label: str) -> dict:
    return {"label": label, "name": report["model"]["name"], "fingerprint": report["model"]["fingerprint"],
            "created": report.get("created"), "applied": report.get("settings", {}).get("applied", [])}


def compare_reports(path_a: str | Path, path_b: str | Path, out: str | Path | None = None) -> Comparison:
    """Compare two audit reports; with ``out``, write ``compare.json`` and ``compare.html`` there."""
    path_a, path_b = Path(path_a), Path(path_b)
    a, b = read_report(path_a), read_report(path_b)
    label_a, label_b = _labels(a, b, path_a, path_b)
    sections_a = {s["id"]: s for s in a["sections"]}
    sections_b = {s["id"]: s for s in b["sections"]}
    ran_a, ran_b = set(sections_a), set(sections_b)
    card_a = {r["id"]: r for r in a["scorecard"]["rows"]}
    card_b = {r["id"]: r for r in b["scorecard"]["rows"]}
    scorecard = []
    for claim_id in dict.fromkeys([*card_a, *card_b]):
        ra, rb = card_a.get(claim_id), card_b.get(claim_id)
        base = ra or rb
        row = {"id": claim_id, "claim": base["claim"], "section": base["section"], "metric": base["metric"],
               "a": _side(ra), "b": _side(rb)}
        # A section that only one audit ran is not a change of the model: such rows are not compared.
        row["compared"] = base["section"] in ran_a and base["section"] in ran_b
        row["changed"] = row["compared"] and row["a"]["verdict"] != row["b"]["verdict"]
        scorecard.append(row)
    sections, figures = [], {}
    for section_id in dict.fromkeys([*sections_a, *sections_b]):
        sa, sb = sections_a.get(section_id), sections_b.get(section_id)
        base = sa or sb
        sections.append({
            "id": section_id, "title": base["title"],
            "status": [sa["status"] if sa else "absent", sb["status"] if sb else "absent"],
            "elapsed_s": [sa.get("elapsed_s") if sa else None, sb.get("elapsed_s") if sb else None],
            "metrics": _metric_rows(sa, sb),
        })
        fb = {f["id"]: f for f in (sb or {}).get("figures", [])}
        figures[section_id] = [_overlay(f, fb[f["id"]], label_a, label_b)
                               for f in (sa or {}).get("figures", []) if f["id"] in fb]
    data = {"comparison_version": COMPARISON_VERSION, "a": _about(a, label_a), "b": _about(b, label_b),
            "same_model": a["model"]["fingerprint"] == b["model"]["fingerprint"],
            "scorecard": scorecard, "sections": sections}
    data = json.loads(json.dumps(data, allow_nan=False, default=str))
    comparison = Comparison(data, figures)
    if out is not None:
        write_atomically(Path(out), {"compare.json": json.dumps(data, indent=1, ensure_ascii=False),
                                     "compare.html": render_comparison(comparison)})
    return comparison


def _delta_cell(row: dict) -> str:
    if row["delta"] is None:
        return "<td class='num'>—</td>"
    relative = f" ({row['relative']:+.0%})" if row["relative"] is not None and math.isfinite(row["relative"]) else ""
    return f"<td class='num'>{row['delta']:+.4g}{relative}</td>"


def render_comparison(comparison: Comparison) -> str:
    d = comparison.data
    la, lb = html.escape(d["a"]["label"]), html.escape(d["b"]["label"])
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
           "<meta name='viewport' content='width=device-width, initial-scale=1'>",
           f"<title>almostlinear comparison: {la} vs {lb}</title><style>{STYLE}</style></head><body>",
           f"<h1>{la} <span class='meta'>vs</span> {lb}</h1>"]
    for key, label in (("a", "A"), ("b", "B")):
        side = d[key]
        applied = ", ".join(x["file"] for x in side["applied"]) or "none"
        out.append(f"<p class='meta'>{label}: {html.escape(side['label'])}, fingerprint "
                   f"<code>{html.escape(side['fingerprint'])}</code>, {html.escape(str(side['created']))}; "
                   f"levers applied: {html.escape(applied)}</p>")
    if d["same_model"]:
        out.append("<p class='meta'>Both audits read the same weights (same fingerprint).</p>")
    out.append("<section id='scorecard'><h2 style='border:0;margin-top:1em'>Scorecard changes</h2>"
               f"<table class='scorecard'><tr><th>claim</th><th>{la}</th><th>{lb}</th><th>verdict A</th>"
               "<th>verdict B</th></tr>")
    for row in d["scorecard"]:
        flag = " style='background:#fff8e1'" if row["changed"] else ""
        out.append(f"<tr data-claim='{html.escape(row['id'])}'{flag}><td><a href='#{html.escape(row['section'])}'>"
                   f"{html.escape(row['claim'])}</a><div class='rule'>{html.escape(row['metric'])}</div></td>"
                   f"<td class='num'>{_value(row['a']['value'])}</td><td class='num'>{_value(row['b']['value'])}</td>"
                   f"<td>{_verdict(row['a']['verdict'])}</td><td>{_verdict(row['b']['verdict'])}</td></tr>")
    changed = sum(r["changed"] for r in d["scorecard"])
    compared = sum(r["compared"] for r in d["scorecard"])
    out.append(f"</table><p class='rule'>{changed} of {compared} compared verdicts differ (highlighted); "
               f"{len(d['scorecard']) - compared} rows belong to sections only one audit ran. "
               f"Marks: {', '.join(f'{m} {v}' for v, m in VERDICT_MARK.items())}.</p></section>")
    out.append("<nav class='toc' id='contents'><h2 style='border:0;margin-top:1em'>Contents</h2><ol>")
    for s in d["sections"]:
        out.append(f"<li><a href='#{html.escape(s['id'])}'>{html.escape(s['title'])}</a> "
                   f"<span class='time'>{html.escape(' / '.join(s['status']))}</span></li>")
    out.append("</ol></nav>")
    for s in d["sections"]:
        times = " / ".join(duration(t) if t is not None else "—" for t in s["elapsed_s"])
        out.append(f"<section><h2 id='{html.escape(s['id'])}'>{html.escape(s['title'])} "
                   f"<small class='meta'>[{html.escape(' / '.join(s['status']))}] {times}</small></h2>")
        if s["metrics"]:
            out.append(f"<table><tr><th>metric</th><th>unit</th><th>{la}</th><th>{lb}</th><th>change</th></tr>")
            for m in s["metrics"]:
                out.append(f"<tr><td>{html.escape(m['name'])}</td><td>{html.escape(m['unit'])}</td>"
                           f"<td class='num'>{_value(m['a'])}</td><td class='num'>{_value(m['b'])}</td>"
                           f"{_delta_cell(m)}</tr>")
            out.append("</table>")
        for figure, dashed, colours, markers in comparison.figures.get(s["id"], []):
            out.append(f"<figure id='fig-{html.escape(s['id'])}-{html.escape(figure.id)}'>"
                       f"{svg_plot(figure, dashed=dashed, colours=colours, markers=markers)}</figure>")
        out.append("</section>")
    out.append("<p class='meta small'><a href='#scorecard'>back to the scorecard</a></p></body></html>")
    return "\n".join(out)
