"""On the embedded SmolLM2: sublayer inputs are the normed residual stream; the causal inner product
separates unrelated concepts better than the Euclidean one."""

import pytest
import torch

from almostlinear.core.collect import tokenize
from almostlinear.core.hooks import record
from almostlinear.linearity import CONCEPT_PAIRS, causal_whitening, concept_directions, single_token_pairs
from almostlinear.linearity.causal import off_diagonal_abs_cosine

pytestmark = pytest.mark.real


def test_sublayer_inputs_are_the_normed_residual_stream(smollm2):
    model, s = smollm2.model, smollm2.structure
    inputs = tokenize(smollm2.tokenizer, ["The river runs slowly."], max_length=16, device="cpu")
    sites = ["resid_pre.3", "attn_in.3", "attn_out.3", "mlp_in.3"]
    with torch.no_grad(), record(model, sites, structure=s, keep_full=True) as rec:
        model(**inputs)
    block = model.model.layers[3]
    resid = rec.full("resid_pre.3")[0]
    with torch.no_grad():
        assert torch.allclose(rec.full("attn_in.3")[0], block.input_layernorm(resid), atol=1e-5)
        mid = resid + rec.full("attn_out.3")[0]
        assert torch.allclose(rec.full("mlp_in.3")[0], block.post_attention_layernorm(mid), atol=1e-5)


def test_causal_inner_product_makes_concepts_closer_to_orthogonal(smollm2):
    gamma = smollm2.structure.unembedding.weight.detach().float()
    pairs = {name: single_token_pairs(smollm2.tokenizer, words) for name, words in CONCEPT_PAIRS.items()}
    assert sum(len(p) for p in pairs.values()) > 60  # most of the written pairs are single tokens
    whitening = causal_whitening(gamma)
    _, causal = concept_directions(whitening(gamma), pairs)
    _, euclid = concept_directions(gamma, pairs)
    assert float(off_diagonal_abs_cosine(causal).mean()) < 0.5 * float(off_diagonal_abs_cosine(euclid).mean())


SENTENCES = (
    "The river runs slowly past the old mill and into the quiet valley below.",
    "She bought three apples, a loaf of bread and some cheese at the market.",
    "Rain fell all night, and by morning the streets were covered in puddles.",
    "The committee will meet again next Tuesday to discuss the budget.",
    "A small dog barked at the postman every day for years.",
    "He learned to play the piano when he was seven years old.",
    "The museum opened a new wing dedicated to ancient pottery.",
    "Most trains leave the central station every fifteen minutes.",
    "They painted the kitchen a pale shade of green last summer.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Snow covered the mountain peaks well into the month of June.",
    "Our neighbours planted tomatoes, beans and sunflowers in the garden.",
)


def test_block_fits_from_the_shared_pass_equal_a_pass_per_split(smollm2):
    from almostlinear.audit.plan import run_sections
    from almostlinear.core.report import SectionResult
    from almostlinear.core.section import AuditContext, Budget
    from almostlinear.linearity import sublayer, sublayer_moments
    from almostlinear.linearity.blocks_section import BlockLinearitySection

    class MomentsOnly(BlockLinearitySection):
        def reduce_layers(self, ctx, layers):  # keep the moments, which the section frees once fitted
            self.kept = self.moments.result()

        def finish(self, ctx):  # the fits and the replacement are checked on tiny models
            return SectionResult(self.id, self.title)

    texts = list(SENTENCES)
    section = MomentsOnly()
    ctx = AuditContext(smollm2, Budget.quick(), progress=lambda _: None, sources={"neutral": texts})
    run_sections(ctx, [section])
    shared_moments = section.kept
    s = smollm2.structure
    parts = [sublayer(s, layer, kind) for layer in range(s.n_layers) for kind in ("attn", "mlp")]
    splits = [[t for i, t in enumerate(texts) if i % 4 in rests] for rests in ((0, 1), (2,), (3,))]
    own = [sublayer_moments(smollm2.model, smollm2.tokenizer, s, split, parts) for split in splits]
    for kind in ("attn", "mlp"):
        for mine, shared in zip(own, shared_moments.values()):
            assert mine[kind].n == shared[kind].n > 0
            for name in ("mean_x", "mean_y", "sxx_", "sxy_", "syy_"):  # equal to float32 rounding
                a, b = getattr(mine[kind], name), getattr(shared[kind], name)
                assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max()), (kind, name)
        # ~90 training tokens in 576 dimensions: only a well-conditioned (large-ridge) fit compares tightly
        train, val = own[0][kind], own[1][kind]
        shared_train, shared_val = shared_moments["train"][kind], shared_moments["val"][kind]
        expected, got = val.r2(train.fit(1.0)), shared_val.r2(shared_train.fit(1.0))
        assert torch.allclose(got, expected, atol=1e-5), kind
