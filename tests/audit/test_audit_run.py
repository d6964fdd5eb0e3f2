import json
import math

import pytest
import torch

from almostlinear.audit import run_audit
from almostlinear.core.section import Budget
from almostlinear.core.report import SCHEMA_VERSION
from almostlinear.cli import main
from almostlinear.core.errors import NonFiniteError
from almostlinear.core.models import LoadedModel
from tiny_models import TEXTS, build_model, make_tokenizer, toy_statements

BUDGET = Budget(neutral_texts=24, neutral_new_tokens=8, lens_tokens=40, statements=40, fact_candidates=40,
                batch_size=4)


def _loaded(family="llama"):
    kind = "encoder" if family == "bert" else "causal-lm"
    return LoadedModel(build_model(family), make_tokenizer(), f"tiny-{family}", "memory", kind)


def _texts():
    return {"neutral": list(TEXTS) * 4, "cities": toy_statements(4)}


def _check_schema(report: dict) -> None:
    assert report["schema_version"] == SCHEMA_VERSION
    assert set(report["model"]) >= {"name", "source", "kind", "fingerprint", "structure"} and "path" not in report["model"]
    for section in report["sections"]:
        assert set(section) >= {"id", "title", "status", "metrics", "figures", "notes"}
        for metric in section["metrics"]:
            assert set(metric) >= {"name", "value", "unit", "reference", "source"}
            value = metric["value"]
            assert value is None or (isinstance(value, (int, float)) and math.isfinite(value))
        for figure in section["figures"]:
            for series in figure["series"]:
                assert len(series["x"]) == len(series["y"])


def test_audit_of_a_tiny_llama_writes_a_complete_report(tmp_path):
    report = run_audit(_loaded(), out=tmp_path, budget=BUDGET, texts=_texts(), progress=lambda _: None)
    statuses = {s.id: s.status for s in report.sections}
    # The tiny word-level tokenizer maps the sentiment words and most place names to its unknown
    # token, so steering cannot be scored and no fact can be edited: both must say so, not fail.
    assert statuses.pop("steering") == "skipped"
    assert statuses.pop("editing") == "skipped"
    assert all(status == "ok" for status in statuses.values()), [(s.id, s.notes) for s in report.sections]
    data = json.loads((tmp_path / "report.json").read_text())
    _check_schema(data)
    html = (tmp_path / "report.html").read_text()
    assert html.count("<svg") == sum(len(s.figures) for s in report.sections)
    linearity = report.section("interlayer_linearity")
    for layer in range(2):
        assert 0.0 <= linearity.metric("linearity_in_sample", layer).value <= 1.0
    lens = report.section("logit_lens")
    assert lens.metric("logit_lens_kl_last_block").value == pytest.approx(0.0, abs=1e-4)
    truth = report.section("truth_probes")
    assert truth.metric("statements_train").value + truth.metric("statements_test").value == 40
    assert "tiny-llama" in report.summary()


def test_encoder_audit_skips_logit_sections_with_reasons(tmp_path):
    report = run_audit(_loaded("bert"), budget=BUDGET, texts=_texts(), progress=lambda _: None)
    status = {s.id: s.status for s in report.sections}
    needs_head = {"logit_lens", "truth_probes", "truth_directions", "block_linearity", "causal_inner_product",
                  "steering", "erasure", "translate", "editing"}
    assert all(status[k] == "skipped" for k in needs_head)
    assert all(v == "ok" for k, v in status.items() if k not in needs_head), status
    assert "output head" in report.section("logit_lens").notes[0]


def test_failed_audit_leaves_the_previous_report_untouched(tmp_path):
    run_audit(_loaded(), out=tmp_path, budget=BUDGET, texts=_texts(), progress=lambda _: None,
              sections=["model_card"])
    before = (tmp_path / "report.json").read_bytes()
    broken = _loaded()
    with torch.no_grad():
        broken.model.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="NaN"):
        run_audit(broken, out=tmp_path, budget=BUDGET, texts=_texts(), progress=lambda _: None)
    assert (tmp_path / "report.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]


def test_unknown_section_is_refused():
    with pytest.raises(ValueError, match="unknown audit section"):
        run_audit(_loaded(), sections=["no_such_section"], texts=_texts(), budget=BUDGET)


def test_cli_reports_unknown_model_and_lists_models(capsys):
    assert main(["audit", "--model", "no-such-model", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "smollm2-135m" in err and "minilm-l6" in err
    assert main(["models"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out


def test_a_command_run_in_process_puts_the_thread_count_back(tmp_path):
    before = torch.get_num_threads()
    code = main(["audit", "--model", str(tmp_path / "no-such-model"), "--threads", str(before + 1),
                 "--out", str(tmp_path / "out")])
    assert code == 2  # the missing model is a clear error, not a traceback
    assert torch.get_num_threads() == before


def test_report_pairs_are_written_together_and_follow_the_umask(tmp_path):
    import os
    import stat
    import threading

    from almostlinear.audit.report import write_atomically

    def run(tag: str) -> None:
        for _ in range(30):
            write_atomically(tmp_path, {"report.json": tag * 2000, "report.html": tag * 3000})

    threads = [threading.Thread(target=run, args=(tag,)) for tag in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    json_text, html_text = (tmp_path / "report.json").read_text(), (tmp_path / "report.html").read_text()
    assert json_text[0] == html_text[0] and len(set(json_text + html_text)) == 1
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]


def test_an_unwritable_out_folder_is_refused_before_any_section_runs(tmp_path, monkeypatch):
    import os

    from almostlinear.audit import run as run_module
    from almostlinear.core.errors import AlmostLinearError

    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        out = blocker / "report"  # a folder inside a file cannot be created, even by root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "report"
    monkeypatch.setattr(run_module, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(AlmostLinearError, match="cannot write"):
        run_module.run_audit("smollm2-135m", out=out, quick=True)


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import os

    from almostlinear.audit import report as report_module

    real_fsync = os.fsync
    calls = []

    def full_disk(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(report_module.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        report_module.write_atomically(tmp_path, {"report.json": "{}", "report.html": "<html>"})
    assert list(tmp_path.iterdir()) == []
