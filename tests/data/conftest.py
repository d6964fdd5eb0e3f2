"""Tiny in-memory tokenizer and Llama model for the data tests: no downloads, built in ms."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from almostlinear.data import FALLBACK_TEXTS, NEUTRAL_SEEDS

EXTRA_WORDS = (
    "The city of is in the country Russia France Chile Japan Alpha Bravo Charlie Delta Echo "
    "Town Port Upon Sea"
)


def make_tokenizer(extra: str = EXTRA_WORDS) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the words of the neutral seeds, fallback texts and ``extra``."""
    pre = pre_tokenizers.Whitespace()
    words: dict[str, None] = {}
    for text in (*NEUTRAL_SEEDS, *FALLBACK_TEXTS, extra):
        for word, _ in pre.pre_tokenize_str(text):
            words.setdefault(word)
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre
    core.decoder = decoders.WordPiece()  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def llama(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()
