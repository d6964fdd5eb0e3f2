"""The report and the comparison page in a real browser (headless Chromium).

A small checker is put into a copy of each page: it records script errors and console errors from
the start, then, once the page has loaded, measures every figure, follows every table-of-contents
link and counts the scorecard's rows, and writes its findings into the page, which Chromium prints
(``--dump-dom``). Chromium comes from Debian's ``chromium`` package (``.ci/run`` installs it when it
can); without it these tests skip and say so. Screenshots for a person to look at are written next
to the pages, and into ``$ALMOSTLINEAR_SCREENSHOTS`` when that is set.
"""

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from almostlinear.audit.compare import compare_reports

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                "(apt-get install -y chromium; .ci/run tries this)")

# Runs before anything else on the page: errors and console errors from then on are recorded.
WATCH = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push('error: ' + (e.message || e.type)), true);
window.addEventListener('unhandledrejection', e => window.__errors.push('rejection: ' + e.reason));
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push('console: ' + args.join(' ')); __consoleError(...args); };
</script>"""

CHECK = """<script>
window.addEventListener('load', () => {
  const out = {errors: window.__errors, figures: [], toc: [], scorecard: [], hover_titles: 0};
  for (const svg of document.querySelectorAll('figure svg')) {
    const box = svg.getBoundingClientRect();
    out.figures.push({id: svg.parentElement.id, width: box.width, height: box.height});
  }
  out.hover_titles = document.querySelectorAll('svg .point > title').length;
  const pageEnd = () => window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 2;
  for (const link of document.querySelectorAll('nav.toc a')) {
    const id = decodeURIComponent(link.getAttribute('href').slice(1));
    const target = document.getElementById(id);
    link.click();  // the browser scrolls to the anchor
    const top = target ? target.getBoundingClientRect().top : null;
    out.toc.push({id, text: link.textContent, found: !!target, tag: target ? target.tagName : null,
                  heading: target ? target.textContent : null, hash: location.hash,
                  lands: target !== null && (Math.abs(top) < 2 || pageEnd())});
  }
  for (const row of document.querySelectorAll('tr[data-claim]')) {
    const link = row.querySelector('a');
    const target = document.getElementById(link.getAttribute('href').slice(1));
    out.scorecard.push({claim: row.dataset.claim, verdict: row.dataset.verdict || null,
                        target: target ? target.tagName : null});
  }
  const pre = document.createElement('pre');
  pre.id = 'browser-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--hide-scrollbars", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _check_page(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text  # the page itself runs no code
    assert not re.search(r"(src|href)=['\"]https?:", text)  # and loads nothing from the network
    probe = page.with_name(page.stem + ".checked.html")
    probe.write_text(text.replace("<head>", "<head>" + WATCH, 1).replace("</body>", CHECK + "</body>", 1))
    done = _chromium("--window-size=1280,900", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the checker did not run (exit {done.returncode}): {done.stderr[-2000:]}"
    assert "Uncaught" not in done.stderr
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line and "error" in line.lower()]
    assert not console, console
    return json.loads(html.unescape(found.group(1)))


def _screenshot(page: Path, name: str) -> Path:
    shot = page.with_name(name)
    done = _chromium("--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    folder = os.environ.get("ALMOSTLINEAR_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(folder) / name)
    return shot


def _assert_navigation(found: dict, n_sections: int) -> None:
    assert found["errors"] == []
    assert len(found["toc"]) == n_sections
    for link in found["toc"]:
        assert link["found"] and link["tag"] == "H2", link
        assert link["heading"].startswith(link["text"]), link
        assert link["hash"] == "#" + link["id"] and link["lands"], link


def test_the_report_in_a_browser(audited):
    report, out, _ = audited
    found = _check_page(out / "report.html")
    _assert_navigation(found, len(report.sections))
    expected = sum(len(s.figures) for s in report.sections)
    assert len(found["figures"]) == expected > 10
    for figure in found["figures"]:
        assert figure["width"] > 300 and figure["height"] > 200, figure
    points = sum(sum(y is not None for y in series.y) for s in report.sections for f in s.figures
                 for series in f.series)
    assert found["hover_titles"] == points
    tested = [r for r in report.report["scorecard"]["rows"] if r["verdict"] != "not tested"]
    shown = [r for r in found["scorecard"] if r["verdict"] != "not tested"]
    assert [r["claim"] for r in shown] == [r["id"] for r in tested] and len(tested) >= 5
    assert all(r["target"] == "H2" for r in found["scorecard"])
    _screenshot(out / "report.html", "report-tiny-llama.png")


def test_the_comparison_page_in_a_browser(audited, tmp_path):
    """The tiny Llama against itself with a steering vector applied, on three sections."""
    import torch
    from audit_inputs import BUDGET, audit_texts

    from almostlinear.audit import run_audit
    from almostlinear.steering import SteeringVector

    report, out, loaded = audited
    direction = torch.randn(loaded.structure.d_model, generator=torch.Generator().manual_seed(5))
    vector = SteeringVector.from_direction(direction / direction.norm(), site="resid_post", layer=0,
                                           method="mean_diff", norms={"residual_median": 8.0},
                                           model_fingerprint=loaded.fingerprint)
    lever = vector.save(tmp_path / "steer.safetensors")
    steered = run_audit(loaded, out=tmp_path / "steered", budget=BUDGET, texts=audit_texts(),
                        progress=lambda _: None, sections=["logit_lens", "truth_probes", "similarity"], apply=[lever])
    comparison = compare_reports(out / "report.json", tmp_path / "steered" / "report.json", out=tmp_path / "cmp")
    found = _check_page(tmp_path / "cmp" / "compare.html")
    _assert_navigation(found, len(comparison.data["sections"]))
    overlaid = sum(len(s.figures) for s in steered.sections)
    assert len(found["figures"]) == overlaid > 3
    assert all(f["width"] > 300 and f["height"] > 200 for f in found["figures"])
    assert len(found["scorecard"]) == len(comparison.data["scorecard"]) == 13
    _screenshot(tmp_path / "cmp" / "compare.html", "compare-tiny-llama.png")
