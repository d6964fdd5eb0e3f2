import pytest
import torch
from tiny_models import WORDS, build_model, make_tokenizer

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.models import LoadedModel
from almostlinear.lens.section import LogitLensSection


def _texts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (12,), generator=g).tolist()) for _ in range(n)]


def _run(lens_tokens=60, n_texts=200, quick=True):
    model = build_model("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # peaked final distributions: the logit lens is measurably off
    loaded = LoadedModel(model, make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    budget = Budget(neutral_texts=n_texts, neutral_new_tokens=12, lens_tokens=lens_tokens, statements=8,
                    fact_candidates=8, batch_size=16, quick_mode=quick)
    texts = _texts(n_texts)
    ctx = AuditContext(loaded, budget, progress=lambda _: None, sources={"neutral": texts})
    [result] = run_sections(ctx, [LogitLensSection()], lambda source: texts)
    return result


def test_section_compares_logit_and_affine_lenses_on_held_out_text():
    result = _run()
    assert result.status == "ok", result.notes
    assert result.title == "Lenses"
    assert result.metric("logit_lens_kl_last_block").value == pytest.approx(0.0, abs=1e-4)
    # 12 new tokens per text count as 16 (the planner's floor): 4 held-out texts of 11 scored tokens each
    assert result.metric("tokens").value == 4 * 11
    for layer in (-1, 0, 1):
        assert result.metric("affine_lens_kl", layer).value >= 0
        assert 0 <= result.metric("logit_lens_top1_agreement", layer).value <= 1
    assert result.metric("affine_fit_tokens").value == (200 - 4) * 11  # every other text fits the lens
    assert result.metric("layers_where_affine_beats_logit").value == 2
    assert result.metric("share_of_states_where_affine_beats_logit").value == 1.0  # 2 of the 2 states before the last
    assert result.metric("median_affine_lens_kl").value < result.metric("median_logit_lens_kl").value
    assert [s.name for s in result.figures[0].series] == ["logit lens", "affine lens"]
    assert "beats the logit lens at every layer before the last" in " ".join(result.notes)


def test_outside_quick_mode_the_bias_only_and_tuned_lenses_join():
    result = _run(quick=False)
    assert result.status == "ok", result.notes
    names = [s.name for s in result.figures[0].series]
    assert names == ["logit lens", "affine lens", "bias-only lens", "tuned lens"]
    for layer in (-1, 0):
        assert result.metric("bias_lens_kl", layer).value < result.metric("logit_lens_kl", layer).value
        assert result.metric("tuned_lens_kl", layer).value >= 0


def test_section_without_fitting_texts_still_reports_the_logit_lens():
    result = _run(lens_tokens=60, n_texts=4)
    assert result.status == "ok", result.notes
    assert [s.name for s in result.figures[0].series] == ["logit lens"]
    assert any("only the logit lens" in note for note in result.notes)


def test_too_few_validation_texts_fall_back_to_a_fixed_ridge():
    result = _run(lens_tokens=60, n_texts=6)  # two fitting texts, indices 4 and 5: none validates
    assert result.status == "ok", result.notes
    assert any("fixed relative ridge" in note for note in result.notes)


def test_section_is_skipped_on_a_model_without_an_output_head():
    loaded = LoadedModel(build_model("bert"), make_tokenizer(), "tiny-bert", "memory", "encoder")
    ctx = AuditContext(loaded, Budget.quick(), progress=lambda _: None)
    assert "no output head" in LogitLensSection().applicable(ctx)
