"""Real models: MiniLM ↔ SmolLM2 maps through the audit section, and a stitch inside SmolLM2."""

import pytest

from almostlinear import data
from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.translate import Network, fit_stitch, stitched_loss
from almostlinear.translate.section import CrossModelMaps

pytestmark = pytest.mark.real


def test_minilm_and_smollm2_map_onto_each_other_better_than_chance(smollm2, minilm, monkeypatch):
    import almostlinear.translate.section as section

    monkeypatch.setattr(section, "load", lambda name, device="cpu": minilm)
    statements = data.city_statements(80, seed=0)
    ctx = AuditContext(smollm2, Budget.quick(), progress=lambda _: None,
                       sources={"neutral": list(data.FALLBACK_TEXTS), "cities": statements})
    (result,) = run_sections(ctx, [CrossModelMaps()], lambda source: [getattr(t, "text", t) for t in ctx.sources[source]])
    assert result.status == "ok", result.notes
    chance = result.metric("retrieval_chance").value
    for direction in ("to_model", "to_partner"):
        # measured 12/28 and 11/28 held-out texts retrieved (chance 1/28)
        assert result.metric(f"{direction}_affine_top1_held_out").value > 7 * chance
        held = result.metric(f"{direction}_affine_r2_held_out").value
        assert held < result.metric(f"{direction}_affine_r2_in_sample").value
    assert result.metric("to_model_affine_r2_held_out").value > 0.2  # measured 0.27


def test_stitching_adjacent_blocks_of_smollm2_keeps_most_of_the_loss(smollm2):
    net = Network.of(smollm2.model, smollm2.tokenizer, smollm2.structure)
    texts = list(data.FALLBACK_TEXTS)
    mapping, mean = fit_stitch(net, net, texts[:9], "resid_post.10", "resid_post.11")
    result = stitched_loss(net, net, texts[9:], "resid_post.10", "resid_post.11", mapping, target_mean=mean)
    assert result.target < result.stitched < result.mean_ablation


def test_minilm_vectors_are_sentence_transformers_mean_pooling(minilm):
    import torch

    from almostlinear.translate import text_vectors

    texts = list(data.FALLBACK_TEXTS[:4]) + ["short one"]
    ours = text_vectors(minilm.model, minilm.tokenizer, texts, kind="encoder")
    inputs = minilm.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = minilm.model(**inputs).last_hidden_state
    mask = inputs["attention_mask"][..., None].float()
    reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    assert torch.allclose(ours, reference, atol=1e-5)
