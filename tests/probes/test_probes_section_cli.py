"""The truth-probe section's selectivity and MLP gap, and the probe command, on a tiny model."""

import io

import pytest
import torch

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.artifact import Where, load
from almostlinear.core.models import LoadedModel
from almostlinear.core.errors import ChoiceError
from almostlinear.probes import LinearProbe, table
from almostlinear.probes.section import TruthProbes
from tiny_models import build_model, make_tokenizer, toy_statements

BUDGET = Budget(neutral_texts=8, neutral_new_tokens=8, lens_tokens=40, statements=60, fact_candidates=40,
                batch_size=8)


def _loaded():
    return LoadedModel(build_model("llama"), make_tokenizer(), "tiny-llama", "memory", "causal-lm")


def test_truth_section_reports_selectivity_and_mlp_gap():
    statements = toy_statements(6)
    ctx = AuditContext(_loaded(), BUDGET, progress=lambda _: None, sources={"cities": statements})
    (result,) = run_sections(ctx, [TruthProbes()], lambda source: [s.text for s in ctx.sources[source]])
    assert result.status == "ok", result.notes
    for layer in range(2):
        task = result.metric("truth_task_accuracy_ungrouped", layer).value
        control = result.metric("truth_control_accuracy", layer).value
        assert result.metric("truth_selectivity", layer).value == pytest.approx(task - control)
        assert 0 <= control <= 1
        gap = result.metric("truth_mlp_minus_linear_accuracy", layer)
        linear = result.metric("truth_logistic_accuracy", layer).value
        assert gap.value == pytest.approx(result.metric("truth_mlp_accuracy", layer).value - linear)
        assert gap.source == "arXiv 1909.03368"
    assert {f.id for f in result.figures} >= {"truth_selectivity", "truth_mlp_vs_linear"}


def test_probe_command_prints_a_table_and_saves_the_best_probe(tmp_path, monkeypatch):
    statements = toy_statements(6)
    monkeypatch.setattr(table, "_statements", lambda *args, **kwargs: statements)
    printed = io.StringIO()
    out = tmp_path / "probe.safetensors"
    loaded = _loaded()
    result = table.probe_command(loaded, out=out, say=lambda _: None, stream=printed)
    lines = printed.getvalue().splitlines()
    assert lines[0].split() == ["layer", "logistic", "mass-mean", "selectivity"]
    assert len(result.logistic) == 2 and result.statements == len(statements)
    assert "<- best" in printed.getvalue()
    probe = load(out)
    assert isinstance(probe, LinearProbe)
    assert probe.provenance.where == Where("resid_post", (result.best_layer,))
    assert probe.provenance.model_fingerprint == loaded.fingerprint
    assert probe.provenance.method == "logistic" and len(probe.provenance.data_hash) == len("sha256:") + 16
    assert torch.isfinite(probe.as_direction()).all()


def test_probe_command_refuses_unknown_datasets():
    with pytest.raises(ChoiceError, match="unknown dataset"):
        table._statements(_loaded(), "rivers", 10, 10, 0, lambda _: None)


def test_truth_section_is_skipped_on_an_encoder_with_its_reason():
    loaded = LoadedModel(build_model("bert"), make_tokenizer(), "tiny-bert", "memory", "encoder")
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None)
    assert "needs a causal language model" in TruthProbes().applicable(ctx)
    assert TruthProbes().applicable(AuditContext(_loaded(), BUDGET, progress=lambda _: None)) is None


def test_site_rows_stack_sites_in_arrival_order():
    from almostlinear.core.collect import Batch
    from almostlinear.core.errors import EmptyDataError
    from almostlinear.core.section import SiteRows
    from almostlinear.core.sites import Site

    sites = (Site("resid_post", 0), Site("resid_post", 1))
    rows = SiteRows(sites, dtype=torch.float64)
    with pytest.raises(EmptyDataError):
        rows.result()

    def batch(first_text, n):
        acts = {s: torch.arange(n * 2, dtype=torch.float32).reshape(n, 2) + 10 * s.layer + first_text for s in sites}
        return Batch(acts, torch.zeros(n, dtype=torch.long), torch.arange(first_text, first_text + n),
                     torch.zeros(n, dtype=torch.long))

    rows.add(batch(0, 3))
    rows.add(batch(3, 2), rows=torch.tensor([1]))
    acts, index = rows.result()
    assert acts.shape == (2, 4, 2) and acts.dtype == torch.float64
    assert index.tolist() == [0, 1, 2, 4]
    assert acts[1, 3].tolist() == [10 + 3 + 2, 10 + 3 + 3]  # site 1, second row of the second batch
