import math

import pytest

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.report import to_json
from almostlinear.core.collect import collect
from almostlinear.core.models import LoadedModel
from almostlinear.core.sites import Site
from almostlinear.similarity import linear_cka
from almostlinear.similarity.section import SimilaritySection
from tiny_models import N_LAYERS, TEXTS, build_model, make_tokenizer

BUDGET = Budget(neutral_texts=24, neutral_new_tokens=8, lens_tokens=40, statements=40, fact_candidates=40,
                batch_size=4)


def _run(family, texts, max_tokens):
    kind = "encoder" if family == "bert" else "causal-lm"
    loaded = LoadedModel(build_model(family), make_tokenizer(), f"tiny-{family}", "memory", kind)
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None)
    [result] = run_sections(ctx, [SimilaritySection(max_tokens=max_tokens)], lambda source: texts)
    return loaded, result


def test_section_matches_cka_computed_directly_on_the_same_tokens():
    texts = list(TEXTS) * 3
    loaded, result = _run("llama", texts, max_tokens=10_000)  # no subsampling: every token kept
    assert result.status == "ok", result.notes
    sites = [Site("resid_pre", 0)] + [Site("resid_post", i) for i in range(N_LAYERS)]
    acts = collect(loaded.model, loaded.tokenizer, texts, sites, skip_first=True)
    for layer in range(N_LAYERS):
        expected = linear_cka(acts[sites[layer]], acts[sites[layer + 1]])
        assert result.metric("cka_adjacent", layer).value == pytest.approx(expected, rel=1e-6)
        expected = linear_cka(acts[sites[layer]], acts[sites[layer + 1]], debiased=True)
        assert result.metric("cka_adjacent_debiased", layer).value == pytest.approx(expected, rel=1e-5)
    assert result.metric("cka_first_last").value == pytest.approx(linear_cka(acts[sites[0]], acts[sites[-1]]), rel=1e-6)
    assert result.metric("tokens").value == len(acts)
    assert result.metric("cka_adjacent_mean").source == "arXiv 2010.15327"
    for figure in result.figures:
        for series in figure.series:
            assert len(series.x) == len(series.y)
            assert all(v is not None and math.isfinite(v) for v in series.y)
    assert len(str(to_json(result))) < 20_000  # the report stays small


def test_section_subsamples_tokens_and_runs_on_an_encoder():
    _, result = _run("bert", list(TEXTS) * 4, max_tokens=20)
    assert result.status == "ok", result.notes
    assert result.metric("tokens").value == 20
    adjacent = [result.metric("cka_adjacent", layer).value for layer in range(N_LAYERS)]
    assert all(0.0 <= v <= 1.0 for v in adjacent)


@pytest.mark.real
def test_section_on_smollm2_gives_a_full_matrix(smollm2):
    texts = ["The river runs past the old mill and into the valley.",
             "She opened the window, and the morning air smelled of rain."]
    ctx = AuditContext(smollm2, BUDGET, progress=lambda _: None)
    [result] = run_sections(ctx, [SimilaritySection()], lambda source: texts)
    assert result.status == "ok", result.notes
    n_layers = smollm2.structure.n_layers
    values = [result.metric("cka_adjacent", layer).value for layer in range(n_layers)]
    assert len(values) == 30 and all(0.0 < v <= 1.0 + 1e-9 for v in values)
    assert 0 <= result.metric("lowest_adjacent_cka_block").value < n_layers
    assert "Linear CKA matrix" in result.notes[-1]
    assert result.notes[-1].count("[") == n_layers + 2  # 31 rows plus the outer bracket
