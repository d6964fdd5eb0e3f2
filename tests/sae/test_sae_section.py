"""The SAE audit section on a tiny model and on SmolLM2."""

import pytest
import torch
from tiny_models import ENGLISH_TEXTS, WORDS, build_model, make_tokenizer

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.models import LoadedModel
from almostlinear.sae.section import SaeSection

SMALL = Budget(neutral_texts=8, neutral_new_tokens=8, lens_tokens=40, statements=40, fact_candidates=40,
               quick_mode=True)


def _texts(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (16,), generator=g)) for _ in range(n)]


def test_sae_section_on_a_tiny_model():
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny", "memory", "causal-lm")
    ctx = AuditContext(loaded, SMALL, progress=lambda _: None, sources={"neutral": _texts()})
    (result,) = run_sections(ctx, [SaeSection()], lambda source: ctx.sources[source])
    assert result.status == "ok", result.notes
    assert 0 < result.metric("sae_l0", 1).value <= 32
    assert 0 <= result.metric("sae_fvu", 1).value < 1
    assert result.metric("sae_train_tokens", 1).value == 24 * 15
    assert result.metric("sae_test_tokens", 1).value == 8 * 15
    ce = [result.metric(f"sae_ce_{k}", 1).value for k in ("clean", "spliced", "zero_ablated")]
    assert result.metric("sae_ce_recovered", 1).value == pytest.approx((ce[2] - ce[1]) / (ce[2] - ce[0]))
    assert result.metric("sae_ce_recovered", 1).source == "arXiv 2406.04093"


@pytest.mark.real
def test_sae_section_on_smollm2(smollm2):
    texts = list(ENGLISH_TEXTS)
    ctx = AuditContext(smollm2, SMALL, progress=lambda _: None, sources={"neutral": texts})
    (result,) = run_sections(ctx, [SaeSection()], lambda source: ctx.sources[source])
    assert result.status == "ok", result.notes
    layer = smollm2.structure.n_layers // 2
    assert result.metric("sae_l0", layer).value <= 32
    assert result.metric("sae_fvu", layer).value < 1
    assert result.metric("sae_ce_zero_ablated", layer).value > result.metric("sae_ce_clean", layer).value
