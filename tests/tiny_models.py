"""Tiny random models of every supported architecture and a tiny word-level tokenizer, built in memory.

Test modules import these with ``from tiny_models import build_model, ...``; ``conftest.py``
turns the six original families (:data:`FAMILIES`) into fixtures. :data:`CAUSAL_ARCHITECTURES`
lists every causal LM (dense and mixture-of-experts) for suites that run over all of them, and
:data:`MOE_ARCHITECTURES` the mixture-of-experts ones. Every model has ``d_model`` 32, an MLP (or
expert) width of 64, two blocks and the shared 100-token vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertModel,
    FalconConfig,
    FalconForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    StableLmConfig,
    StableLmForCausalLM,
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


def _decoder(**extra) -> dict:
    """The sizes most decoders spell the same way: 4 query heads of width 8, 2 key/value heads."""
    sizes = dict(hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return {**_common(), **sizes, **extra}


def _qwen3():
    return Qwen3ForCausalLM(Qwen3Config(head_dim=8, **_decoder()))


def _gemma2():  # sandwich norms around both sublayers, logit soft-capping, sliding-window layers
    return Gemma2ForCausalLM(Gemma2Config(head_dim=8, sliding_window=4, **_decoder(num_key_value_heads=1)))


def _gemma3():  # text-only; sandwich norms and query/key norms
    return Gemma3ForCausalLM(Gemma3TextConfig(head_dim=8, sliding_window=4, **_decoder(num_key_value_heads=1)))


def _mistral():
    return MistralForCausalLM(MistralConfig(**_decoder()))


def _phi3():  # fused qkv_proj and gate_up_proj
    return Phi3ForCausalLM(Phi3Config(**_decoder()))


def _olmo2():  # norms only after the sublayers, none before
    return Olmo2ForCausalLM(Olmo2Config(**_decoder()))


def _gptj():  # attention and MLP in parallel from one norm
    return GPTJForCausalLM(GPTJConfig(
        n_embd=D_MODEL, n_inner=D_MLP, n_layer=N_LAYERS, n_head=4, rotary_dim=4, n_positions=64, **_common()))


def _falcon():  # fused query_key_value, parallel attention, multi-query, tied head
    return FalconForCausalLM(FalconConfig(
        hidden_size=D_MODEL, ffn_hidden_size=D_MLP, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        **_common()))


def _stablelm():  # LayerNorm with biases, partial rotary
    return StableLmForCausalLM(StableLmConfig(**_decoder()))


def _mixtral():  # 4 experts, 2 per token, fused 3-D expert weights
    return MixtralForCausalLM(MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **_decoder()))


def _qwen2_moe():  # routed experts plus a gated shared expert
    return Qwen2MoeForCausalLM(Qwen2MoeConfig(
        moe_intermediate_size=D_MLP, shared_expert_intermediate_size=D_MLP, num_experts=4,
        num_experts_per_tok=2, **_decoder()))


def _qwen3_moe():
    return Qwen3MoeForCausalLM(Qwen3MoeConfig(
        head_dim=8, moe_intermediate_size=D_MLP, num_experts=4, num_experts_per_tok=2, **_decoder()))


BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "llama": _llama,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "qwen2": _qwen2,
    "gemma": _gemma,
    "bert": _bert,
    "qwen3": _qwen3,
    "gemma2": _gemma2,
    "gemma3": _gemma3,
    "mistral": _mistral,
    "phi3": _phi3,
    "olmo2": _olmo2,
    "gptj": _gptj,
    "falcon": _falcon,
    "stablelm": _stablelm,
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
}
# The six original families, which the shared fixtures run over (and the five causal ones among them).
FAMILIES = ("llama", "gpt2", "gpt_neox", "qwen2", "gemma", "bert")
CAUSAL = tuple(name for name in FAMILIES if name != "bert")
# Every causal LM, for suites that must hold on each architecture; the mixture-of-experts ones.
CAUSAL_ARCHITECTURES = tuple(name for name in BUILDERS if name != "bert")
MOE_ARCHITECTURES = ("mixtral", "qwen2_moe", "qwen3_moe")
# Architectures that normalise what a sublayer writes before adding it to the residual stream.
POST_NORM_ARCHITECTURES = ("gemma2", "gemma3", "olmo2")


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


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer, to compare with after a lever is undone."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_restored(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every tensor equals its copy bit for bit, and no lever is marked as still in place."""
    from almostlinear.core.lever import BASE_ATTR

    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not hasattr(model, BASE_ATTR)
