"""Activation addition (ActAdd, arXiv 2308.10248): the per-position difference, where it is added,
padding, generation with a KV cache and left padding, files and bad input."""

import pytest
import torch

from almostlinear.core.artifact import load
from almostlinear.core.errors import EmptyDataError, LeverError, ShapeError
from almostlinear.steering import ActivationAddition, fit_activation_addition, generate_with_addition
from almostlinear.steering.actadd import padded_pair
from tiny_models import build_model, make_tokenizer


@pytest.fixture(scope="module")
def llama():
    return build_model("llama"), make_tokenizer()


def _ids(tok, text):
    return tok(text)["input_ids"]


def _hidden(model, ids, layer):
    """The residual stream before block ``layer`` (``hidden_states[layer]``) for one unpadded row."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer][0].double()


def test_difference_is_per_position_with_the_shorter_prompt_padded(llama):
    model, tok = llama
    addition = fit_activation_addition(model, tok, "the big red house", "a dog", layer=1, pad="the")
    pos, neg = _ids(tok, "the big red house"), _ids(tok, "a dog")
    pad = _ids(tok, "the")[0]
    assert addition.tokens == (tuple(pos), tuple(neg + [pad, pad]))
    expected = _hidden(model, pos, 1) - _hidden(model, neg + [pad, pad], 1)
    assert addition.n_positions == 4
    torch.testing.assert_close(addition.difference.double(), expected, rtol=1e-5, atol=1e-5)
    assert addition.site == "resid_pre" and addition.layer == 1
    assert addition.prompts == ("the big red house", "a dog")


def test_an_empty_prompt_is_all_padding(llama):
    model, tok = llama
    a, b = padded_pair(tok, "city of Rome", "", pad="a")
    assert a == _ids(tok, "city of Rome") and b == [_ids(tok, "a")[0]] * 3


def test_adds_each_row_at_the_front_of_the_prompt(llama):
    """At block 0's input the addition is the same as editing the first token embeddings."""
    model, tok = llama
    addition = fit_activation_addition(model, tok, "the king", "a queen", layer=0)
    ids = torch.tensor([_ids(tok, "the cat is on the road")])
    embeds = model.get_input_embeddings()(ids).detach().clone()
    embeds[0, :2] += 2.5 * addition.difference
    with torch.no_grad():
        expected = model(inputs_embeds=embeds).logits
        with addition.apply(model, 2.5):
            steered = model(input_ids=ids).logits
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(steered, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steered, plain)
    torch.testing.assert_close(steered[0, :1], expected[0, :1])


def test_alignment_moves_the_addition_later(llama):
    model, tok = llama
    addition = fit_activation_addition(model, tok, "the king", "a queen", layer=0)
    ids = torch.tensor([_ids(tok, "the cat is on the road")])
    embeds = model.get_input_embeddings()(ids).detach().clone()
    embeds[0, 3:5] += addition.difference
    with torch.no_grad():
        expected = model(inputs_embeds=embeds).logits
        with addition.apply(model, 1.0, alignment=3):
            steered = model(input_ids=ids).logits
    torch.testing.assert_close(steered, expected, rtol=1e-5, atol=1e-5)


def test_a_short_prompt_gets_the_rows_that_fit(llama):
    model, tok = llama
    addition = fit_activation_addition(model, tok, "the big red house", "a dog", layer=0, pad="the")
    ids = torch.tensor([_ids(tok, "one two")])
    embeds = model.get_input_embeddings()(ids).detach().clone()
    embeds[0, :2] += addition.difference[:2]
    with torch.no_grad():
        expected = model(inputs_embeds=embeds).logits
        with addition.apply(model):
            steered = model(input_ids=ids).logits
    torch.testing.assert_close(steered, expected, rtol=1e-5, atol=1e-5)


def test_batched_cached_generation_matches_one_prompt_at_a_time(llama):
    model, tok = llama
    addition = fit_activation_addition(model, tok, "the big red house", "a dog", layer=1, pad="the")
    prompts = ["the cat is on the road", "a dog", "Paris is the capital of France ."]
    together = generate_with_addition(model, tok, prompts, addition, 4.0, max_new_tokens=5, batch_size=3)
    alone = [generate_with_addition(model, tok, [p], addition, 4.0, max_new_tokens=5)[0] for p in prompts]
    assert together == alone
    plain = generate_with_addition(model, tok, prompts, None, max_new_tokens=5, batch_size=3)
    assert plain != together  # the addition changed something


def test_cached_generation_matches_full_passes(llama):
    """With a KV cache each new token is one forward call; it must not be taken for position 0 again.
    Greedy decoding by full passes (no cache) is the reference: there every row lands on its index."""
    model, tok = llama
    addition = fit_activation_addition(model, tok, "the big red house", "a dog", layer=1, pad="the")
    prompt = "one two"  # shorter than the addition: rows 2 and 3 fall on the first two generated tokens
    ids = _ids(tok, prompt)
    with torch.no_grad(), addition.apply(model, 6.0):
        for _ in range(4):
            logits = model(input_ids=torch.tensor([ids])).logits
            ids.append(int(logits[0, -1].argmax()))
    expected = tok.decode(ids[2:], skip_special_tokens=True)
    got = generate_with_addition(model, tok, [prompt], addition, 6.0, max_new_tokens=4)[0]
    assert got.split() == expected.split()


def test_round_trip_and_no_bake(llama, tmp_path):
    model, tok = llama
    addition = fit_activation_addition(model, tok, "the king", "", layer=1, pad="a")
    loaded = load(addition.save(tmp_path / "a.safetensors"))
    assert isinstance(loaded, ActivationAddition)
    assert torch.equal(loaded.difference, addition.difference) and loaded.tokens == addition.tokens
    assert loaded.provenance.method == "actadd" and loaded.provenance.where.positions == "front"
    with pytest.raises(LeverError):
        addition.bake_(model)


def test_bad_input(llama):
    model, tok = llama
    with pytest.raises(EmptyDataError):
        fit_activation_addition(model, tok, "the king", "the king", layer=1)
    with pytest.raises(EmptyDataError):
        fit_activation_addition(model, tok, "", "", layer=1)
    with pytest.raises(ShapeError):
        fit_activation_addition(model, tok, "the king", "a", layer=1, pad="the king")
    addition = fit_activation_addition(model, tok, "the king", "a queen", layer=1)
    with pytest.raises(ShapeError):
        with addition.apply(model, alignment=-1):
            pass
    with pytest.raises(ShapeError):
        ActivationAddition.from_difference(torch.zeros(4), layer=0)


@pytest.mark.real
def test_wedding_addition_raises_wedding_words_on_smollm2(smollm2):
    """The paper's topic pair, aligned as GPT-2's leading token aligns it (arXiv 2308.10248): at block 18
    with c = 1 the next-token log-probability of wedding words rises after neutral openings."""
    eot = "<|endoftext|>"
    addition = fit_activation_addition(smollm2, None, eot + " weddings", eot, layer=18)
    assert addition.n_positions == 2 and torch.equal(addition.difference[0], torch.zeros_like(addition.difference[0]))
    tok = smollm2.tokenizer
    words = [tok(w, add_special_tokens=False)["input_ids"][0] for w in (" wedding", " married", " bride")]
    prompts = [eot + p for p in ("I went to the store and", "The meeting this afternoon was", "Yesterday my friend")]
    gains = []
    for prompt in prompts:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.no_grad():
            plain = smollm2.model(input_ids=ids).logits[0, -1].log_softmax(-1)[words].logsumexp(-1)
            with addition.apply(smollm2, 1.0):
                steered = smollm2.model(input_ids=ids).logits[0, -1].log_softmax(-1)[words].logsumexp(-1)
        gains.append(float(steered - plain))
    assert min(gains) > 0.5, gains


def test_footprint_leaves_out_zero_rows(llama):
    model, tok = llama
    difference = torch.zeros(3, 16)
    difference[1, 2], difference[2, 5] = 1.0, -2.0
    addition = ActivationAddition.from_difference(difference, layer=1)
    basis = addition.footprint()["basis"]
    assert basis.shape == (2, 16) and torch.equal(basis, difference[1:])
