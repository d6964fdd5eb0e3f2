from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from almostlinear.core.errors import EmptyDataError
from almostlinear.data import Fact, known_facts

FACTS = [
    Fact("Alpha", "city_in_country", "Russia"),
    Fact("Bravo Town", "city_in_country", "France"),  # longer prompt: exercises the padding
    Fact("Charlie", "city_in_country", "Chile"),
    Fact("Delta", "city_in_country", "Russia"),
    Fact("Echo Port Upon Sea", "city_in_country", "Japan"),
]

# What the scripted model "believes": answer scores per subject word.
BELIEFS = {
    "Alpha": {"Russia": 3.0, "France": 1.0},  # right
    "Bravo": {"France": 3.0, "Chile": 2.0},  # right
    "Charlie": {"France": 3.0, "Russia": 2.0, "Chile": 1.0},  # right answer third
    "Delta": {"France": 3.0, "Russia": 2.0},  # right answer second
    "Echo": {"Japan": 0.5},  # right, barely
}


class ScriptedLM(nn.Module):
    """Logits at position t = sum of per-token rows over positions <= t, ignoring the mask.

    Only the last real position has seen the whole prompt, so reading any other position (a
    padded one, or the first) gives a different answer.
    """

    def __init__(self, tokenizer):
        super().__init__()
        vocab = len(tokenizer)
        table = torch.zeros(vocab, vocab)
        for word, scores in BELIEFS.items():
            for answer, value in scores.items():
                row, col = tokenizer.convert_tokens_to_ids([word, answer])
                table[row, col] = value
        self.table = nn.Parameter(table, requires_grad=False)
        self.seen_position_ids = False

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.seen_position_ids |= position_ids is not None
        return SimpleNamespace(logits=self.table[input_ids].cumsum(dim=1))


def subjects(facts):
    return {f.subject for f in facts}


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_known_facts_keeps_exactly_the_predicted_facts(tokenizer, batch_size):
    model = ScriptedLM(tokenizer)
    kept = known_facts(model, tokenizer, FACTS, batch_size=batch_size)
    assert subjects(kept) == {"Alpha", "Bravo Town", "Echo Port Upon Sea"}
    assert kept == [f for f in FACTS if f in kept]  # input order kept
    two = known_facts(model, tokenizer, FACTS, top_k=2, batch_size=batch_size)
    assert subjects(two) == {"Alpha", "Bravo Town", "Delta", "Echo Port Upon Sea"}
    assert known_facts(model, tokenizer, FACTS, top_k=3, batch_size=batch_size) == FACTS
    assert model.seen_position_ids


def test_ranking_is_among_candidate_answers_only(tokenizer):
    # Without "France" among the answers, Charlie's and Delta's top candidates are their true ones.
    facts = [f for f in FACTS if f.answer != "France"]
    kept = known_facts(ScriptedLM(tokenizer), tokenizer, facts)
    assert subjects(kept) == {"Alpha", "Delta", "Echo Port Upon Sea"}


def test_state_is_restored(tokenizer):
    model = ScriptedLM(tokenizer).train()
    tokenizer.padding_side = "right"
    known_facts(model, tokenizer, FACTS)
    assert tokenizer.padding_side == "right" and model.training
    tokenizer.pad_token = None
    kept = known_facts(model, tokenizer, FACTS)
    assert tokenizer.pad_token is None
    assert subjects(kept) == {"Alpha", "Bravo Town", "Echo Port Upon Sea"}


def test_empty_facts_raise(tokenizer, llama):
    with pytest.raises(EmptyDataError, match="no facts"):
        known_facts(llama, tokenizer, [])


def test_real_llama_batching_does_not_change_the_result(tokenizer, llama):
    one = known_facts(llama, tokenizer, FACTS, top_k=2, batch_size=1)
    many = known_facts(llama, tokenizer, FACTS, top_k=2, batch_size=5)
    assert one == many
    assert known_facts(llama, tokenizer, FACTS, top_k=4) == FACTS  # 4 distinct answers
    assert not llama.training and tokenizer.padding_side == "right"


def tiny_gpt2(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4,
        bos_token_id=None, eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_real_model_matches_unpadded_forward(tokenizer, llama, family):
    """Batched, left-padded scoring equals one prompt at a time; GPT-2 checks absolute positions."""
    model = llama if family == "llama" else tiny_gpt2(tokenizer)
    answers = ["Chile", "France", "Japan", "Russia"]
    ids = tokenizer.convert_tokens_to_ids(answers)
    expected = []
    with torch.no_grad():
        for fact in FACTS:
            enc = tokenizer(f"The city of {fact.subject} is in the country of", return_tensors="pt")
            scores = model(**enc).logits[0, -1, ids]
            if answers[int(scores.argmax())] == fact.answer:
                expected.append(fact)
    assert known_facts(model, tokenizer, FACTS, batch_size=5) == expected
