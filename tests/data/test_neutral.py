from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from almostlinear.core.errors import AlmostLinearError, EmptyDataError
from almostlinear.data import FALLBACK_TEXTS, NEUTRAL_SEEDS, generate_neutral_texts, neutral_texts


def test_seed_and_fallback_lists():
    assert 30 <= len(NEUTRAL_SEEDS) <= 60 and len(set(NEUTRAL_SEEDS)) == len(NEUTRAL_SEEDS)
    assert all(3 <= len(s.split()) <= 12 for s in NEUTRAL_SEEDS)
    assert 8 <= len(FALLBACK_TEXTS) <= 20 and len(set(FALLBACK_TEXTS)) == len(FALLBACK_TEXTS)
    assert all(len(t.split()) >= 15 for t in FALLBACK_TEXTS)


def _opening(seed: str, tokenizer) -> str:
    # The word-level test tokenizer re-spaces punctuation when decoding.
    return tokenizer.decode(tokenizer(seed)["input_ids"])


def test_generation_counts_openings_and_determinism(tokenizer, llama):
    texts = generate_neutral_texts(llama, tokenizer, n=6, max_new_tokens=6, batch_size=4)
    assert len(texts) == 6
    for i, text in enumerate(texts):
        opening = _opening(NEUTRAL_SEEDS[i], tokenizer)
        assert text.startswith(opening) and len(text) > len(opening)
    again = generate_neutral_texts(llama, tokenizer, n=6, max_new_tokens=6, batch_size=4)
    assert again == texts
    other = generate_neutral_texts(llama, tokenizer, n=6, max_new_tokens=6, batch_size=4, seed=1)
    assert other != texts


def test_seeds_cycle(tokenizer, llama):
    n = len(NEUTRAL_SEEDS) + 2
    texts = generate_neutral_texts(llama, tokenizer, n=n, max_new_tokens=1, batch_size=64)
    assert texts[-1].startswith(_opening(NEUTRAL_SEEDS[1], tokenizer))


def test_caller_state_is_untouched(tokenizer, llama):
    llama.train()
    tokenizer.padding_side = "right"
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_neutral_texts(llama, tokenizer, n=2, max_new_tokens=3)
    assert torch.equal(torch.rand(3), expected)  # global RNG stream not consumed or reseeded
    assert llama.training and tokenizer.padding_side == "right"


def test_bad_inputs(tokenizer, llama):
    with pytest.raises(EmptyDataError):
        generate_neutral_texts(llama, tokenizer, n=0)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(2, 2)

    with pytest.raises(AlmostLinearError, match="FALLBACK_TEXTS"):
        generate_neutral_texts(Encoder(), tokenizer, n=2)


def test_cache_round_trip(tokenizer, llama, tmp_path, monkeypatch):
    monkeypatch.setenv("ALMOSTLINEAR_CACHE", str(tmp_path))
    first = neutral_texts(llama, tokenizer, n=3, max_new_tokens=4, cache_key="model-abc")
    files = list((tmp_path / "texts").glob("*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text(encoding="utf-8"))["texts"] == first
    assert not list((tmp_path / "texts").glob("*.tmp"))

    # A cache hit never touches the model.
    assert neutral_texts(None, tokenizer, n=3, max_new_tokens=4, cache_key="model-abc") == first

    # Any change of key, n, length or seed is a different file.
    neutral_texts(llama, tokenizer, n=3, max_new_tokens=4, cache_key="model-xyz")
    neutral_texts(llama, tokenizer, n=3, max_new_tokens=4, cache_key="model-abc", seed=1)
    neutral_texts(llama, tokenizer, n=2, max_new_tokens=4, cache_key="model-abc")
    assert len(list((tmp_path / "texts").glob("*.json"))) == 4

    # A damaged file is regenerated (the same texts, since generation is seeded).
    files[0].write_text("{not json", encoding="utf-8")
    assert neutral_texts(llama, tokenizer, n=3, max_new_tokens=4, cache_key="model-abc") == first
    assert json.loads(files[0].read_text(encoding="utf-8"))["texts"] == first


def test_no_cache_without_key(tokenizer, llama, tmp_path, monkeypatch):
    monkeypatch.setenv("ALMOSTLINEAR_CACHE", str(tmp_path))
    texts = neutral_texts(llama, tokenizer, n=2, max_new_tokens=2)
    assert len(texts) == 2
    assert not list(tmp_path.rglob("*.json"))
