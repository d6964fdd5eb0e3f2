"""One tiny audit, shared by the report tests: a tiny Llama saved to a folder (so that the report has
a real path of this machine to leave out) and audited under a umask of 027."""

import os
from pathlib import Path

import pytest
from audit_inputs import BUDGET, audit_texts
from tiny_models import build_model, make_tokenizer

from almostlinear.audit import run_audit
from almostlinear.core.models import load


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("machine-specific-place") / "tiny-llama"
    build_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def audited(model_folder, tmp_path_factory):
    """``(AuditReport, out folder, LoadedModel)`` of one audit of the tiny Llama."""
    out = tmp_path_factory.mktemp("report-a")
    loaded = load(str(model_folder))
    before = os.umask(0o027)
    try:
        report = run_audit(loaded, out=out, budget=BUDGET, texts=audit_texts(), progress=lambda _: None)
    finally:
        os.umask(before)
    return report, out, loaded
