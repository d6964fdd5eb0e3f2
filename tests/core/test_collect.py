"""collect / stream: real tokens only, positions, batching invariance, logits, encoders, errors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import D_MLP, D_MODEL, N_LAYERS, PAD_ID, TEXTS, build_model

from almostlinear import collect, record, stream
from almostlinear.core.errors import EmptyDataError, LayerError
from almostlinear.core.sites import Site

SITES = ["resid_post.0", "mlp_key.1", f"resid_pre.{N_LAYERS - 1}"]


def _ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


def _alone(model, tokenizer, text, site):
    """Activations of one text run on its own, unpadded: ``[n_tokens, d]``."""
    inputs = tokenizer([text], return_tensors="pt")
    with torch.no_grad(), record(model, site) as rec:
        out = model(**inputs)
    return rec[site], getattr(out, "logits", None)


def test_only_real_tokens(tiny_model, tiny_tokenizer):
    _, model = tiny_model
    acts = collect(model, tiny_tokenizer, TEXTS, SITES, batch_size=4)
    lengths = [len(_ids(tiny_tokenizer, t)) for t in TEXTS]
    assert len(acts) == sum(lengths)
    assert acts["resid_post.0"].shape == (sum(lengths), D_MODEL)
    assert acts[Site("mlp_key", 1)].shape == (sum(lengths), D_MLP)
    assert acts.sites == [Site.parse(s) for s in SITES]
    assert not (acts.token_ids == PAD_ID).any()
    expected_ids = torch.tensor([i for t in TEXTS for i in _ids(tiny_tokenizer, t)])
    assert torch.equal(acts.token_ids, expected_ids)
    assert torch.equal(acts.text_index, torch.tensor([k for k, n in enumerate(lengths) for _ in range(n)]))
    assert torch.equal(acts.position, torch.tensor([i for n in lengths for i in range(n)]))
    nxt = torch.tensor([x for t in TEXTS for x in (_ids(tiny_tokenizer, t)[1:] + [-1])])
    assert torch.equal(acts.next_token_ids, nxt)
    assert acts.logits is None
    for site in SITES:
        assert torch.isfinite(acts[site]).all()


def test_matches_each_text_run_alone(tiny_model, tiny_tokenizer):
    _, model = tiny_model
    acts = collect(model, tiny_tokenizer, TEXTS, SITES, batch_size=3)
    for k, text in enumerate(TEXTS):
        for site in SITES:
            alone, _ = _alone(model, tiny_tokenizer, text, site)
            assert torch.allclose(acts[site][acts.text_index == k], alone, atol=1e-5)


def test_batch_size_does_not_change_results(tiny_model, tiny_tokenizer):
    _, model = tiny_model
    one = collect(model, tiny_tokenizer, TEXTS, SITES, batch_size=1)
    four = collect(model, tiny_tokenizer, TEXTS, SITES, batch_size=4)
    assert torch.equal(one.token_ids, four.token_ids)
    assert torch.equal(one.position, four.position)
    for site in SITES:
        assert torch.allclose(one[site], four[site], atol=1e-5)


def test_skip_first(tiny_llama, tiny_tokenizer):
    full = collect(tiny_llama, tiny_tokenizer, TEXTS, SITES)
    skipped = collect(tiny_llama, tiny_tokenizer, TEXTS, SITES, skip_first=True)
    assert len(skipped) == len(full) - len(TEXTS)
    assert (skipped.position > 0).all()
    keep = full.position > 0
    assert torch.equal(skipped.token_ids, full.token_ids[keep])
    assert torch.equal(skipped.text_index, full.text_index[keep])
    for site in SITES:
        assert torch.allclose(skipped[site], full[site][keep], atol=1e-6)


def test_skip_first_with_last_position(tiny_llama, tiny_tokenizer):
    texts = ["a", "the cat", "one two three"]
    acts = collect(tiny_llama, tiny_tokenizer, texts, "resid_post.0", positions="last", skip_first=True)
    # "a" has only its first token, which is skipped
    assert acts.text_index.tolist() == [1, 2]
    assert acts.position.tolist() == [1, 2]


@pytest.mark.parametrize("positions, expected", [("last", lambda n: [n - 1]), ("first", lambda n: [0]),
                                                 ([0, -1], lambda n: sorted({0, n - 1}))])
def test_positions(tiny_llama, tiny_tokenizer, positions, expected):
    acts = collect(tiny_llama, tiny_tokenizer, TEXTS, "resid_post.1", positions=positions, batch_size=4)
    lengths = [len(_ids(tiny_tokenizer, t)) for t in TEXTS]
    assert acts.position.tolist() == [i for n in lengths for i in expected(n)]
    assert acts.text_index.tolist() == [k for k, n in enumerate(lengths) for _ in expected(n)]


def test_logits_equal_the_models(tiny_causal, tiny_tokenizer):
    _, model = tiny_causal
    acts = collect(model, tiny_tokenizer, TEXTS, "resid_post.0", logits=True, batch_size=4)
    assert acts.logits.shape == (len(acts), model.config.vocab_size)
    for k, text in enumerate(TEXTS):
        _, logits = _alone(model, tiny_tokenizer, text, "resid_post.0")
        assert torch.allclose(acts.logits[acts.text_index == k], logits[0], atol=1e-5)
    without = collect(model, tiny_tokenizer, TEXTS, "resid_post.0", batch_size=4)
    assert torch.allclose(without["resid_post.0"], acts["resid_post.0"], atol=1e-6)


def test_logits_at_last_position(tiny_llama, tiny_tokenizer):
    acts = collect(tiny_llama, tiny_tokenizer, TEXTS, "resid_post.1", positions="last", logits=True)
    assert acts.logits.shape == (len(TEXTS), tiny_llama.config.vocab_size)
    for k, text in enumerate(TEXTS):
        _, logits = _alone(tiny_llama, tiny_tokenizer, text, "resid_post.1")
        assert torch.allclose(acts.logits[k], logits[0, -1], atol=1e-5)


def test_encoder_without_logits(tiny_tokenizer):
    bert = build_model("bert")
    acts = collect(bert, tiny_tokenizer, TEXTS, ["resid_post.1", "attn_out.0"], batch_size=4)
    assert acts["resid_post.1"].shape == (sum(len(_ids(tiny_tokenizer, t)) for t in TEXTS), D_MODEL)
    assert acts.logits is None
    with pytest.raises(EmptyDataError, match="no output head"):
        collect(bert, tiny_tokenizer, TEXTS, "resid_post.1", logits=True)


@pytest.mark.parametrize("texts", [[], [""], ["fine", ""], [None]])
def test_empty_texts(tiny_llama, tiny_tokenizer, texts):
    with pytest.raises(EmptyDataError):
        collect(tiny_llama, tiny_tokenizer, texts, "resid_post.0")


def test_bad_arguments(tiny_llama, tiny_tokenizer):
    with pytest.raises(ValueError, match="batch_size"):
        collect(tiny_llama, tiny_tokenizer, TEXTS, "resid_post.0", batch_size=0)
    with pytest.raises(LayerError):
        collect(tiny_llama, tiny_tokenizer, TEXTS, f"resid_post.{N_LAYERS}")


def test_stream_and_progress(tiny_llama, tiny_tokenizer):
    done = []
    batches = list(stream(tiny_llama, tiny_tokenizer, TEXTS, "mlp_out.0", batch_size=4, progress=done.append))
    assert done == [4, 2]
    assert [b.text_index.unique().tolist() for b in batches] == [[0, 1, 2, 3], [4, 5]]
    assert all(len(b) == b.activations[Site("mlp_out", 0)].shape[0] for b in batches)
    whole = collect(tiny_llama, tiny_tokenizer, TEXTS, "mlp_out.0", batch_size=4)
    assert torch.equal(torch.cat([b.activations[Site("mlp_out", 0)] for b in batches]), whole["mlp_out.0"])


def test_truncation(tiny_llama, tiny_tokenizer):
    acts = collect(tiny_llama, tiny_tokenizer, TEXTS, "resid_post.0", max_length=3)
    lengths = [min(3, len(_ids(tiny_tokenizer, t))) for t in TEXTS]
    assert len(acts) == sum(lengths)
    assert acts.position.max() == 2


def test_collect_leaves_no_hooks_and_sets_no_grad(tiny_llama, tiny_tokenizer):
    with torch.no_grad():
        tiny_llama(**tiny_tokenizer(["a dog"], return_tensors="pt"))
    hooks = {n: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for n, m in tiny_llama.named_modules()}
    side = tiny_tokenizer.padding_side = "left"
    acts = collect(tiny_llama, tiny_tokenizer, TEXTS, "resid_post.0")
    assert tiny_tokenizer.padding_side == side  # restored after padding right internally
    assert not acts["resid_post.0"].requires_grad
    after = {n: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for n, m in tiny_llama.named_modules()}
    assert after == hooks


@pytest.mark.real
def test_smollm2_collect(smollm2):
    model, tokenizer = smollm2
    texts = ["The capital of France is Paris.", "Water boils at one hundred degrees."]
    acts = collect(model, tokenizer, texts, ["resid_post.5", "mlp_key.5"], positions="last", logits=True)
    assert acts["resid_post.5"].shape == (2, 576)
    assert acts["mlp_key.5"].shape == (2, 1536)
    assert acts.logits.shape == (2, model.config.vocab_size)
    assert torch.isfinite(acts["resid_post.5"]).all()
    for k, text in enumerate(texts):
        with torch.no_grad():
            logits = model(**tokenizer([text], return_tensors="pt")).logits[0, -1]
        assert torch.allclose(acts.logits[k], logits, atol=1e-3)


@pytest.mark.real
def test_minilm_collect(minilm):
    model, tokenizer = minilm
    acts = collect(model, tokenizer, ["a small test", "another sentence to embed"], "resid_post.5")
    assert acts["resid_post.5"].shape[1] == 384
    assert acts.logits is None
