"""Line plots as inline SVG, made to be read at a glance: no plotting library, no network.

* ticks at round values (1, 2, 2.5 or 5 times a power of ten), labelled with as few digits as they need;
* a point far outside the others (the logit lens's embedding layer, a diverging run) does not flatten
  the rest: the axis is clipped, and the clipped point is drawn at the edge with its value written;
* reference lines and literature bands at their values, named in the legend with their source;
* every point carries an SVG ``<title>``, so hovering shows its series and exact value;
* the Okabe–Ito palette, which stays distinct for the common colour-vision deficiencies, plus a
  marker shape per series so that colour is never the only cue.
"""

from __future__ import annotations

import html
import math

from ..core.report import Figure

# Okabe & Ito (2008), "Color Universal Design"; the yellow is left out (too light on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
MARKERS = ("circle", "square", "triangle", "diamond")
BAND_FILL = "#009E73"


def nice_step(span: float, count: int = 5) -> float:
    """A round step (1, 2, 2.5 or 5 × 10^k) that cuts ``span`` into about ``count`` parts."""
    if not span > 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw * 0.999:
            return factor * power
    return 10 * power


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]``; the axis is then widened to the outer ticks."""
    if high < low:
        low, high = high, low
    if high - low < 1e-12:
        pad = abs(low) * 0.1 or 0.5
        low, high = low - pad, high + pad
    step = nice_step(high - low, count)
    first = math.floor(low / step + 1e-9) * step
    ticks, value = [], first
    while value < high + step * 0.999:
        ticks.append(0.0 if abs(value) < step * 1e-9 else round(value, 12))
        value += step
    if len(ticks) < 2:
        ticks.append(ticks[-1] + step)
    return ticks


def tick_label(value: float, step: float) -> str:
    """``value`` with the decimals its ``step`` needs: 0.25 → "0.25", 2.0 → "2", 1e-5 → "1e-05"."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or (abs(value) < 1e-3):
        return f"{value:.2g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    if step < 1 and round(step * 10 ** decimals, 6) % 1:  # 0.25 needs two decimals, not one
        decimals += 1
    return f"{value:,.{decimals}f}"


def value_label(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000 or magnitude < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def robust_range(values: list[float], keep: list[float] = ()) -> tuple[float, float, bool]:
    """``(low, high, clipped)``: the range of ``values`` without up to 10 % of extreme points when they
    stretch it more than threefold; ``keep`` (reference values) always stays inside."""
    values = sorted(values)
    low, high = values[0], values[-1]
    span = high - low
    most = max(1, len(values) // 10)
    best = (low, high)
    for cut_low in range(most + 1):
        for cut_high in range(most + 1 - cut_low):
            if cut_low + cut_high == 0 or len(values) - cut_low - cut_high < 3:
                continue
            inner = values[cut_low: len(values) - cut_high]
            inner_span = inner[-1] - inner[0]
            if inner_span > 0 and span > 3 * inner_span and inner_span < best[1] - best[0]:
                best = (inner[0], inner[-1])
    clipped = best != (low, high)
    low, high = best
    for value in keep:
        low, high = min(low, value), max(high, value)
    if clipped:  # a margin above the inner points, so the clipped markers sit apart from them
        margin = 0.08 * (high - low or 1.0)
        low = low - margin if values[0] < low else low
        high = high + margin if values[-1] > high else high
    return low, high, clipped


def _marker(shape: str, x: float, y: float, colour: str, title: str, size: float = 3.6, cls: str = "point") -> str:
    tip = f"<title>{html.escape(title)}</title>"
    if shape == "square":
        body = f'<rect x="{x - size:.1f}" y="{y - size:.1f}" width="{2 * size:.1f}" height="{2 * size:.1f}"'
    elif shape == "triangle":
        body = (f'<polygon points="{x:.1f},{y - size * 1.2:.1f} {x - size * 1.1:.1f},{y + size * 0.8:.1f} '
                f'{x + size * 1.1:.1f},{y + size * 0.8:.1f}"')
    elif shape == "diamond":
        body = (f'<polygon points="{x:.1f},{y - size * 1.3:.1f} {x + size:.1f},{y:.1f} {x:.1f},{y + size * 1.3:.1f} '
                f'{x - size:.1f},{y:.1f}"')
    else:
        body = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{size:.1f}"'
    return f'{body} fill="{colour}" class="{cls}">{tip}</{body.split()[0][1:]}>'


def svg_plot(figure: Figure, *, width: int = 860, height: int = 380, dashed: frozenset[int] = frozenset(),
             colours: list[int] | None = None, markers: list[int] | None = None) -> str:
    """``figure`` as an inline SVG line plot. ``dashed`` are indices of series drawn with dashes (the
    second report in a comparison), ``colours``/``markers`` pick each series' colour and marker."""
    left, right, top, bottom = 64, 250, 34, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [(x, y) for s in figure.series for x, y in zip(s.x, s.y)
              if y is not None and x is not None and math.isfinite(y) and math.isfinite(x)]
    if not points:
        return f"<p class='empty-figure'>{html.escape(figure.title)}: no data</p>"
    keep = [figure.reference] if figure.reference is not None else []
    y_low, y_high, clipped = robust_range([p[1] for p in points], keep)
    bands = [b for b in figure.bands if b.high >= y_low - (y_high - y_low) and b.low <= y_high + (y_high - y_low)]
    for band in bands:
        y_low, y_high = min(y_low, band.low), max(y_high, band.high)
    y_ticks = nice_ticks(y_low, y_high)
    y_step = y_ticks[1] - y_ticks[0]
    y0, y1 = y_ticks[0], y_ticks[-1]
    xs = [p[0] for p in points]
    integer_x = all(float(x).is_integer() for x in xs)
    x_low, x_high = min(xs), max(xs)
    if integer_x and x_high - x_low <= 12:
        x_ticks = [float(v) for v in range(int(x_low), int(x_high) + 1)]
        x_step = 1.0
    else:
        x_ticks = nice_ticks(x_low, x_high, 6)
        x_step = x_ticks[1] - x_ticks[0]
        if integer_x:
            x_step = max(1.0, x_step)
            x_ticks = [t for t in x_ticks if float(t).is_integer()] or x_ticks
    x0, x1 = x_low, x_high  # the data's own range: no empty margin beyond the first and last layer
    if x1 - x0 < 1e-12:
        x0, x1 = x0 - 1, x1 + 1
    x_ticks = [t for t in x_ticks if x0 - 1e-9 <= t <= x1 + 1e-9] or [x0, x1]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    title = html.escape(figure.title)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="{title}" class="plot" font-family="system-ui,sans-serif" '
             f'font-size="12"><title>{title}</title>',
             f'<text x="{left}" y="20" font-size="14" font-weight="600">{title}</text>']
    legend: list[str] = []
    legend_y = top + 8

    def legend_entry(symbol: str, text: str, tip: str | None = None) -> None:
        nonlocal legend_y
        shown = text if len(text) <= 34 else text[:33] + "…"
        tip_tag = f"<title>{html.escape(tip or text)}</title>"
        legend.append(f'<g class="legend-item" transform="translate({width - right + 14},{legend_y})">{symbol}'
                      f'<text x="30" y="4">{html.escape(shown)}{tip_tag}</text></g>')
        legend_y += 18

    for band in bands:  # behind everything else
        ya, yb = sy(min(max(band.high, y0), y1)), sy(max(min(band.low, y1), y0))
        name = band.label + (f" ({band.source})" if band.source else "")
        parts.append(f'<rect x="{left}" y="{ya:.1f}" width="{plot_w}" height="{max(1.0, yb - ya):.1f}" '
                     f'fill="{BAND_FILL}" fill-opacity="0.13" class="band"><title>{html.escape(name)}: '
                     f'{value_label(band.low)}–{value_label(band.high)}</title></rect>')
        legend_entry(f'<rect x="0" y="-6" width="24" height="12" fill="{BAND_FILL}" fill-opacity="0.25"/>',
                     f"{band.label} {value_label(band.low)}–{value_label(band.high)}", name)
    for value in y_ticks:
        y = sy(value)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick_label(value, y_step)}</text>')
    for value in x_ticks:
        parts.append(f'<text x="{sx(value):.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                     f'{tick_label(value, x_step)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle">'
                 f'{html.escape(figure.x_label)}</text>')
    mid = top + plot_h / 2
    parts.append(f'<text x="16" y="{mid:.1f}" text-anchor="middle" transform="rotate(-90 16 {mid:.1f})">'
                 f'{html.escape(figure.y_label)}</text>')
    if figure.reference is not None:
        y = sy(figure.reference)
        label = figure.reference_label or "reference"
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#555" '
                     f'stroke-width="1.5" stroke-dasharray="6,4" class="reference"><title>{html.escape(label)}: '
                     f'{value_label(figure.reference)}</title></line>')
        legend_entry('<line x1="0" x2="24" y1="0" y2="0" stroke="#555" stroke-width="1.5" stroke-dasharray="6,4"/>',
                     f"{label} ({value_label(figure.reference)})")
    clipped_notes = 0
    for i, series in enumerate(figure.series):
        colour = PALETTE[(colours[i] if colours else i) % len(PALETTE)]
        shape = MARKERS[(markers[i] if markers else i) % len(MARKERS)]
        dash = ' stroke-dasharray="7,4"' if i in dashed else ""
        pairs = [(x, y) for x, y in zip(series.x, series.y)
                 if y is not None and x is not None and math.isfinite(y) and math.isfinite(x)]
        shown = [(x, min(max(y, y0), y1)) for x, y in pairs]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in shown)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2.2"{dash} points="{coords}"/>')
        for (x, y), (_, y_shown) in zip(pairs, shown):
            tip = f"{series.name}: {figure.x_label} {value_label(x)}, {figure.y_label} {value_label(y)}"
            parts.append(_marker(shape, sx(x), sy(y_shown), colour, tip))
            if y_shown != y:  # clipped: say so at the edge, with the value
                clipped_notes += 1
                above = y > y1
                ty = sy(y_shown) + (14 if not above else -6)
                anchor = "end" if sx(x) > left + plot_w - 60 else "start"
                dx = -6 if anchor == "end" else 6
                parts.append(f'<text x="{sx(x) + dx:.1f}" y="{ty + (12 if above else 0):.1f}" font-size="11" '
                             f'text-anchor="{anchor}" fill="{colour}" class="clipped">'
                             f'{"↑" if above else "↓"} {value_label(y)}</text>')
        symbol = (f'<line x1="0" x2="24" y1="0" y2="0" stroke="{colour}" stroke-width="2.2"{dash}/>'
                  + _marker(shape, 12, 0, colour, series.name, cls="legend-marker"))
        legend_entry(symbol, series.name)
    if clipped_notes:
        legend_entry("", "↑↓ off the scale: value written", "points beyond the axis are drawn at its edge")
    parts += legend
    parts.append("</svg>")
    needed = legend_y + 6
    svg = "\n".join(parts)
    if needed > height:  # a long legend: grow the canvas rather than cut it
        svg = svg.replace(f'viewBox="0 0 {width} {height}" width="{width}" height="{height}"',
                          f'viewBox="0 0 {width} {needed}" width="{width}" height="{needed}"', 1)
    return svg
