import pytest
import torch
import torch.nn.functional as F
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear import collect, locate
from almostlinear.core.artifact import Where
from almostlinear.core.errors import LeverError
from almostlinear.lens import (
    AffineLensFitter,
    LogitLens,
    TunedLens,
    TunedLensSettings,
    TunedLensTrainer,
    lens_sites,
    train_tuned_lens,
)


def _states(family="llama", texts=TEXTS):
    model, tokenizer = build_model(family), make_tokenizer()
    structure = locate(model)
    with torch.no_grad():
        structure.unembedding.weight.mul_(10)  # peaked final distributions: the logit lens is measurably off
    acts = collect(model, tokenizer, list(texts) * 3, lens_sites(structure), skip_first=True, structure=structure)
    return model, structure, [acts[s].clone() for s in lens_sites(structure)]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_zero_tuned_lens_is_exactly_the_logit_lens(family):
    _, structure, states = _states(family)
    decoder = LogitLens.from_structure(structure)
    lens = TunedLens.zeros(structure.n_layers + 1, structure.d_model).bind(structure)
    with torch.no_grad():
        for s, h in enumerate(states):
            assert torch.equal(lens.logits(h, s), decoder(h))


def test_first_step_is_the_papers_sgd_update():
    # From zero, weight decay and momentum history play no part: the first Nesterov step moves each
    # parameter by -lr * (1 + momentum) * clipped gradient, with lr = lr_scale * (1 - momentum).
    model, structure, states = _states()
    decoder = LogitLens.from_structure(structure)
    S, d = len(states), structure.d_model
    A = torch.zeros(S - 1, d, d, requires_grad=True)
    b = torch.zeros(S - 1, d, requires_grad=True)
    with torch.no_grad():
        target = torch.log_softmax(decoder(states[-1]), -1)
    norm, head = structure.final_norm, structure.unembedding
    total = 0
    for s in range(S - 1):  # an independent formulation of the loss: sum over states of the batch-mean KL
        translated = states[s] + states[s] @ A[s] + b[s]
        logits = F.linear(norm(translated), head.weight)
        total = total + F.kl_div(torch.log_softmax(logits, -1), target, log_target=True, reduction="batchmean")
    gA, gb = torch.autograd.grad(total, [A, b])
    scale = min(1.0, 1.0 / float(torch.cat([gA.flatten(), gb.flatten()]).norm()))
    settings = TunedLensSettings(chunk=7)  # several chunks per step: the sum must not depend on chunking
    trainer = TunedLensTrainer(decoder, TunedLens.zeros(S, d), steps=4, settings=settings)
    trainer.step(states)
    step = -0.1 * 1.9 * scale
    assert torch.allclose(trainer.A.detach(), step * gA, atol=1e-6, rtol=1e-4)
    assert torch.allclose(trainer.b.detach(), step * gb, atol=1e-6, rtol=1e-4)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 3 / 4)  # linear decay
    assert all(p.grad is None for p in model.parameters())  # the model is never touched


def test_a_few_steps_reduce_the_training_kl():
    _, structure, states = _states()
    decoder = LogitLens.from_structure(structure)
    trainer = TunedLensTrainer(decoder, TunedLens.zeros(len(states), structure.d_model), steps=8)
    before = trainer.kl(states)
    for _ in range(8):
        trainer.step(states)
    assert trainer.kl(states) < 0.8 * before
    lens = trainer.result()
    assert lens.steps == 8 and len(lens.history) == 8 and lens.history[0] == pytest.approx(before, rel=1e-5)
    assert torch.equal(lens.A[-1], torch.zeros_like(lens.A[-1])) and torch.equal(lens.b[-1], torch.zeros_like(lens.b[-1]))
    with pytest.raises(LeverError, match="steps"):
        trainer.step(states)


def test_warm_start_keeps_the_affine_translators():
    _, structure, states = _states()
    affine = AffineLensFitter(len(states), structure.d_model).update(states).result(ridge=0.1)
    trainer = TunedLensTrainer(LogitLens.from_structure(structure), affine, steps=1)
    start = trainer.result()
    assert torch.equal(start.A, affine.A) and torch.equal(start.b, affine.b)


def test_train_tuned_lens_end_to_end():
    model, tokenizer = build_model("llama"), make_tokenizer()
    settings = TunedLensSettings(tokens_per_step=16)
    lens = train_tuned_lens(model, tokenizer, TEXTS, token_budget=64, settings=settings, progress=False)
    assert lens.steps == 4 and lens.tokens == 64 and lens.kind == "lens.tuned"
    assert lens.provenance.where == Where("resid_post", ()) and lens.provenance.units is None
    assert lens.provenance.extra["init"] == "TunedLens"
    with pytest.raises(ValueError, match="no texts"):
        train_tuned_lens(model, tokenizer, [], progress=False)
