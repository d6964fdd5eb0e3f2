"""The tuned lens on half-precision models: float32 translators and optimiser state, float32 decoding
while training, and KL within 5 % of the float32 model's."""

import pytest
import torch
from tiny_models import TEXTS, WORDS, build_model, make_tokenizer

from almostlinear import locate
from almostlinear.audit.plan import run_sections
from almostlinear.core.models import LoadedModel
from almostlinear.core.section import AuditContext, Budget
from almostlinear.lens import LogitLens, TunedLens, TunedLensSettings, TunedLensTrainer, train_tuned_lens
from almostlinear.lens.section import LogitLensSection

HALF = [torch.bfloat16, torch.float16]


def _texts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (12,), generator=g).tolist()) for _ in range(n)]


def _model(dtype):
    model = build_model("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # peaked final distributions: the logit lens is measurably off
    return model.to(dtype)


def _section(dtype, n_texts=200):
    loaded = LoadedModel(_model(dtype), make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    budget = Budget(neutral_texts=n_texts, neutral_new_tokens=12, lens_tokens=60, statements=8,
                    fact_candidates=8, batch_size=16, quick_mode=False)
    texts = _texts(n_texts)
    ctx = AuditContext(loaded, budget, progress=lambda _: None, sources={"neutral": texts})
    [result] = run_sections(ctx, [LogitLensSection()], lambda source: texts)
    return result


@pytest.mark.parametrize("dtype", HALF)
def test_train_tuned_lens_on_a_half_precision_model(dtype):
    model = _model(dtype)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    lens = train_tuned_lens(model, make_tokenizer(), TEXTS, token_budget=64,
                            settings=TunedLensSettings(tokens_per_step=16), progress=False)
    assert lens.steps == 4 and lens.A.dtype == torch.float32 and lens.b.dtype == torch.float32
    assert lens.history[-1] < lens.history[0]
    assert all(torch.equal(p, before[name]) and p.dtype == dtype for name, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_trainer_state_stays_float32_on_a_bf16_head():
    model = _model(torch.bfloat16)
    structure = locate(model)
    trainer = TunedLensTrainer(LogitLens.from_structure(structure),
                               TunedLens.zeros(structure.n_layers + 1, structure.d_model), steps=2)
    states = [torch.randn(20, structure.d_model, dtype=torch.bfloat16) for _ in range(structure.n_layers + 1)]
    trainer.step(states)
    assert trainer.A.dtype == trainer.b.dtype == torch.float32
    momentum = trainer.optimizer.state[trainer.A]["momentum_buffer"]
    assert momentum.dtype == torch.float32 and momentum.abs().sum() > 0


def test_bound_lens_decodes_half_precision_states():
    model = _model(torch.bfloat16)
    structure = locate(model)
    h = torch.randn(5, structure.d_model, dtype=torch.bfloat16)
    zero = TunedLens.zeros(structure.n_layers + 1, structure.d_model).bind(structure)
    assert torch.equal(zero.logits(h, 0), LogitLens.from_structure(structure)(h))  # still exactly the logit lens
    assert zero.logits(h, 0).dtype == torch.bfloat16


def test_lens_section_in_half_precision_matches_float32():
    reference = _section(torch.float32)
    assert reference.status == "ok", reference.notes
    kl32 = reference.metric("median_tuned_lens_kl").value
    for dtype in HALF:
        result = _section(dtype)
        assert result.status == "ok", result.notes
        assert [s.name for s in result.figures[0].series][-1] == "tuned lens"
        assert result.metric("median_tuned_lens_kl").value == pytest.approx(kl32, rel=0.05)
        for layer in (-1, 0):
            assert result.metric("tuned_lens_kl", layer).value == pytest.approx(
                reference.metric("tuned_lens_kl", layer).value, rel=0.05)
