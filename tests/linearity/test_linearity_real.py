"""On the embedded SmolLM2: sublayer inputs are the normed residual stream; the causal inner product
separates unrelated concepts better than the Euclidean one."""

import pytest
import torch

from almostlinear.core.collect import tokenize
from almostlinear.core.hooks import record
from almostlinear.linearity import (
    CONCEPT_PAIRS,
    causal_whitening,
    concept_directions,
    record_sublayers,
    single_token_pairs,
    sublayer,
)
from almostlinear.linearity.causal import off_diagonal_abs_cosine

pytestmark = pytest.mark.real


def test_sublayer_inputs_are_the_normed_residual_stream(smollm2):
    model, s = smollm2.model, smollm2.structure
    inputs = tokenize(smollm2.tokenizer, ["The river runs slowly."], max_length=16, device="cpu")
    parts = [sublayer(s, 3, "attn"), sublayer(s, 3, "mlp")]
    with torch.no_grad(), record(model, ["resid_pre.3", "attn_out.3"], structure=s, keep_full=True) as rec, \
            record_sublayers(model, s, parts) as reading:
        model(**inputs)
    block = model.model.layers[3]
    resid = rec.full("resid_pre.3")[0]
    assert torch.allclose(reading.inputs[(3, "attn")], block.input_layernorm(resid), atol=1e-5)
    mid = resid + rec.full("attn_out.3")[0]
    assert torch.allclose(reading.inputs[(3, "mlp")], block.post_attention_layernorm(mid), atol=1e-5)
    assert torch.allclose(reading.outputs[(3, "attn")], rec.full("attn_out.3")[0], atol=1e-6)


def test_causal_inner_product_makes_concepts_closer_to_orthogonal(smollm2):
    gamma = smollm2.structure.unembedding.weight.detach().float()
    pairs = {name: single_token_pairs(smollm2.tokenizer, words) for name, words in CONCEPT_PAIRS.items()}
    assert sum(len(p) for p in pairs.values()) > 60  # most of the written pairs are single tokens
    whitening = causal_whitening(gamma)
    _, causal = concept_directions(whitening(gamma), pairs)
    _, euclid = concept_directions(gamma, pairs)
    assert float(off_diagonal_abs_cosine(causal).mean()) < 0.5 * float(off_diagonal_abs_cosine(euclid).mean())
