"""Pooling token rows into one vector per text: by-hand means and last rows, and clear errors."""

import pytest
import torch
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear.core.collect import collect
from almostlinear.core.errors import EmptyDataError, ShapeError
from almostlinear.translate import pool_rows, text_vectors


def test_mean_and_last_rows_match_a_loop_by_hand():
    g = torch.Generator().manual_seed(0)
    index = torch.tensor([0, 0, 0, 1, 2, 2, 1, 1])  # text 1's rows are not contiguous
    acts = torch.randn(len(index), 5, generator=g)
    means = pool_rows(acts, index, 3)
    lasts = pool_rows(acts, index, 3, "last")
    for t in range(3):
        rows = (index == t).nonzero()[:, 0]
        assert torch.allclose(means[t], acts[rows].mean(0))
        assert torch.equal(lasts[t], acts[rows[-1]])


def test_a_text_without_rows_is_an_error_not_a_zero_vector():
    acts = torch.ones(3, 4)
    with pytest.raises(EmptyDataError, match="no token rows"):
        pool_rows(acts, torch.tensor([0, 0, 2]), 3)
    with pytest.raises(ShapeError, match="lie in"):
        pool_rows(acts, torch.tensor([0, 1, 3]), 3)
    with pytest.raises(ShapeError, match="one text index per row"):
        pool_rows(acts, torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_rows(acts, torch.tensor([0, 1, 1]), 2, "max")


def test_text_vectors_last_pool_is_the_last_real_token():
    model, tokenizer = build_model("llama"), make_tokenizer()
    texts = list(TEXTS)
    ours = text_vectors(model, tokenizer, texts, "resid_post.1", pool="last")
    acts = collect(model, tokenizer, texts, ["resid_post.1"], positions="all")
    rows, index = acts["resid_post.1"], acts.text_index
    expected = torch.stack([rows[index == i][-1] for i in range(len(texts))])
    assert torch.allclose(ours, expected, atol=1e-6)
