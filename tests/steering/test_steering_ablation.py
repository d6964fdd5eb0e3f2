"""Directional ablation: hooked at every layer, baked into the weights, and the two agree."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear.core import hooks
from almostlinear.core.artifact import FingerprintWarning, load
from almostlinear.core.errors import LayerError, NonFiniteError, ShapeError
from almostlinear.core.locate import locate
from almostlinear.core.models import fingerprint
from almostlinear.steering.ablation import (
    DirectionalAblation,
    ablate,
    bake_ablation_,
    baked_ablation,
    orthonormal_basis,
)
from almostlinear.steering.cost import side_effects

FAMILIES = ["llama", "gpt2", "gpt_neox"]


def _inputs(tok):
    tok.padding_side = "right"
    return tok(list(TEXTS), return_tensors="pt", padding=True)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, state):
    now = model.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)


def _direction(seed=3, d=32):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_baked_matches_hooked(family):
    model, tok = build_model(family).eval(), make_tokenizer()
    inputs = _inputs(tok)
    direction = _direction()
    with torch.no_grad():
        plain = model(**inputs).logits
        with ablate(model, direction):
            hooked = model(**inputs).logits
        before = _state(model)
        record = bake_ablation_(model, direction)
        baked = model(**inputs).logits
        record.undo()
        again = model(**inputs).logits
    mask = inputs["attention_mask"].bool()
    assert (hooked - plain)[mask].abs().max() > 1e-3  # the ablation does something
    torch.testing.assert_close(baked[mask], hooked[mask], rtol=1e-4, atol=1e-4)
    assert _same(model, before)
    assert torch.equal(again, plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_stream_never_carries_the_direction(family):
    """Independent check: the residual stream after every block is orthogonal to the direction."""
    model, tok = build_model(family).eval(), make_tokenizer()
    inputs = _inputs(tok)
    unit = _direction() / _direction().norm()
    structure = locate(model)
    sites = [f"resid_post.{i}" for i in range(structure.n_layers)]
    with torch.no_grad(), baked_ablation(model, unit):
        with hooks.record(model, sites) as rec:
            model(**inputs)
    for s in sites:
        x = rec[s]
        assert (x @ unit).abs().max() < 1e-4 * x.norm(dim=-1).max()


def test_tied_head_is_untied_then_retied():
    model = build_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    structure = locate(model)
    if not structure.tied_embeddings:
        pytest.skip("this transformers version does not tie the tiny Llama's head")
    head_weight = model.get_output_embeddings().weight.detach().clone()
    with baked_ablation(model, _direction()):
        assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
        assert torch.equal(model.get_output_embeddings().weight, head_weight)  # the head keeps its weights
        assert model.config.tie_word_embeddings is False
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config.tie_word_embeddings is True
    assert torch.equal(model.get_output_embeddings().weight, head_weight)


def test_ablating_twice_is_ablating_once_and_subspaces():
    model, tok = build_model("llama").eval(), make_tokenizer()
    inputs = _inputs(tok)
    span = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        with ablate(model, span):
            once = model(**inputs).logits
            with ablate(model, span[1] * -3.0):  # inside the span: changes nothing more
                twice = model(**inputs).logits
    torch.testing.assert_close(once, twice, rtol=1e-5, atol=1e-5)
    basis = orthonormal_basis(span)
    torch.testing.assert_close(basis @ basis.T, torch.eye(2, dtype=torch.float64))


def test_context_restores_on_exception():
    model, tok = build_model("gpt2").eval(), make_tokenizer()
    inputs = _inputs(tok)
    with torch.no_grad():
        plain = model(**inputs).logits
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with ablate(model, _direction()):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with baked_ablation(model, _direction()):
            raise RuntimeError("boom")
    assert _same(model, before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain)


def test_layer_subset_only_hooks_those_layers():
    model, tok = build_model("llama").eval(), make_tokenizer()
    inputs = _inputs(tok)
    unit = _direction() / _direction().norm()
    with torch.no_grad(), ablate(model, unit, layers=[1]):
        with hooks.record(model, ["resid_pre.0", "resid_pre.1", "resid_post.1"]) as rec:
            model(**inputs)
    assert (rec["resid_pre.0"] @ unit).abs().max() > 1e-3
    assert (rec["resid_pre.1"] @ unit).abs().max() < 1e-5
    assert (rec["resid_post.1"] @ unit).abs().max() < 1e-4


def test_bad_input():
    model = build_model("llama")
    with pytest.raises(ShapeError):
        with ablate(model, torch.ones(7)):
            pass
    with pytest.raises(NonFiniteError):
        with ablate(model, torch.full((32,), float("nan"))):
            pass
    with pytest.raises(ShapeError):
        with ablate(model, torch.zeros(32)):
            pass
    with pytest.raises(LayerError):
        with ablate(model, torch.ones(32), layers=[5]):
            pass
    before = _state(model)
    with pytest.raises(ShapeError):
        bake_ablation_(model, torch.ones(31))
    assert _same(model, before)


def test_artifact_round_trip_and_fingerprint(tmp_path):
    model, tok = build_model("gpt_neox").eval(), make_tokenizer()
    inputs = _inputs(tok)
    art = DirectionalAblation.from_direction(_direction(), model_fingerprint=fingerprint(model),
                                            method="mean_diff", site="resid_pre.1")
    back = load(art.save(tmp_path / "abl.safetensors"))
    assert isinstance(back, DirectionalAblation)
    assert torch.equal(back.directions, art.directions) and back.layers == ()
    assert back.provenance.extra["operation"] == "directional-ablation"
    with torch.no_grad():
        with back.apply(model):
            hooked = model(**inputs).logits
        record = back.bake_(model)
        baked = model(**inputs).logits
        record.undo()
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(baked[mask], hooked[mask], rtol=1e-4, atol=1e-4)
    other = build_model("gpt_neox", seed=1)
    with pytest.warns(FingerprintWarning):
        with back.apply(other):
            pass
    with pytest.raises(ShapeError):
        DirectionalAblation.from_direction(_direction(), layers=[0]).bake_(model)


def test_side_effects_of_ablation_are_reported():
    model, tok = build_model("llama"), make_tokenizer()
    cost = side_effects(model, tok, TEXTS, lambda: ablate(model, _direction()))
    assert cost.kl > 0 and cost.n_tokens > 0


@pytest.mark.real
def test_smollm2_baked_matches_hooked(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    texts = ["The capital of France is Paris.", "Bees make honey in the summer."]
    tok.padding_side = "right"
    inputs = tok(texts, return_tensors="pt", padding=True)
    direction = torch.randn(smollm2.structure.d_model, generator=torch.Generator().manual_seed(0))
    before_ptr = model.get_output_embeddings().weight.data_ptr()
    with torch.no_grad():
        plain = model(**inputs).logits
        with ablate(smollm2, direction):
            hooked = model(**inputs).logits
        with baked_ablation(smollm2, direction):
            baked = model(**inputs).logits
        again = model(**inputs).logits
    mask = inputs["attention_mask"].bool()
    diff = (baked - hooked)[mask].abs().max() / hooked[mask].abs().max()
    assert diff < 1e-3
    assert (hooked - plain)[mask].abs().max() > 1e-2
    assert torch.equal(again, plain)
    assert model.get_output_embeddings().weight.data_ptr() == before_ptr
