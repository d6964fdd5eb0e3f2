"""Reading residual directions as tokens: the folded-norm convention against hand-written formulas."""

import pytest
import torch

from almostlinear.core.errors import ShapeError
from almostlinear.core.locate import locate
from almostlinear.spectra import TokenReader, decode_each
from tiny_models import D_MODEL, build_model, make_tokenizer


def _directions(n=5, seed=0):
    return torch.randn(n, D_MODEL, generator=torch.Generator().manual_seed(seed))


def test_rmsnorm_scale_is_folded_into_the_unembedding():
    model = build_model("llama")
    reader = TokenReader.from_structure(locate(model))
    v = _directions()
    manual = (v * model.model.norm.weight.detach()) @ model.lm_head.weight.detach().T
    assert torch.allclose(reader.logits(v), manual, rtol=1e-5, atol=1e-6)


def test_gemma_offset_scale_is_read_from_the_norm_itself():
    model = build_model("gemma")  # GemmaRMSNorm multiplies by (1 + weight)
    reader = TokenReader.from_structure(locate(model))
    v = _directions()
    manual = (v * (1 + model.model.norm.weight.detach())) @ model.lm_head.weight.detach().T
    assert torch.allclose(reader.logits(v), manual, rtol=1e-5, atol=1e-6)


def test_layernorm_is_read_centred_without_its_bias():
    model = build_model("gpt2")
    reader = TokenReader.from_structure(locate(model))
    v = _directions()
    centred = v - v.mean(-1, keepdim=True)
    rms, std = v.pow(2).mean(-1, keepdim=True).sqrt(), v.var(-1, unbiased=False, keepdim=True).sqrt()
    folded = model.transformer.ln_f.weight.detach() * centred * (rms / std)
    manual = folded @ model.lm_head.weight.detach().T
    assert torch.allclose(reader.logits(v), manual, rtol=1e-4, atol=1e-5)
    assert torch.allclose(reader.logits(-v), -manual, rtol=1e-4, atol=1e-5)  # odd in v: no bias


def test_top_tokens_are_the_extremes_of_the_logits_for_both_signs():
    model = build_model("llama")
    tokenizer = make_tokenizer()
    reader = TokenReader.from_structure(locate(model))
    v = _directions(3)
    logits = (v * model.model.norm.weight.detach()) @ model.lm_head.weight.detach().T
    found = reader.top_tokens(v, tokenizer, k=4)
    for row, direction in zip(logits, found):
        assert set(direction.positive_ids) == set(row.topk(4).indices.tolist())
        assert set(direction.negative_ids) == set((-row).topk(4).indices.tolist())
        assert direction.positive == [tokenizer.decode([i]) for i in direction.positive_ids]
    pos, neg = reader.top_ids(v, k=4, chunk=2)  # chunking gives the same answer
    assert [d.positive_ids for d in found] == pos.tolist() and [d.negative_ids for d in found] == neg.tolist()


def test_an_encoder_is_read_through_its_input_embedding():
    model = build_model("bert")
    reader = TokenReader.from_structure(locate(model))
    v = _directions(2)
    assert torch.allclose(reader.logits(v), v @ model.embeddings.word_embeddings.weight.detach().T, atol=1e-6)


def test_bad_directions_are_refused():
    reader = TokenReader.from_structure(locate(build_model("llama")))
    with pytest.raises(ShapeError, match="zero vector"):
        reader.logits(torch.zeros(D_MODEL))
    with pytest.raises(ShapeError, match="expected directions"):
        reader.logits(torch.randn(2, D_MODEL + 1))
    with pytest.raises(ValueError, match="k must"):
        reader.top_ids(torch.randn(D_MODEL), k=0)


def test_decode_each_decodes_tokens_one_by_one():
    tokenizer = make_tokenizer()
    ids = tokenizer("the cat")["input_ids"]
    assert decode_each(tokenizer, ids) == ["the", "cat"]
