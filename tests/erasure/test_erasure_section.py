"""The erasure audit section on a tiny model and on SmolLM2."""

from __future__ import annotations

import pytest
from tiny_models import TEXTS, build_model, make_tokenizer, toy_statements

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.models import LoadedModel
from almostlinear.data import FALLBACK_TEXTS, city_statements
from almostlinear.erasure.section import ErasureSection

BUDGET = Budget(neutral_texts=8, neutral_new_tokens=8, lens_tokens=40, statements=60, fact_candidates=40)


def _texts_for(ctx):
    return lambda source: [getattr(s, "text", s) for s in ctx.sources[source]]


def test_section_on_tiny_model():
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None,
                       sources={"cities": toy_statements(10), "neutral": list(TEXTS)})
    (result,) = run_sections(ctx, [ErasureSection()], _texts_for(ctx))
    assert result.status == "ok", result.notes
    chance = result.metric("erasure_chance_accuracy").value
    assert chance == pytest.approx(0.5, abs=0.05)
    for layer in (0, 1):
        after = result.metric("erasure_probe_accuracy_after", layer)
        assert after.source == "arXiv 2306.03819" and after.reference == chance
        assert 0 <= after.value <= 1
    (kl,) = [m for m in result.metrics if m.name == "erasure_leace_kl"]
    assert kl.value > 0 and kl.layer in (0, 1)
    assert result.metric("erasure_cost_tokens").value > 0
    assert any(f.id == "erasure_guardedness" for f in result.figures)
    assert any(note.startswith("Protocol behind these numbers") for note in result.notes)


def test_section_skips_encoders():
    loaded = LoadedModel(build_model("bert"), make_tokenizer(), "tiny-bert", "memory", "encoder")
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None, sources={})
    (result,) = run_sections(ctx, [ErasureSection()], _texts_for(ctx))
    assert result.status == "skipped"


@pytest.mark.real
def test_section_on_smollm2(smollm2):
    ctx = AuditContext(smollm2, BUDGET, progress=lambda _: None,
                       sources={"cities": city_statements(80), "neutral": list(FALLBACK_TEXTS)[:4]})
    (result,) = run_sections(ctx, [ErasureSection()], _texts_for(ctx))
    assert result.status == "ok", result.notes
    chance = result.metric("erasure_chance_accuracy").value
    mid = [m for m in result.metrics if m.name == "erasure_probe_accuracy_after"]
    assert len(mid) == 3
    for m in mid:
        assert m.value <= chance + 0.1  # held-out probe near chance after erasure
    before = [m.value for m in result.metrics if m.name == "erasure_probe_accuracy_before"]
    assert max(before) > chance + 0.1  # there was something to erase
    layer = mid[1].layer
    for name in ("leace", "orth", "leace_unshrunk"):  # 40 statements < 576 dims: shrunk, exact cost reported too
        assert result.metric(f"erasure_{name}_kl", layer).value > 0
