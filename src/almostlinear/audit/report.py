"""Render an audit: ``report.json``, a self-contained ``report.html`` with inline SVG plots, and a
terminal summary; each opens with the scorecard (:mod:`.scorecard`). Files are written to temporary names and renamed, so a failure never leaves a
half-written report in place of a good one."""

from __future__ import annotations

import html
import os
from pathlib import Path

from ..core.paths import replace_files
from ..core.progress import duration
from ..core.report import Figure, Metric, SectionResult
from .plots import svg_plot


def format_value(value, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if unit in ("count", "tokens", "layer"):
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return str(value)


def format_reference(reference) -> str:
    if reference is None:
        return ""
    if isinstance(reference, list):
        return f"{format_value(reference[0])}–{format_value(reference[1])}"
    return format_value(reference)


def summary_metrics(section: SectionResult) -> list[Metric]:
    """The metrics without a layer: what a reader wants first."""
    return [m for m in section.metrics if m.layer is None]


VERDICT_MARK = {"holds": "✓", "partly": "◐", "fails": "✗", "not tested": "–"}


def _scorecard_value(row: dict) -> str:
    if row["value"] is None:
        return "—"
    return f"{format_value(row['value'], row['unit'])} {row['unit']}".strip()


def terminal_summary(report: dict, sections: list[SectionResult], width: int = 110) -> str:
    lines = [f"almostlinear audit of {report['model']['name']} ({report['model']['fingerprint']})", ""]
    card = report.get("scorecard")
    if card:
        lines.append("== Scorecard")
        rows = [(f"{VERDICT_MARK[r['verdict']]} {r['verdict']}", r["claim"], _scorecard_value(r),
                 f"{r['literature']} ({r['source']})" if r["source"] else r["literature"]) for r in card["rows"]]
        header = ("verdict", "claim", "this model", "literature")
        widths = [min(max(len(str(r[i])) for r in [header, *rows]), cap) for i, cap in enumerate((14, 54, 22, 60))]
        for row in [header, *rows]:
            lines.append("  " + "  ".join(str(c)[: widths[i]].ljust(widths[i]) for i, c in enumerate(row)).rstrip())
        lines.append("  · " + _wrap("rule: " + card["rule"], width - 4, "    "))
        lines.append("")
    for section in sections:
        lines.append(f"== {section.title} [{section.status}, {duration(section.elapsed_s)}]")
        rows = [(m.name, format_value(m.value, m.unit), m.unit, format_reference(m.reference), m.source or "")
                for m in summary_metrics(section)]
        if rows:
            header = ("metric", "value", "unit", "literature", "source")
            widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(5)]
            widths[3] = min(widths[3], 40)
            for row in [header, *rows]:
                cells = [str(c)[: widths[i]].ljust(widths[i]) for i, c in enumerate(row)]
                lines.append("  " + "  ".join(cells).rstrip())
        # Long or multi-line notes (matrices, tracebacks) belong in the HTML report, not the terminal.
        readable = [n for n in section.notes if "\n" not in n and len(n) <= 600]
        for note in readable[-2:] if section.status == "ok" else section.notes[:1]:
            lines.append("  · " + _wrap(note.splitlines()[0], width - 4, "    "))
        lines.append("")
    return "\n".join(lines)


def _wrap(text: str, width: int, indent: str) -> str:
    words, lines, current = text.split(), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    lines.append(current)
    return ("\n" + indent).join(lines)


STYLE = """
:root{--ink:#1d1d1f;--muted:#5f6368;--line:#e2e2e2;--head:#f5f6f7}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1120px;margin:2em auto;padding:0 1.2em;
color:var(--ink);line-height:1.45}
h1{margin-bottom:.2em}h2{margin-top:2.2em;padding-top:.4em;border-top:2px solid var(--line)}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.94em}
td,th{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:var(--muted)}.note{color:#3c4043;margin:.25em 0}.rule{color:var(--muted);font-size:.88em}
.status-ok{color:#00734d}.status-failed{color:#b3261e;font-weight:600}.status-skipped{color:var(--muted)}
.verdict{display:inline-block;min-width:6.5em;padding:1px 8px;border-radius:10px;font-weight:600;font-size:.9em}
.verdict-holds{background:#d7f0e5;color:#00573a}.verdict-partly{background:#fbeacc;color:#7a4b00}
.verdict-fails{background:#f8d9d6;color:#8c1d18}.verdict-not-tested{background:#eceff1;color:#5f6368}
nav.toc ol{columns:2;column-gap:2.5em;padding-left:1.4em}nav.toc li{margin:.1em 0;break-inside:avoid}
nav.toc .time{color:var(--muted);font-size:.88em}
details{margin:.4em 0 1em}summary{cursor:pointer;color:#1a57a6}code{background:var(--head);padding:1px 4px}
figure{margin:1em 0}svg.plot{max-width:100%;height:auto;display:block}svg .point{cursor:crosshair}
.small{font-size:.86em}
"""


def _verdict(verdict: str) -> str:
    slug = verdict.replace(" ", "-")
    return f"<span class='verdict verdict-{slug}'>{VERDICT_MARK[verdict]} {html.escape(verdict)}</span>"


def _scorecard_html(card: dict) -> list[str]:
    out = ["<section id='scorecard'><h2 style='border:0;margin-top:1em'>Scorecard</h2>",
           "<table class='scorecard'><tr><th>claim</th><th>this model</th><th>literature</th><th>source</th>"
           "<th>verdict</th><th>rule</th></tr>"]
    for row in card["rows"]:
        note = f"<div class='rule'>{html.escape(row['note'])}</div>" if row["note"] else ""
        out.append(f"<tr data-claim='{html.escape(row['id'])}' data-verdict='{html.escape(row['verdict'])}'>"
                   f"<td><a href='#{html.escape(row['section'])}'>{html.escape(row['claim'])}</a>{note}</td>"
                   f"<td class='num'>{html.escape(_scorecard_value(row))}"
                   f"<div class='rule'>{html.escape(row['metric'])}</div></td>"
                   f"<td>{html.escape(row['literature'])}</td><td>{html.escape(row['source'])}</td>"
                   f"<td>{_verdict(row['verdict'])}</td><td class='rule'>{html.escape(row['rule'])}</td></tr>")
    out.append("</table>")
    out.append(f"<p class='rule'><b>How the verdicts are made.</b> {html.escape(card['rule'])}</p></section>")
    return out


def _flatten(settings: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in settings.items():
        name = f"{prefix}{key}".replace("_", " ")
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rows += [(f"{name} {i + 1}", ", ".join(f"{k}: {v}" for k, v in item.items())) for i, item in enumerate(value)]
        elif isinstance(value, list):
            rows.append((name, ", ".join(map(str, value)) or "none"))
        else:
            rows.append((name, "—" if value is None else str(value)))
    return rows


def _settings_html(report: dict) -> list[str]:
    model = report["model"]
    rows = [("model", model["name"]), ("source", model.get("source", "")), ("kind", model["kind"]),
            ("fingerprint", model["fingerprint"])] + _flatten(report["settings"])
    out = ["<details id='settings'><summary>Settings and model</summary><table>"]
    out += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows]
    out.append("</table></details>")
    return out


def _toc_html(sections: list[SectionResult]) -> list[str]:
    out = ["<nav class='toc' id='contents'><h2 style='border:0;margin-top:1em'>Contents</h2><ol>"]
    for s in sections:
        out.append(f"<li><a href='#{html.escape(s.id)}'>{html.escape(s.title)}</a> "
                   f"<span class='status-{s.status}'>{s.status}</span> "
                   f"<span class='time'>{duration(s.elapsed_s)}</span></li>")
    out.append("</ol></nav>")
    return out


def per_layer_table(metrics: list[Metric]) -> list[str]:
    """Per-layer metrics as one table: a row per layer, a column per metric."""
    names = list(dict.fromkeys(m.name for m in metrics))
    layers = sorted({m.layer for m in metrics})
    cell = {(m.name, m.layer): format_value(m.value, m.unit) for m in metrics}
    units = {m.name: m.unit for m in metrics}
    out = [f"<details><summary>per-layer values ({len(names)} metrics × {len(layers)} layers)</summary>"
           "<div style='overflow-x:auto'><table class='small'><tr><th>layer</th>"]
    out += [f"<th>{html.escape(n)}<br><span class='rule'>{html.escape(units[n])}</span></th>" for n in names]
    out.append("</tr>")
    for layer in layers:
        out.append(f"<tr><td class='num'>{layer}</td>"
                   + "".join(f"<td class='num'>{cell.get((n, layer), '')}</td>" for n in names) + "</tr>")
    out.append("</table></div></details>")
    return out


def _reference_label(section: SectionResult, figure: Figure) -> Figure:
    """Name an unnamed reference line: "chance" when the section reports a chance level of that value,
    else the literature with its source when a metric gives that value as its reference."""
    import dataclasses

    if figure.reference is None or figure.reference_label:
        return figure
    same = lambda value: isinstance(value, (int, float)) and abs(value - figure.reference) < 1e-9  # noqa: E731
    for m in section.metrics:
        if "chance" in m.name and same(m.value):
            return dataclasses.replace(figure, reference_label="chance")
    for m in section.metrics:
        if m.source and not isinstance(m.reference, bool) and same(m.reference):
            return dataclasses.replace(figure, reference_label=f"literature, {m.source}")
    return figure


def _section_html(section: SectionResult) -> list[str]:
    out = [f"<section><h2 id='{html.escape(section.id)}'>{html.escape(section.title)} "
           f"<small class='status-{section.status}'>[{section.status}]</small> "
           f"<small class='meta'>{duration(section.elapsed_s)}</small></h2>"]
    rows = summary_metrics(section)
    if rows:
        out.append("<table><tr><th>metric</th><th>value</th><th>unit</th><th>literature</th>"
                   "<th>source</th><th>note</th></tr>")
        for m in rows:
            out.append(f"<tr><td>{html.escape(m.name)}</td><td class='num'>{format_value(m.value, m.unit)}</td>"
                       f"<td>{html.escape(m.unit)}</td><td>{html.escape(format_reference(m.reference))}</td>"
                       f"<td>{html.escape(m.source or '')}</td><td class='small'>{html.escape(m.note or '')}</td></tr>")
        out.append("</table>")
    for figure in section.figures:
        out.append(f"<figure id='fig-{html.escape(section.id)}-{html.escape(figure.id)}'>"
                   f"{svg_plot(_reference_label(section, figure))}</figure>")
    for note in section.notes:
        if "\n" in note:
            out.append(f"<details><summary>details</summary><pre>{html.escape(note)}</pre></details>")
        else:
            out.append(f"<p class='note'>{html.escape(note)}</p>")
    per_layer = [m for m in section.metrics if m.layer is not None]
    if per_layer:
        out += per_layer_table(per_layer)
    out.append("</section>")
    return out


def render_html(report: dict, sections: list[SectionResult]) -> str:
    model = report["model"]
    applied = report["settings"].get("applied") or []
    with_levers = (f" with {len(applied)} lever(s) applied ({', '.join(a['file'] for a in applied)})"
                   if applied else "")
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
           "<meta name='viewport' content='width=device-width, initial-scale=1'>",
           f"<title>almostlinear audit: {html.escape(model['name'])}</title><style>{STYLE}</style></head><body>",
           f"<h1>How linear is {html.escape(model['name'])}?</h1>",
           f"<p class='meta'>{html.escape(model['kind'])} model ({html.escape(model.get('source', ''))}), "
           f"fingerprint <code>{html.escape(model['fingerprint'])}</code>{html.escape(with_levers)}; "
           f"almostlinear {html.escape(report['tool']['version'])}; {html.escape(report['created'])}; "
           f"{duration(report['elapsed_s'])} in all.</p>"]
    if report.get("scorecard"):
        out += _scorecard_html(report["scorecard"])
    out += _toc_html(sections)
    out += _settings_html(report)
    for section in sections:
        out += _section_html(section)
    out.append("<p class='meta small'><a href='#scorecard'>back to the scorecard</a></p></body></html>")
    return "\n".join(out)


def write_atomically(folder: Path, files: dict[str, str]) -> None:
    """Write every text file to a temporary name and flush it to disk; rename them together once all
    were written (:func:`~almostlinear.core.paths.replace_files`: under a lock on the folder, so two
    audits writing to one folder leave the files of one run side by side, with the umask's permissions).
    """
    def writer(text: str):
        def write(path: str) -> None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        return write

    replace_files(folder, {name: writer(text) for name, text in files.items()})
