"""The weight_space audit section on a tiny model and on SmolLM2."""

from __future__ import annotations

import pytest
import torch
from tiny_models import WORDS, build_model, make_tokenizer

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.connectivity.section import WeightSpaceSection
from almostlinear.core.models import LoadedModel

QUICK = Budget.quick()


def _texts(n: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (10,), generator=g).tolist()) for _ in range(n)]


def test_section_on_tiny_llama():
    model = build_model("llama")
    tokenizer = make_tokenizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = LoadedModel(model, tokenizer, "tiny-llama", "memory", "causal-lm")
    texts = _texts(8)
    ctx = AuditContext(loaded, QUICK, progress=lambda _: None)
    [result] = run_sections(ctx, [WeightSpaceSection()], lambda source: texts)
    assert result.status == "ok", result.notes
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # cross-entropy at alpha = 0 equals a direct computation on the first six texts
    total = count = 0.0
    for text in texts[:6]:
        ids = tokenizer(text, return_tensors="pt").input_ids
        logits = model(ids).logits[0, :-1].detach()
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    assert result.metric("model_ce_at_start").value == pytest.approx(total / count, rel=1e-5)
    # a random model is at no minimum: the noisy copy differs but need not be worse
    assert result.metric("model_ce_at_noisy_copy").value != result.metric("model_ce_at_start").value
    naive = result.metric("digits_naive_barrier").value
    assert naive > 5 and result.metric("digits_weight_matching_barrier").value < naive / 2
    assert result.metric("digits_task_negation_target_accuracy").value < 0.5
    assert result.metric("digits_naive_barrier").source == "arXiv 2209.04836"
    assert {f.id for f in result.figures} == {"digits_interpolation", "model_noise_line"}


@pytest.mark.real
def test_section_on_smollm2(smollm2):
    from almostlinear import data

    texts = list(data.FALLBACK_TEXTS)[:6]
    ctx = AuditContext(smollm2, QUICK, progress=lambda _: None)
    first = next(smollm2.model.parameters()).clone()
    [result] = run_sections(ctx, [WeightSpaceSection()], lambda source: texts)
    assert result.status == "ok", result.notes
    assert torch.equal(next(smollm2.model.parameters()), first)
    start = result.metric("model_ce_at_start").value
    assert 0 < start < 8
    assert result.metric("model_ce_at_noisy_copy").value > start
    assert 0 < result.metric("model_ce_rise_shape").value < 1


def test_full_budget_adds_the_fine_tune_line(monkeypatch):
    monkeypatch.setattr(WeightSpaceSection, "_digits", lambda self, result, quick: None)  # tested above
    model = build_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    loaded = LoadedModel(model, make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    texts = _texts(16)
    ctx = AuditContext(loaded, Budget.full(), progress=lambda _: None)
    [result] = run_sections(ctx, [WeightSpaceSection()], lambda source: texts)
    assert result.status == "ok", result.notes
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    start, end = result.metric("model_finetune_ce_start").value, result.metric("model_finetune_ce_end").value
    assert start != end
    [line] = [f for f in result.figures if f.id == "model_finetune_line"]
    ces = line.series[0].y
    assert (ces[0], ces[-1]) == (start, end)
    assert result.metric("model_finetune_barrier").value == pytest.approx(max(ces) - (start + end) / 2)
