"""The weight-spectra audit section on tiny models: runs without text, numbers match dense references."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.models import LoadedModel
from almostlinear.spectra.section import SpectraSection
from tiny_models import build_model, make_tokenizer

BUDGET = Budget(neutral_texts=4, neutral_new_tokens=8, lens_tokens=16, statements=8, fact_candidates=8)


def _no_text(source):
    raise AssertionError(f"the weight-spectra section asked for {source} text")


def _run(family):
    kind = "encoder" if family == "bert" else "causal-lm"
    loaded = LoadedModel(build_model(family), make_tokenizer(), f"tiny-{family}", "memory", kind)
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None)
    [result] = run_sections(ctx, [SpectraSection()], _no_text)
    return loaded.model, result


def _stable(s):
    return (s**2).sum() / s.max() ** 2


def _effective(s):
    return np.exp(scipy.stats.entropy(s / s.sum()))


def test_section_numbers_match_dense_svds_on_a_tiny_llama():
    model, result = _run("llama")
    assert result.status == "ok", result.notes
    for layer, block in enumerate(model.model.layers):
        attn, mlp = block.self_attn, block.mlp
        ov = [attn.o_proj.weight[:, h * 8:(h + 1) * 8] @ attn.v_proj.weight[(h // 2) * 8:(h // 2 + 1) * 8]
              for h in range(4)]
        ov_s = [np.linalg.svd(m.detach().double().numpy(), compute_uv=False)[:8] for m in ov]
        assert result.metric("ov_stable_rank", layer).value == pytest.approx(np.mean([_stable(s) for s in ov_s]))
        assert result.metric("ov_effective_rank", layer).value == pytest.approx(
            np.mean([_effective(s) for s in ov_s]))
        mlp_in = [np.linalg.svd(w.detach().double().numpy(), compute_uv=False)
                  for w in (mlp.gate_proj.weight, mlp.up_proj.weight)]
        down = np.linalg.svd(mlp.down_proj.weight.detach().double().numpy(), compute_uv=False)
        assert result.metric("mlp_in_stable_rank", layer).value == pytest.approx(
            np.mean([_stable(s) for s in mlp_in]), rel=1e-4)  # float32 Grams in the section
        assert result.metric("mlp_out_effective_rank", layer).value == pytest.approx(_effective(down), rel=1e-4)
        for kind in ("ov", "mlp_in", "mlp_out"):
            assert math.isfinite(result.metric(f"{kind}_coherence_z", layer).value)
    summary = result.metric("ov_coherence_z_mean")
    assert isinstance(summary.reference, str) and "Millidge" in summary.source
    assert 0 <= result.metric("mlp_out_coherent_share").value <= 1
    assert 0 <= result.metric("coherence_auc_vs_random_directions").value <= 1
    for kind, dims in (("ov", 8), ("mlp_in", 32), ("mlp_out", 32)):
        for rank in ("stable", "effective"):
            assert 1 <= result.metric(f"{kind}_{rank}_rank_gaussian").value <= dims
    assert [f.id for f in result.figures] == ["weight_stable_rank", "weight_effective_rank",
                                              "weight_direction_coherence"]
    for figure in result.figures:
        assert all(len(s.x) == len(s.y) == 2 for s in figure.series)
    assert any(note.startswith("Top tokens") for note in result.notes)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "bert"])
def test_section_runs_on_fused_and_encoder_families(family):
    _, result = _run(family)
    assert result.status == "ok", result.notes
    assert result.metric("ov_stable_rank", 1).value >= 1.0


def test_section_restores_the_thread_count():
    before = torch.get_num_threads()
    _run("qwen2")
    assert torch.get_num_threads() == before


def test_section_is_skipped_with_a_reason_when_heads_cannot_be_found():
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny", "memory", "causal-lm")
    loaded.model.config.num_attention_heads = 0
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None)
    [result] = run_sections(ctx, [SpectraSection()], _no_text)
    assert result.status == "skipped" and "heads" in result.notes[0]
