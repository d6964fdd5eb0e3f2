"""side_effects: KL and cross-entropy change on text, checked against per-text unpadded passes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear.core import hooks
from almostlinear.core.errors import EmptyDataError, NonFiniteError, ShapeError
from almostlinear.core.models import LoadedModel
from almostlinear.steering.cost import SideEffects, side_effects


def _reference(model, tokenizer, texts, intervention):
    """Per text, no padding: F.kl_div and F.cross_entropy summed over every next-token prediction."""
    kl = ce0 = ce1 = 0.0
    n = 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        if ids.shape[1] < 2:
            continue
        with torch.no_grad():
            base = model(input_ids=ids).logits[0, :-1].double()
            with intervention():
                new = model(input_ids=ids).logits[0, :-1].double()
        target = ids[0, 1:]
        log_p, log_q = base.log_softmax(-1), new.log_softmax(-1)
        kl += float(F.kl_div(log_q, log_p, log_target=True, reduction="sum"))
        ce0 += float(F.cross_entropy(base, target, reduction="sum"))
        ce1 += float(F.cross_entropy(new, target, reduction="sum"))
        n += target.numel()
    return kl / n, ce0 / n, ce1 / n, n


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_matches_unpadded_reference(family):
    model, tok = build_model(family), make_tokenizer()
    vector = torch.randn(32, generator=torch.Generator().manual_seed(1))

    def steer():
        return hooks.add(model, "resid_post.0", vector, scale=3.0)

    got = side_effects(model, tok, TEXTS, steer, batch_size=4)
    kl, ce0, ce1, n = _reference(model, tok, TEXTS, steer)
    assert isinstance(got, SideEffects)
    assert got.n_tokens == n
    assert got.kl == pytest.approx(kl, rel=1e-4, abs=1e-7)
    assert got.kl > 1e-4
    assert got.ce_base == pytest.approx(ce0, rel=1e-5)
    assert got.ce_intervened == pytest.approx(ce1, rel=1e-5)
    assert got.delta_ce == pytest.approx(ce1 - ce0, abs=1e-5)
    assert got.kl_max >= got.kl
    assert 0.0 <= got.top1_agreement <= 1.0


def test_batch_size_does_not_change_result():
    model, tok = build_model("llama"), make_tokenizer()

    def steer():
        return hooks.add(model, "resid_pre.1", torch.ones(32), scale=2.0)

    a = side_effects(model, tok, TEXTS, steer, batch_size=1)
    b = side_effects(model, tok, TEXTS, steer, batch_size=6)
    assert a.n_tokens == b.n_tokens
    assert a.kl == pytest.approx(b.kl, rel=1e-4)
    assert a.delta_ce == pytest.approx(b.delta_ce, abs=1e-5)


def test_no_intervention_is_zero_and_model_untouched():
    model, tok = build_model("gpt_neox"), make_tokenizer()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = side_effects(model, tok, TEXTS, None)
    assert got.kl == 0.0 and got.delta_ce == 0.0 and got.top1_agreement == 1.0
    assert got.ce_base == got.ce_intervened > 0
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_skip_first_drops_one_prediction_per_text():
    model, tok = build_model("llama"), make_tokenizer()
    full = side_effects(model, tok, TEXTS, None)
    skipped = side_effects(model, tok, TEXTS, None, skip_first=True)
    assert full.n_tokens - skipped.n_tokens == len(TEXTS)


def test_bad_input():
    model, tok = build_model("llama"), make_tokenizer()
    with pytest.raises(EmptyDataError):
        side_effects(model, tok, [], None)
    with pytest.raises(EmptyDataError):
        side_effects(model, tok, ["the", "a"], None)  # one token each: nothing to predict

    def poison():
        return hooks.replace(model, "resid_post.0", lambda h: h * float("nan"))

    with pytest.raises(NonFiniteError):
        side_effects(model, tok, TEXTS, poison)
    with pytest.raises(ShapeError, match="batch_size"):
        side_effects(model, tok, TEXTS, None, batch_size=0)
    from almostlinear.steering.cost import side_effects_many

    with pytest.raises(EmptyDataError, match="no interventions"):
        side_effects_many(model, tok, TEXTS, {})


def test_a_loaded_model_brings_its_tokenizer():
    model, tok = build_model("llama"), make_tokenizer()
    loaded = LoadedModel(model, tok, "tiny-llama", "memory", "causal-lm")
    shift = lambda: hooks.add(model, "resid_post.0", torch.ones(32))  # noqa: E731
    assert side_effects(loaded, None, TEXTS, shift) == side_effects(model, tok, TEXTS, shift)


def test_many_interventions_share_the_base_pass():
    from almostlinear.steering.cost import side_effects_many

    model, tok = build_model("gpt2"), make_tokenizer()
    a = lambda: hooks.add(model, "resid_pre.1", torch.ones(32), scale=2.0)  # noqa: E731
    b = lambda: hooks.add(model, "resid_post.0", -torch.ones(32))  # noqa: E731
    many = side_effects_many(model, tok, TEXTS, {"a": a, "b": b, "none": None}, batch_size=4)
    for name, fn in (("a", a), ("b", b)):
        one = side_effects(model, tok, TEXTS, fn, batch_size=4)
        assert many[name].kl == pytest.approx(one.kl, rel=1e-6)
        assert many[name].ce_intervened == pytest.approx(one.ce_intervened, rel=1e-6)
    assert many["none"].kl == 0.0 and many["none"].delta_ce == 0.0
