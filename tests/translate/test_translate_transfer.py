"""Steering-vector transfer: through an identity map it is the native vector; effects are measured in the model."""

import pytest
import torch
from tiny_models import build_model, make_tokenizer

from almostlinear.core.collect import collect
from almostlinear.core.errors import ShapeError
from almostlinear.translate import LinearMap, mean_difference, sentiment_shift, steering_transfer
from almostlinear.translate.transfer import sentiment_texts


def _identity(d=32):
    return LinearMap(torch.eye(d), torch.zeros(d), torch.zeros(0, dtype=torch.int64))


def test_mean_difference_equals_pooled_means_by_hand():
    model, tokenizer = build_model("llama"), make_tokenizer()
    pos, neg = ["the cat is big", "a dog is red"], ["the cat is small", "a dog is blue ."]
    v = mean_difference(model, tokenizer, pos, neg, "resid_post.0")
    acts = collect(model, tokenizer, pos + neg, ["resid_post.0"], skip_first=True)
    rows, index = acts["resid_post.0"], acts.text_index
    per_text = torch.stack([rows[index == i].mean(0) for i in range(4)])
    assert torch.allclose(v, per_text[:2].mean(0) - per_text[2:].mean(0), atol=1e-6)


def test_identity_map_transfers_the_native_vector_with_the_native_effect():
    model, tokenizer = build_model("gpt2"), make_tokenizer()
    contrast = (["the cat is big", "the dog is big ."], ["the cat is small", "the dog is small ."])
    result = steering_transfer(model, tokenizer, _identity(), "resid_post.1", "resid_post.1", scale=3.0,
                               contrast=contrast, prompts=["the house is", "a king was"], up_words=["big"],
                               down_words=["small"])
    assert abs(result.shift_native) > 1e-4  # the tiny model's readout does move
    assert result.cosine == pytest.approx(1.0, abs=1e-6)
    assert result.shift_transferred == pytest.approx(result.shift_native, abs=1e-6)
    assert result.norm_ratio == pytest.approx(1.0, abs=1e-6)


def test_a_zero_vector_shifts_nothing_and_widths_are_checked():
    model, tokenizer = build_model("llama"), make_tokenizer()
    assert sentiment_shift(model, tokenizer, "resid_post.0", torch.zeros(32)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ShapeError, match="wide"):
        steering_transfer(model, tokenizer, _identity(16), "resid_post.0", "resid_post.1")


def test_sentiment_texts_are_matched_pairs():
    pos, neg = sentiment_texts()
    assert len(pos) == len(neg) and len(set(pos) & set(neg)) == 0
    assert all(p.split()[:-1] == n.split()[:-1] for p, n in zip(pos, neg))
