"""The steering audit section on a tiny model and on SmolLM2."""

import pytest

from almostlinear.core.section import AuditContext, Budget, Need
from almostlinear.audit.plan import run_sections
from almostlinear.core.models import LoadedModel
from almostlinear.steering.section import CAA_R2, QUICK_STRENGTHS, STRENGTHS, SteeringSection
from tiny_models import TEXTS, build_model, make_tokenizer

BUDGET = Budget(neutral_texts=8, neutral_new_tokens=8, lens_tokens=40, statements=60, fact_candidates=40,
                batch_size=8, quick_mode=True)
PAIRS = [(TEXTS[0], TEXTS[3]), (TEXTS[1], TEXTS[5]), (TEXTS[2], TEXTS[4]), ("the red cat", "the big king")]
PROMPTS = ["the cat is", "a dog", "the old king", "Paris is the", "one two", "Rome is in"]


def test_section_on_a_tiny_model():
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None, sources={"neutral": list(TEXTS)})
    section = SteeringSection(PAIRS, PROMPTS, positive=(" cat", " dog"), negative=(" king", " queen"))
    (result,) = run_sections(ctx, [section], lambda source: list(ctx.sources[source]))
    assert result.status == "ok", result.notes
    r2 = result.metric("steering_linearity_r2")
    assert 0 <= r2.value <= 1 and r2.reference == pytest.approx(CAA_R2, abs=1e-3) and r2.source == "arXiv 2312.06681"
    assert 0 <= result.metric("steering_anti_steerable_fraction").value <= 1
    kls = [m for m in result.metrics if m.name == "steering_kl"]
    assert len(kls) == 4 and all(m.value >= 0 and m.source == "arXiv 2406.11717" for m in kls)
    assert {f.id for f in result.figures} == {"steering_dose_response", "steering_side_effects"}
    assert any("Protocol behind this verdict" in note and "arXiv 2308.10248" in note for note in result.notes)


def test_quick_flag_sizes_the_run_and_the_source_is_asked_for_by_name():
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    for quick, strengths in ((True, QUICK_STRENGTHS), (False, STRENGTHS)):
        budget = Budget(neutral_texts=8, neutral_new_tokens=8, lens_tokens=40, statements=60, fact_candidates=40,
                        quick_mode=quick)
        ctx = AuditContext(loaded, budget, progress=lambda _: None, sources={"neutral": list(TEXTS)})
        section = SteeringSection(PAIRS, PROMPTS)
        assert section.needs(ctx) == [Need("neutral")]  # no activations: the section runs its own passes
        assert section.plan["strengths"] == strengths


def test_caa_reference_linearity():
    # R^2 of CAA's sycophancy curve 0.638, 0.697, 0.757, 0.797, 0.816 against -1..1, by hand
    assert CAA_R2 == pytest.approx(0.9644, abs=5e-4)


@pytest.mark.real
def test_section_on_smollm2(smollm2):
    ctx = AuditContext(smollm2, Budget.quick(), progress=lambda _: None)
    (result,) = run_sections(ctx, [SteeringSection()], lambda source: [])
    assert result.status == "ok", result.notes
    # positive strength raises the odds of positive next words, negative strength lowers them
    effects = {m.note: m.value for m in result.metrics if m.name == "steering_effect"}
    assert effects["strength +0.1"] > 0.3 and effects["strength -0.1"] < -0.3
    assert result.metric("steering_linearity_r2_small").value > 0.9
    assert result.metric("steering_cosine_mean_diff_pca_uncentred").value > 0.8
