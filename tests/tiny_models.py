"""Tiny random models of six families and a tiny word-level tokenizer, built in memory.

Test modules import these with ``from tiny_models import build_model, ...``; ``conftest.py``
turns them into fixtures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertModel,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 100
D_MODEL = 32
D_MLP = 64
N_LAYERS = 2
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2

# Words of the tiny tokenizer; ids 0..2 are <pad>, <eos>, <unk>.
WORDS = (
    "the a an of in on is was and to city country capital river big small red blue green old new "
    "cat dog bird fish sun moon star tree house road king queen man woman one two three four five "
    "Paris France Rome Italy Berlin Germany Madrid Spain Tokyo Japan . , ! ?"
).split()

TEXTS = (
    "the cat is on the road",
    "Paris is the capital of France .",
    "a dog",
    "the old king and the new queen was in the big house",
    "one two three",
    "Rome is in Italy",
)


def _common(**extra) -> dict:
    return dict(vocab_size=VOCAB, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=None, **extra)


def _llama():
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **_common()))


def _gpt2():
    return GPT2LMHeadModel(GPT2Config(
        n_embd=D_MODEL, n_inner=D_MLP, n_layer=N_LAYERS, n_head=4, n_positions=64, **_common()))


def _gpt_neox():
    return GPTNeoXForCausalLM(GPTNeoXConfig(
        hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        use_parallel_residual=True, max_position_embeddings=64, **_common()))


def _qwen2():
    return Qwen2ForCausalLM(Qwen2Config(
        hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, **_common()))


def _gemma():
    return GemmaForCausalLM(GemmaConfig(
        hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, **_common()))


def _bert():
    return BertModel(BertConfig(
        hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        max_position_embeddings=64, vocab_size=VOCAB, pad_token_id=PAD_ID))


BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "llama": _llama,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "qwen2": _qwen2,
    "gemma": _gemma,
    "bert": _bert,
}
CAUSAL = tuple(name for name in BUILDERS if name != "bert")


def build_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of family ``name``; the same seed gives the same weights."""
    torch.manual_seed(seed)
    model = BUILDERS[name]().eval()
    # Random init of layer norms is the identity; perturb every parameter a little so that a
    # wrongly placed hook or a skipped norm cannot go unnoticed.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over :data:`WORDS` with ``<pad>``, ``<eos>`` and ``<unk>``."""
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    assert len(vocab) <= VOCAB
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


# Plain English sentences for real-model tests that need a few neutral texts without sampling any.
ENGLISH_TEXTS = (
    "The weather today is mild, with a light breeze from the west and some clouds later in the day.",
    "She opened the book and began to read the first chapter slowly, taking notes as she went.",
    "In the small town, the market opens early on Saturdays and closes by noon.",
    "Water boils at a lower temperature at high altitude because the air pressure is lower.",
    "The train left the station a few minutes late, but it still arrived on time.",
    "Most plants need sunlight, water and nutrients from the soil to grow well.",
    "He fixed the old bicycle in the garage and rode it to work the next morning.",
    "The museum shows paintings from several centuries, arranged by country and period.",
)


# Places whose words the tiny tokenizer knows, for true/false statements in section tests.
PLACES = (("Paris", "France"), ("Rome", "Italy"), ("Berlin", "Germany"), ("Madrid", "Spain"), ("Tokyo", "Japan"))


def toy_statements(copies: int = 4) -> list:
    """A true and a false "the city X is in Y ." statement per place and copy; every copy has its own
    subject so that splits grouped by subject have many groups."""
    from almostlinear.data import Statement

    out = []
    for i, (city, country) in enumerate(PLACES * copies):
        wrong = PLACES[(i + 1) % len(PLACES)][1]
        subject = f"{city}{i}"
        out.append(Statement(f"the city {city} is in {country} .", True, subject, country, country))
        out.append(Statement(f"the city {city} is in {wrong} .", False, subject, wrong, country))
    return out
