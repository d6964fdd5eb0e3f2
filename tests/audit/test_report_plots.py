"""The scorecard's verdict rule and the plots' readability rules, on hand-made results."""

import math
import re
import xml.etree.ElementTree as ET

import pytest

from almostlinear.audit.plots import nice_ticks, robust_range, svg_plot, tick_label
from almostlinear.audit.scorecard import CLAIMS, RULE, judge, score
from almostlinear.core.report import Band, Figure, Metric, SectionResult, Series

SVG = "{http://www.w3.org/2000/svg}"


# --- scorecard ---------------------------------------------------------------------------------------


def _claim(claim_id):
    return next(c for c in CLAIMS if c.id == claim_id)


def test_the_verdict_follows_the_thresholds_in_both_directions():
    truth = _claim("truth_linear")  # higher is better: holds >= 0.71, partly >= 0.6
    assert [judge(v, truth) for v in (0.9, 0.71, 0.65, 0.55)] == ["holds", "holds", "partly", "fails"]
    sae = _claim("sparse_features")  # lower is better: holds <= 0.23, partly <= 0.5
    assert [judge(v, sae) for v in (0.1, 0.23, 0.4, 0.9)] == ["holds", "holds", "partly", "fails"]


def test_scorecard_rows_cover_every_claim_and_say_why_one_is_not_tested():
    sections = [
        SectionResult("truth_probes", "Truth probes", metrics=[
            Metric("truth_logistic_best_accuracy", 0.62, "fraction", [0.71, 0.83], "arXiv 2304.13734"),
            Metric("truth_mass_mean_best_accuracy", 0.75, "fraction", [0.71, 0.83], "arXiv 2304.13734")]),
        SectionResult("erasure", "Erasure", metrics=[
            Metric("erasure_chance_accuracy", 0.6, "fraction"),
            Metric("erasure_max_probe_accuracy_after", 0.7, "fraction", 0.6, "arXiv 2306.03819")]),
        SectionResult("sae", "SAE", metrics=[Metric("sae_fvu", 0.4, "fraction", layer=3),
                                             Metric("sae_fvu", 0.2, "fraction", layer=7)]),
        SectionResult("steering", "Steering", status="skipped", notes=["no sentiment words"]),
        SectionResult("editing", "Editing", metrics=[Metric("edits", 3, "edits")]),
    ]
    card = score(sections)
    assert card["rule"] == RULE and len(card["rows"]) == len(CLAIMS) == 13
    rows = {r["id"]: r for r in card["rows"]}
    # best of the listed probes (0.75), with the literature range from the metric itself
    assert rows["truth_linear"]["value"] == 0.75 and rows["truth_linear"]["verdict"] == "holds"
    assert rows["truth_linear"]["literature"] == "0.710–0.830"
    # erasure is judged relative to chance: 0.1 above it is only "partly"
    assert rows["erasure_chance"]["verdict"] == "partly"
    # a per-layer metric: its best layer decides, and the row says which
    assert rows["sparse_features"]["value"] == 0.2 and rows["sparse_features"]["layer"] == 7
    assert rows["sparse_features"]["verdict"] == "holds" and "7" in rows["sparse_features"]["note"]
    assert rows["steering_linear"]["verdict"] == "not tested" and "skipped" in rows["steering_linear"]["note"]
    assert rows["rank_one_edit"]["verdict"] == "not tested" and "did not report" in rows["rank_one_edit"]["note"]
    assert rows["layers_linear"]["note"] == "section not run"
    assert all(r["rule"].startswith("holds if") for r in card["rows"])


# --- ticks and ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize("low, high", [(-5.44, 84.3), (0.0418, 0.942), (0.7, 0.71), (-3e-5, 2e-4), (1200, 98000)])
def test_ticks_are_round_numbers_that_cover_the_range(low, high):
    ticks = nice_ticks(low, high)
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(abs(mantissa - m) < 1e-6 for m in (1, 2, 2.5, 5, 10))
    assert ticks[0] <= low and ticks[-1] >= high
    assert 3 <= len(ticks) <= 8
    assert all(abs(t / step - round(t / step)) < 1e-6 for t in ticks)
    labels = [tick_label(t, step) for t in ticks]
    assert all(len(label) <= 7 for label in labels), labels


def test_the_issue_s_odd_ticks_become_round_ones():
    assert [tick_label(t, 20) for t in nice_ticks(-5.44, 84.3)] == ["-20", "0", "20", "40", "60", "80", "100"]
    ticks = nice_ticks(0.0418, 0.942)
    assert [tick_label(t, ticks[1] - ticks[0]) for t in ticks] == ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]


def test_one_dominating_point_is_clipped_but_references_stay_in_range():
    values = [114.0] + [5.4 - 0.15 * i for i in range(30)]
    low, high, clipped = robust_range(values)
    assert clipped and high < 10
    low, high, clipped = robust_range([0.5, 0.6, 0.55, 0.58], keep=[0.0])
    assert not clipped and low == 0.0


# --- the SVG -----------------------------------------------------------------------------------------


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def _y_of(root: ET.Element, value: float) -> float:
    """The pixel row of ``value``, from the y-axis tick labels (linear between two of them)."""
    ticks = [(float(t.text.replace(",", "")), float(t.get("y")) - 4) for t in root.iter(f"{SVG}text")
             if t.get("text-anchor") == "end" and t.text and re.fullmatch(r"-?[\d,.]+", t.text)]
    (v0, y0), (v1, y1) = ticks[0], ticks[-1]
    return y0 + (value - v0) * (y1 - y0) / (v1 - v0)


def test_the_truth_probe_reference_line_is_chance_and_the_band_is_the_literature():
    figure = Figure("truth_probe_accuracy", "Truth probes", "block", "accuracy",
                    [Series("logistic", [0, 1, 2, 3], [0.55, 0.62, 0.68, 0.66])], reference=0.5,
                    reference_label="chance", bands=[Band(0.71, 0.83, "literature, 7B models", "arXiv 2304.13734")])
    root = _parse(svg_plot(figure))
    line = next(e for e in root.iter(f"{SVG}line") if e.get("class") == "reference")
    assert float(line.get("y1")) == pytest.approx(_y_of(root, 0.5), abs=0.6)
    assert line.find(f"{SVG}title").text == "chance: 0.5"
    band = next(e for e in root.iter(f"{SVG}rect") if e.get("class") == "band")
    top, height = float(band.get("y")), float(band.get("height"))
    assert top == pytest.approx(_y_of(root, 0.83), abs=0.6)
    assert top + height == pytest.approx(_y_of(root, 0.71), abs=0.6)
    assert "arXiv 2304.13734" in band.find(f"{SVG}title").text
    legend = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "chance (0.5)" in legend and "literature, 7B models 0.71–0.83" in legend


def test_every_point_has_a_hover_title_and_a_dominating_point_is_annotated():
    kl = [114.0] + [5.44 - 0.15 * i for i in range(30)]
    figure = Figure("lens_kl", "KL per layer", "block", "KL (nats)",
                    [Series("logit lens", list(range(-1, 30)), kl), Series("tuned lens", list(range(-1, 30)),
                                                                          [3.0] + [1 - 0.03 * i for i in range(30)])])
    root = _parse(svg_plot(figure))
    points = [e for e in root.iter() if e.get("class") == "point"]
    assert len(points) == 62
    titles = [p.find(f"{SVG}title").text for p in points]
    assert "logit lens: block -1, KL (nats) 114" in titles
    assert [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "clipped"] == ["↑ 114"]
    # the other points use most of the height instead of being flattened at the bottom
    ys = [float(p.get("cy")) for p in points[1:31]]
    plot = next(e for e in root.iter(f"{SVG}rect") if e.get("stroke") == "#888")
    assert (max(ys) - min(ys)) > 0.6 * float(plot.get("height"))


def test_plots_are_larger_and_use_the_colour_blind_safe_palette():
    figure = Figure("f", "F", "x", "y", [Series(f"s{i}", [0, 1], [i, i + 1]) for i in range(3)])
    root = _parse(svg_plot(figure))
    assert int(root.get("width")) >= 800 and int(root.get("height")) >= 360
    colours = {e.get("stroke") for e in root.iter(f"{SVG}polyline")}
    assert colours == {"#0072B2", "#D55E00", "#009E73"}


def test_an_unnamed_reference_line_is_named_from_the_section_s_metrics():
    from almostlinear.audit.report import _reference_label

    figure = Figure("f", "F", "block", "R²", [Series("a", [0, 1], [0.9, 0.95])], reference=0.99)
    literature = SectionResult("s", "S", metrics=[Metric("r2_mean", 0.93, "R²", 0.99, "arXiv 2405.12250")])
    assert _reference_label(literature, figure).reference_label == "literature, arXiv 2405.12250"
    chance = SectionResult("s", "S", metrics=[Metric("chance_accuracy", 0.5, "fraction")])
    at_half = Figure("f", "F", "block", "accuracy", [Series("a", [0, 1], [0.6, 0.7])], reference=0.5)
    assert _reference_label(chance, at_half).reference_label == "chance"
    assert _reference_label(literature, at_half).reference_label is None  # drawn as "reference"
    assert "reference (0.5)" in svg_plot(_reference_label(literature, at_half))
