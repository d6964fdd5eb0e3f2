"""Render an audit: ``report.json``, a self-contained ``report.html`` with inline SVG plots, and a
terminal summary. Files are written to temporary names and renamed, so a failure never leaves a
half-written report in place of a good one."""

from __future__ import annotations

import html
import json
import os
import tempfile
from pathlib import Path

from ..core.paths import follow_umask
from ..core.report import Figure, Metric, SectionResult

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


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


def terminal_summary(report: dict, sections: list[SectionResult], width: int = 110) -> str:
    lines = [f"almostlinear audit of {report['model']['name']} ({report['model']['fingerprint']})", ""]
    for section in sections:
        lines.append(f"== {section.title} [{section.status}]")
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


def svg_plot(figure: Figure, width: int = 640, height: int = 300) -> str:
    """A line plot as inline SVG: no plotting library needed to read the report."""
    left, right, top, bottom = 56, 170, 28, 40
    points = [(x, y) for s in figure.series for x, y in zip(s.x, s.y) if y is not None]
    if not points:
        return "<p>(no data)</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if figure.reference is not None:
        ys.append(figure.reference)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1
    sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    sy = lambda y: top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{html.escape(figure.title)}" font-family="sans-serif" font-size="11">',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(figure.title)}</text>',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="none" stroke="#999"/>']
    for i in range(5):
        value = y0 + (y1 - y0) * i / 4
        y = sy(value)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    for i in range(6):
        value = x0 + (x1 - x0) * i / 5
        parts.append(f'<text x="{sx(value):.1f}" y="{height - bottom + 14}" text-anchor="middle">{value:.0f}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">'
                 f'{html.escape(figure.x_label)}</text>')
    parts.append(f'<text x="12" y="{(top + height - bottom) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(top + height - bottom) / 2})">{html.escape(figure.y_label)}</text>')
    if figure.reference is not None:
        y = sy(figure.reference)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#444" '
                     'stroke-dasharray="5,4"/>')
    legend_y = top + 10
    for i, series in enumerate(figure.series):
        colour = PALETTE[i % len(PALETTE)]
        coords = [f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(series.x, series.y) if y is not None]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(coords)}"/>')
        parts += [f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="2.2" fill="{colour}"/>' for c in coords]
        parts.append(f'<line x1="{width - right + 10}" x2="{width - right + 28}" y1="{legend_y}" y2="{legend_y}" '
                     f'stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{width - right + 32}" y="{legend_y + 4}">{html.escape(series.name)}</text>')
        legend_y += 16
    if figure.reference is not None:
        parts.append(f'<line x1="{width - right + 10}" x2="{width - right + 28}" y1="{legend_y}" y2="{legend_y}" '
                     'stroke="#444" stroke-dasharray="5,4"/>')
        parts.append(f'<text x="{width - right + 32}" y="{legend_y + 4}">literature</text>')
    parts.append("</svg>")
    return "\n".join(parts)


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left}
th{background:#f4f4f4}.status-failed{color:#b00}.status-skipped{color:#888}.note{color:#444;margin:.2em 0}
details{margin:.3em 0 1em}code{background:#f4f4f4;padding:1px 3px}
"""


def render_html(report: dict, sections: list[SectionResult]) -> str:
    model = report["model"]
    out = ["<!doctype html><html><head><meta charset='utf-8'>",
           f"<title>almostlinear audit: {html.escape(model['name'])}</title><style>{_STYLE}</style></head><body>",
           f"<h1>How linear is {html.escape(model['name'])}?</h1>",
           f"<p>Fingerprint <code>{html.escape(model['fingerprint'])}</code>; almostlinear "
           f"{html.escape(report['tool']['version'])}; {html.escape(report['created'])}; "
           f"{report['elapsed_s']:.0f} s; settings <code>{html.escape(json.dumps(report['settings']))}</code>.</p>"]
    for section in sections:
        out.append(f"<h2 id='{section.id}'>{html.escape(section.title)} "
                   f"<small class='status-{section.status}'>[{section.status}]</small></h2>")
        rows = summary_metrics(section)
        if rows:
            out.append("<table><tr><th>metric</th><th>value</th><th>unit</th><th>literature</th>"
                       "<th>source</th><th>note</th></tr>")
            for m in rows:
                out.append(f"<tr><td>{html.escape(m.name)}</td><td>{format_value(m.value, m.unit)}</td>"
                           f"<td>{html.escape(m.unit)}</td><td>{html.escape(format_reference(m.reference))}</td>"
                           f"<td>{html.escape(m.source or '')}</td><td>{html.escape(m.note or '')}</td></tr>")
            out.append("</table>")
        for figure in section.figures:
            out.append(svg_plot(figure))
        for note in section.notes:
            if "\n" in note:
                out.append(f"<details><summary>details</summary><pre>{html.escape(note)}</pre></details>")
            else:
                out.append(f"<p class='note'>{html.escape(note)}</p>")
        per_layer = [m for m in section.metrics if m.layer is not None]
        if per_layer:
            out.append("<details><summary>per-layer values</summary><table><tr><th>metric</th><th>layer</th>"
                       "<th>value</th></tr>")
            out += [f"<tr><td>{html.escape(m.name)}</td><td>{m.layer}</td><td>{format_value(m.value, m.unit)}</td></tr>"
                    for m in per_layer]
            out.append("</table></details>")
    out.append("</body></html>")
    return "\n".join(out)


def write_atomically(folder: Path, files: dict[str, str]) -> None:
    """Write every file to a temporary name first; rename them together once all were written.

    The renames run under an exclusive lock on the folder itself, so two audits writing to one folder
    leave the files of one run side by side, never ``report.json`` of one beside ``report.html`` of
    the other. Files get the permissions the umask allows, like any other file the user writes.
    """
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    try:
        for name, text in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
            staged.append((tmp, folder / name))  # before writing: a full disk must not leave it behind
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            follow_umask(tmp)
        lock = os.open(folder, os.O_RDONLY)  # a lock on the folder: no extra file in it
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for tmp, target in staged:
                os.replace(tmp, target)
        finally:
            os.close(lock)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
