"""Key statistics: two halves merged equal the whole; cache by content; stability; errors."""

from __future__ import annotations

import pytest
import torch
from editing_helpers import random_texts
from tiny_models import build_model, make_tokenizer

from almostlinear.core.collect import collect
from almostlinear.core.errors import EmptyDataError, LayerError
from almostlinear.editing import KeyStatistics, key_statistics
from almostlinear.editing.moments import SecondMoment


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALMOSTLINEAR_CACHE", str(tmp_path / "cache"))


def test_second_moment_merge_equals_whole():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(301, 7, generator=g, dtype=torch.float64) * 3 + 1
    a = SecondMoment(7).update(x[:120])
    b = SecondMoment(7).update(x[120:])
    whole = SecondMoment(7).update(x)
    torch.testing.assert_close(a.merge(b).moment(), whole.moment(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whole.moment(), x.T @ x / 301, rtol=1e-12, atol=1e-12)


def test_key_statistics_equal_direct_moment_of_keys():
    model, tok = build_model("llama"), make_tokenizer()
    texts = random_texts(20)
    stats = key_statistics(model, tok, 1, texts=texts, n_tokens=10_000)
    keys = collect(model, tok, texts, "mlp_key.1").activations  # independent path: plain collect
    k = next(iter(keys.values())).double()
    assert stats.n_tokens == k.shape[0]
    torch.testing.assert_close(stats.c, k.T @ k / k.shape[0], rtol=1e-6, atol=1e-9)
    assert stats.c.dtype == torch.float64 and stats.c.shape == (64, 64)
    assert 0 < stats.stability < 2


def test_statistics_of_two_sources_merged_equal_those_of_both():
    model, tok = build_model("llama"), make_tokenizer()
    a_texts, b_texts = random_texts(10, seed=1), random_texts(14, seed=2)
    a = key_statistics(model, tok, 0, texts=a_texts, n_tokens=10_000)
    b = key_statistics(model, tok, 0, texts=b_texts, n_tokens=10_000)
    both = key_statistics(model, tok, 0, texts=a_texts + b_texts, n_tokens=10_000)
    merged = a.merge(b)
    assert merged.n_tokens == both.n_tokens
    torch.testing.assert_close(merged.c, both.c, rtol=1e-9, atol=1e-12)


def test_cached_by_content_not_by_call(tmp_path):
    model, tok = build_model("llama"), make_tokenizer()
    texts = random_texts(12)
    first = key_statistics(model, tok, 1, texts=texts, n_tokens=10_000)
    files = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 1
    again = key_statistics(model, tok, 1, texts=list(texts), n_tokens=10_000)
    assert torch.equal(first.c, again.c)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
    other = key_statistics(model, tok, 1, texts=texts[:-1], n_tokens=10_000)  # other content, other entry
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    assert not torch.equal(other.c, first.c)
    loaded = KeyStatistics.load(files[0])
    assert loaded.provenance.model_fingerprint is not None and loaded.layer == 1


def test_token_budget_and_layers_in_one_pass():
    model, tok = build_model("gpt2"), make_tokenizer()
    texts = random_texts(30)
    many = key_statistics(model, tok, [0, 1], texts=texts, n_tokens=100, cache=False)
    assert set(many) == {0, 1}
    assert all(s.n_tokens == 100 for s in many.values())


def test_bad_input():
    model, tok = build_model("llama"), make_tokenizer()
    with pytest.raises(LayerError):
        key_statistics(model, tok, 5, texts=random_texts(4))
    with pytest.raises(EmptyDataError):
        key_statistics(model, tok, 0, texts=[])
    with pytest.raises(EmptyDataError):
        key_statistics(model, tok, 0, texts=["the cat"], cache=False)  # one text: one half empty


def test_whitening_agreement_and_defaults():
    from almostlinear.editing import default_layer, default_layers, hparams_for

    model, tok = build_model("llama"), make_tokenizer()
    stats = key_statistics(model, tok, 0, texts=random_texts(80), n_tokens=10_000, cache=False)
    keys = torch.randn(3, 64, dtype=torch.float64)
    agreement = stats.whitening_agreement(keys, relative_ridge=1e-2)
    assert agreement.shape == (3,) and bool((agreement <= 1 + 1e-9).all())
    assert default_layer(model) in (0, 1) and default_layers(model) == (0, 1)
    assert hparams_for(model, v_steps=3).v_steps == 3


def test_second_moment_formed_in_place_equals_the_copying_one_and_empties_the_sum():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    m = SecondMoment(6).update(x)
    expected = m.moment()
    got = m.moment_()
    assert torch.equal(got, expected)  # the same division, done in place
    assert m.count == 0 and m.total is None
    with pytest.raises(EmptyDataError):
        m.moment_()
    # an empty sum follows the first keys to their device (here: stays on the CPU) and merges
    empty = SecondMoment(6)
    assert empty.merge(SecondMoment(6).update(x)).count == 50
    on_meta = SecondMoment(6, device="meta")
    assert on_meta.total.device.type == "meta"
