"""Directional ablation: hooked at every layer, baked into the weights, and the two agree."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear.core import hooks
from almostlinear.core.artifact import FingerprintWarning, load
from almostlinear.core.errors import ArtifactError, LayerError, LeverError, NonFiniteError, ShapeError
from almostlinear.core.lever import Baked, Lever
from almostlinear.core.locate import locate
from almostlinear.core.models import LoadedModel, fingerprint
from almostlinear.steering.ablation import ABLATED_SITES, ablate, bake_ablation_, baked_ablation, orthonormal_basis
from almostlinear.steering.artifact import DirectionalAblation
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
        record.undo_()
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
    assert isinstance(back, DirectionalAblation) and isinstance(back, Lever)
    assert back.kind == "steering.ablation" and back.strength_units == ("fraction",)
    assert torch.equal(back.directions, art.directions) and back.layers == ()
    assert back.provenance == art.provenance and back.provenance.units == "fraction"
    assert (back.provenance.site, back.provenance.layer) == ("resid_pre", 1)  # where the direction was read
    assert back.provenance.extra == {"ablated_sites": ["resid_pre", "attn_out", "mlp_out"]}
    before = _state(model)
    with torch.no_grad():
        with back.apply(model) as module:
            assert module is model
            hooked = model(**inputs).logits
        record = back.bake_(model)
        baked = model(**inputs).logits
        record.undo_()
    assert _same(model, before)
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(baked[mask], hooked[mask], rtol=1e-4, atol=1e-4)
    other = build_model("gpt_neox", seed=1)
    with pytest.warns(FingerprintWarning):
        with back.apply(other):
            pass
    with pytest.raises(ArtifactError):
        with back.apply(other, strict=True):
            pass
    with pytest.raises(LeverError, match="all-layer"):
        DirectionalAblation.from_direction(_direction(), layers=[0]).bake_(model)
    assert _same(model, before)


def test_strength_is_the_fraction_removed():
    model, tok = build_model("llama").eval(), make_tokenizer()
    inputs = _inputs(tok)
    unit = _direction() / _direction().norm()
    with torch.no_grad():
        plain = model(**inputs).logits
        with ablate(model, unit, strength=0.0):
            assert torch.equal(model(**inputs).logits, plain)
        with hooks.record(model, ["resid_pre.1"]) as rec:
            model(**inputs)
        for fraction in (0.5, 1.0):
            with ablate(model, unit, strength=fraction, layers=[1]):
                with hooks.record(model, ["resid_pre.1"]) as ablated:
                    model(**inputs)
            # the block's input keeps 1 - s of its component along the direction, and nothing else moves
            expected = rec["resid_pre.1"] - fraction * (rec["resid_pre.1"] @ unit)[:, None] * unit
            torch.testing.assert_close(ablated["resid_pre.1"], expected, rtol=1e-5, atol=1e-5)


def test_baked_fraction_scales_each_writers_component():
    model = build_model("gpt2").eval()
    unit = (_direction() / _direction().norm()).double()
    before = _state(model)
    writers = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.mlp.c_proj.bias"]
    record = DirectionalAblation.from_direction(unit).bake_(model, 0.5)
    after = model.state_dict()
    for name in writers:
        torch.testing.assert_close((after[name].double() @ unit), 0.5 * (before[name].double() @ unit),
                                   rtol=1e-5, atol=1e-6)
    # a Conv1D writes x @ W: its output component along the direction is W @ unit
    name = "transformer.h.0.attn.c_proj.weight"
    torch.testing.assert_close(after[name].double() @ unit, 0.5 * (before[name].double() @ unit), rtol=1e-5,
                               atol=1e-6)
    record.undo_()
    assert _same(model, before)
    zero = DirectionalAblation.from_direction(unit).bake_(model, 0.0)
    assert _same(model, before)
    zero.undo_()


def test_bake_undone_through_a_file_and_a_loaded_model(tmp_path):
    model, tok = build_model("llama").eval(), make_tokenizer()
    loaded = LoadedModel(model, tok, "tiny-llama", "memory", "causal-lm")
    inputs = _inputs(tok)
    art = DirectionalAblation.from_direction(_direction(), model_fingerprint=fingerprint(model))
    before = _state(model)
    with torch.no_grad():
        with art.apply(loaded) as module:
            assert module is model
            hooked = model(**inputs).logits
        record = art.bake_(loaded)
        assert isinstance(record, Baked) and record.on_undo is None  # the tiny Llama's head is not tied
        baked = model(**inputs).logits
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(baked[mask], hooked[mask], rtol=1e-4, atol=1e-4)
    Baked.load(record.save(tmp_path / "baked.safetensors")).undo_(model)
    assert _same(model, before)


def _gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from tiny_models import D_MLP, D_MODEL, N_LAYERS, VOCAB

    return Gemma2ForCausalLM(Gemma2Config(hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
                                          num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                          vocab_size=VOCAB, max_position_embeddings=64)).eval()


@pytest.mark.parametrize("make", [lambda: build_model("bert"), _gemma2], ids=["bert", "gemma2"])
def test_bake_refuses_post_norm_blocks_before_any_change(make):
    model = make()
    before = _state(model)
    with pytest.raises(LeverError, match="post-norm"):
        bake_ablation_(model, _direction())
    assert _same(model, before)
    with ablate(model, _direction()):  # the hooked form works there
        pass


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


def test_a_file_of_format_1_loads_in_todays_shape(tmp_path):
    from almostlinear.core.artifact import write_file

    basis = orthonormal_basis(_direction()).float()
    header = {"kind": "directional-ablation", "format_version": 1, "fields": {"layers": [1]},
              "provenance": {"site": "resid_pre.1", "method": "mean_diff",
                             "units": "unit directions in the residual stream",
                             "extra": {"operation": "directional-ablation",
                                       "ablated_sites": ["resid_pre", "attn_out", "mlp_out"]},
                             "library_version": "0.1.0"}}
    back = load(write_file(tmp_path / "old.safetensors", {"directions": basis}, header))
    assert isinstance(back, DirectionalAblation) and back.layers == (1,) and torch.equal(back.directions, basis)
    assert back.provenance.units == "fraction" and back.provenance.extra == {"ablated_sites": list(ABLATED_SITES)}
    assert (back.provenance.site, back.provenance.layer) == ("resid_pre", 1)
