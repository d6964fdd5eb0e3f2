"""What a tiny model's audit writes: the scorecard first, navigation, a published schema, no machine
paths, the umask's file modes, progress while it works, comparisons and audits with levers applied."""

import html
import io
import json
import os
import re
import stat
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import almostlinear
from almostlinear.audit import run_audit
from almostlinear.audit.compare import ReportFileError, compare_reports, read_report
from almostlinear.audit.run import without_machine_paths
from almostlinear.audit.schema import report_schema
from almostlinear.audit.scorecard import CLAIMS
from almostlinear.cli import main
from almostlinear.core import progress
from almostlinear.core.report import SectionResult
from almostlinear.core.section import AuditContext, Section
from audit_inputs import BUDGET, audit_texts as _texts
from tiny_models import TEXTS, assert_state_restored, build_model, make_tokenizer, state_copy

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a dev extra: pip install -e .[dev]")

def test_report_json_validates_against_the_shipped_schema(audited):
    _, out, _ = audited
    data = json.loads((out / "report.json").read_text())
    schema = report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(data, schema)
    assert data["schema_version"] == schema["properties"]["schema_version"]["const"] == 2
    # the schema is strict enough to catch a wrong report
    broken = json.loads(json.dumps(data))
    broken["scorecard"]["rows"][0]["verdict"] = "probably"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = json.loads(json.dumps(data))
    broken["model"]["path"] = "/home/someone/models/x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_the_schema_file_is_declared_as_package_data():
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert "audit/*.schema.json" in text and "jsonschema" in text


def test_the_scorecard_leads_the_json_the_page_and_the_terminal(audited):
    report, out, _ = audited
    data = json.loads((out / "report.json").read_text())
    assert list(data)[:2] == ["schema_version", "scorecard"]
    rows = data["scorecard"]["rows"]
    assert [r["id"] for r in rows] == [c.id for c in CLAIMS]
    statuses = {s["id"]: s["status"] for s in data["sections"]}
    for row in rows:
        if statuses.get(row["section"]) != "ok":
            assert row["verdict"] == "not tested"
    assert {"holds", "fails"} & {r["verdict"] for r in rows}
    page = (out / "report.html").read_text()
    assert page.index("id='scorecard'") < page.index("id='contents'") < page.index("<h2 id='model_card'")
    assert page.count("<tr data-claim=") == len(CLAIMS)
    assert "How the verdicts are made" in page and html.escape(data["scorecard"]["rule"]) in page
    summary = report.summary()
    assert summary.index("== Scorecard") < summary.index("== Model card")
    assert "Truth is linearly readable" in summary


def test_contents_settings_and_per_layer_tables(audited):
    report, out, _ = audited
    page = (out / "report.html").read_text()
    toc = page[page.index("<nav class='toc'"):page.index("</nav>")]
    for section in report.sections:
        assert f"<a href='#{section.id}'>" in toc
        assert f"<h2 id='{section.id}'>" in page
    assert re.search(r"<span class='time'>\d", toc)
    assert all(s.elapsed_s >= 0 for s in report.sections)
    assert any(s.elapsed_s > 0 for s in report.sections)
    assert "settings <code>{" not in page and "<summary>Settings and model</summary>" in page
    assert "<th>budget.neutral texts</th><td>24</td>" in page
    per_layer = page.count("<summary>per-layer values")
    assert per_layer == sum(any(m.layer is not None for m in s.metrics) for s in report.sections) > 0


def test_no_absolute_path_of_the_machine_in_either_file(audited, model_folder):
    _, out, loaded = audited
    assert os.path.isabs(loaded.path)  # the model really came from a folder on this machine
    forbidden = {str(model_folder), str(model_folder.parent), str(Path.home()) + "/", os.getcwd() + "/",
                 sys.prefix + "/", str(Path(almostlinear.__file__).parents[1]) + "/", str(out)}
    for name in ("report.json", "report.html"):
        text = (out / name).read_text()
        for path in forbidden:
            assert path not in text, (name, path)
    data = json.loads((out / "report.json").read_text())
    assert "path" not in data["model"]
    assert data["model"]["source"] == "local folder" and data["model"]["name"] == "tiny-llama"


def test_tracebacks_and_notes_lose_their_directories():
    note = ('Traceback (most recent call last):\n  File "/home/ana/venv/lib/python3.11/site-packages/almostlinear/'
            'audit/plan.py", line 80\nloaded from /home/ana/.cache/almostlinear/models/smollm2 at 3 nats/token')
    clean = without_machine_paths({"notes": [note]})["notes"][0]
    assert "/home/ana" not in clean
    assert '"…/audit/plan.py"' in clean and "…/models/smollm2" in clean and "nats/token" in clean


def test_report_files_follow_the_umask(audited):
    _, out, _ = audited
    for name in ("report.json", "report.html"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o640


# --- progress ----------------------------------------------------------------------------------------


class _TimedStream(io.StringIO):
    """A captured stream that notes when each line arrived."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []
        self._lock = threading.Lock()

    def write(self, text):
        with self._lock:
            if text.strip():
                self.times.append(time.monotonic())
            return super().write(text)


class _SlowSection(Section):
    id, title = "slow_section", "A slow closing computation"

    def finish(self, ctx):
        time.sleep(1.0)
        return SectionResult(self.id, self.title)


def test_a_long_section_shows_a_heartbeat_and_its_time():
    from almostlinear.audit.plan import run_sections
    from almostlinear.core.models import LoadedModel

    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny", "memory", "causal-lm")
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None)
    stream = _TimedStream()
    with progress.configured(enabled=True, stream=stream, every_s=0.1):
        [result] = run_sections(ctx, [_SlowSection()])
    lines = [line for line in stream.getvalue().splitlines() if "A slow closing computation" in line]
    assert len(lines) >= 4, stream.getvalue()  # about one per 0.1 s of a 1 s step
    assert lines[0].startswith("section 1/1: A slow closing computation")
    assert lines[-1].startswith("section 1/1: A slow closing computation: done")
    assert result.elapsed_s >= 1.0


def test_a_whole_audit_never_goes_quiet_for_long():
    """Progress lines at least every ``every_s`` while a tiny audit runs: the same code speaks at least
    every 2 s (the default) during a real audit, well inside the 10 s a user should wait at most."""
    from almostlinear.core.models import LoadedModel

    model = LoadedModel(build_model("llama"), make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    stream = _TimedStream()
    every = 0.25
    with progress.configured(enabled=True, stream=stream, every_s=every):
        began = time.monotonic()
        run_audit(model, budget=BUDGET, texts=_texts(), progress=progress.note)
        ended = time.monotonic()
    times = [began, *stream.times, ended]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) < 10 * every, (max(gaps), stream.getvalue()[-2000:])
    text = stream.getvalue()
    assert "forward pass over neutral texts" in text and "section 1/" in text


def test_neutral_sampling_and_fact_checks_count_their_work():
    from almostlinear.data.known import known_facts
    from almostlinear.data.neutral import generate_neutral_texts
    from almostlinear.data.facts import Fact

    model, tokenizer = build_model("llama"), make_tokenizer()
    stream = io.StringIO()
    with progress.configured(enabled=True, stream=stream, every_s=1e-6):
        texts = generate_neutral_texts(model, tokenizer, 5, max_new_tokens=4, batch_size=2)
        known_facts(model, tokenizer, [Fact("Paris", "city_in_country", "France"), Fact("Rome", "city_in_country", "Italy"),
                                        Fact("Tokyo", "city_in_country", "Japan")],
                    batch_size=2)
    text = stream.getvalue()
    assert "sampling 5 neutral texts: 12/12 token steps (100%)" in text
    assert "checking which of 3 facts the model knows: 2/3 facts" in text
    assert "checking which of 3 facts the model knows: 3/3 facts (100%)" in text
    # and off by default: the same calls write nothing, and sampling gives the same texts
    quiet = io.StringIO()
    with progress.configured(stream=quiet):
        assert generate_neutral_texts(model, tokenizer, 5, max_new_tokens=4, batch_size=2) == texts
    assert quiet.getvalue() == ""


def test_quiet_silences_every_command_and_without_it_status_lines_show(model_folder, tmp_path, capsys):
    args = ["audit", "--model", str(model_folder), "--sections", "model_card,logit_lens", "--quick",
            "--texts", str(_text_file(tmp_path)), "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "loud")]) == 0
    assert "· " in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err == "", err
    import argparse

    from almostlinear.cli import build_parser

    def leaves(parser, name=""):
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not nested:
            yield name, parser
        for action in nested:
            for sub_name, sub in action.choices.items():
                yield from leaves(sub, f"{name} {sub_name}".strip())

    commands = dict(leaves(build_parser()))
    assert {"audit", "compare", "edit", "steer fit", "merge", "models"} <= set(commands)
    for name, command in commands.items():
        assert "--quiet" in command._option_string_actions, name


def _text_file(folder: Path) -> Path:
    path = folder / "texts.txt"
    path.write_text("\n".join(TEXTS * 3), encoding="utf-8")
    return path


def test_edit_shows_progress_by_default_on_a_terminal_only(monkeypatch):
    from almostlinear import clitools

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert clitools.show_progress() is True
    assert clitools.show_progress(quiet=True) is False
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert clitools.show_progress() is False
    assert clitools.show_progress(asked=True) is True


# --- comparisons and levers --------------------------------------------------------------------------


def _steering_file(loaded, folder: Path) -> Path:
    from almostlinear.steering import SteeringVector

    d = loaded.structure.d_model
    direction = torch.randn(d, generator=torch.Generator().manual_seed(5))
    vector = SteeringVector.from_direction(direction / direction.norm(), site="resid_post", layer=0,
                                           method="mean_diff", norms={"residual_median": 8.0},
                                           model_fingerprint=loaded.fingerprint)
    return vector.save(folder / "steer.safetensors")


def test_audit_with_a_lever_applied_then_compared(audited, tmp_path):
    report_a, out_a, loaded = audited
    state = state_copy(loaded.model)
    lever = _steering_file(loaded, tmp_path)
    out_b = tmp_path / "with-lever"
    report_b = run_audit(loaded, out=out_b, budget=BUDGET, texts=_texts(), progress=lambda _: None,
                         sections=["model_card", "logit_lens", "truth_probes"], apply=[lever])
    assert_state_restored(loaded.model, state)
    applied = report_b.report["settings"]["applied"]
    assert applied == [{"file": "steer.safetensors", "kind": "steering.vector", "fitted_on": loaded.fingerprint}]
    lens_a = report_a.section("logit_lens").metric("logit_lens_kl_mid_depth").value
    lens_b = report_b.section("logit_lens").metric("logit_lens_kl_mid_depth").value
    assert lens_a != pytest.approx(lens_b)  # the steering vector changed what the lens reads
    out = tmp_path / "comparison"
    comparison = compare_reports(out_a / "report.json", out_b / "report.json", out=out)
    data = json.loads((out / "compare.json").read_text())
    assert data["same_model"] is True and data["b"]["applied"][0]["file"] == "steer.safetensors"
    assert len(data["scorecard"]) == len(CLAIMS)
    # claims of sections that B did not run are shown, but not counted as changes of the model
    compared = {r["id"] for r in data["scorecard"] if r["compared"]}
    assert compared == {"linear_lens", "truth_linear"}
    assert not any(r["changed"] for r in data["scorecard"] if not r["compared"])
    assert all(r["b"]["verdict"] == "not tested" for r in data["scorecard"] if not r["compared"])
    lens = next(s for s in data["sections"] if s["id"] == "logit_lens")
    row = next(m for m in lens["metrics"] if m["name"] == "logit_lens_kl_mid_depth")
    assert row["a"] == pytest.approx(lens_a) and row["b"] == pytest.approx(lens_b)
    assert row["delta"] == pytest.approx(lens_b - lens_a)
    page = (out / "compare.html").read_text()
    assert page.count("<figure id='fig-logit_lens-") == len(report_b.section("logit_lens").figures)
    assert 'stroke-dasharray="7,4"' in page  # B's curves are dashed over A's
    assert "Scorecard changes" in comparison.summary() or "Scorecard (A → B)" in comparison.summary()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "compare.json").stat().st_mode) == 0o666 & ~umask


def test_compare_command_and_bad_inputs(audited, tmp_path, capsys):
    _, out_a, _ = audited
    assert main(["compare", str(out_a / "report.json"), str(out_a / "report.json"), "--out", str(tmp_path / "c")]) == 0
    assert "0 of 13 compared verdicts changed" in capsys.readouterr().out
    not_json = tmp_path / "x.json"
    not_json.write_text("{not json")
    with pytest.raises(ReportFileError, match="not JSON"):
        read_report(not_json)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema_version": 99, "model": {}, "sections": []}))
    with pytest.raises(ReportFileError, match="version 99"):
        read_report(other)
    assert main(["compare", str(not_json), str(out_a / "report.json"), "--out", str(tmp_path / "d")]) == 2


def test_apply_refuses_a_file_that_is_not_a_lever_before_loading(tmp_path, monkeypatch):
    from almostlinear.audit import run as run_module
    from almostlinear.core.errors import AlmostLinearError

    garbage = tmp_path / "not-a-lever.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    monkeypatch.setattr(run_module, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(AlmostLinearError):
        run_module.run_audit("smollm2-135m", apply=[garbage])
