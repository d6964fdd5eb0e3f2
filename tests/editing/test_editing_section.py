"""The editing audit section on a tiny model (invented facts) and on SmolLM2."""

from __future__ import annotations

import pytest
import scipy.stats
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.errors import AlmostLinearError
from almostlinear.core.models import LoadedModel
from almostlinear.data.facts import Fact
from almostlinear.editing.counterfact import Relation
from almostlinear.editing.eval import rank_correlation
from almostlinear.editing.section import EditingSection

RELATION = Relation("city_in_country",
                    prompts=("{} is a city in the country of", "the city of {} is in the country of",
                             "{} is in the country of"),
                    generation_prompts=("{} is",))
COUNTRIES = ["France", "Italy", "Germany", "Spain", "Japan"]
CITIES = ["Paris", "Rome", "Berlin", "Madrid", "Tokyo", "cat", "dog", "bird", "fish", "tree", "house", "road"]
FACTS = [Fact(c, "city_in_country", COUNTRIES[i % len(COUNTRIES)]) for i, c in enumerate(CITIES)]


def _loaded(model, tokenizer, name="tiny") -> LoadedModel:
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=name, kind="causal-lm")


def test_rank_correlation_matches_scipy():
    x = [0.3, 1.0, -2.0, 0.3, 5.0, 4.0]
    y = [1.0, 2.0, 0.0, 3.0, 3.0, -1.0]
    assert rank_correlation(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    assert rank_correlation([1, 1, 1], [1, 2, 3]) != rank_correlation([1, 1, 1], [1, 2, 3])  # NaN


def test_section_on_a_tiny_model():
    model, tok = build_model("llama"), make_tokenizer()
    ctx = AuditContext(_loaded(model, tok), Budget.quick(), progress=lambda m: None)
    texts = list(TEXTS) * 4
    section = EditingSection(relation=RELATION, facts=FACTS, require_known=False)
    (result,) = run_sections(ctx, [section], lambda source: texts)
    assert result.status == "ok", result.notes
    assert result.metric("edits").value == 3
    assert result.metric("undo_exact").value == 1.0
    assert result.metric("bake_undo_exact").value == 1.0
    for key in ("es", "ps", "ns", "s"):
        assert 0 <= result.metric(f"edit_{key}").value <= 100
        assert result.metric(f"edit_{key}").source == "arXiv 2202.05262"
    assert result.metric("key_statistics_tokens").value > 0
    assert result.figures and result.figures[0].id == "edit_bleed"


def test_section_refuses_another_layer():
    with pytest.raises(AlmostLinearError, match="default layer"):
        EditingSection(hparams={"layer": 1})


def test_section_skips_mixture_of_experts_models():
    from tiny_models import MOE_ARCHITECTURES

    for family in MOE_ARCHITECTURES:
        loaded = _loaded(build_model(family), make_tokenizer(), family)
        ctx = AuditContext(loaded, Budget.quick(), progress=lambda m: None)
        (result,) = run_sections(ctx, [EditingSection()], lambda source: list(TEXTS))
        assert result.status == "skipped" and "mixture of experts" in result.notes[0], result.notes


def test_section_skips_encoders():
    model, tok = build_model("bert"), make_tokenizer()
    loaded = LoadedModel(model=model, tokenizer=tok, name="bert", path="bert", kind="encoder")
    ctx = AuditContext(loaded, Budget.quick(), progress=lambda m: None)
    (result,) = run_sections(ctx, [EditingSection()], lambda source: list(TEXTS))
    assert result.status == "skipped"


# Well-known cities, a few per country so each has neighbours: no 60-candidate knowledge scan.
KNOWN = [Fact(c, "city_in_country", a) for c, a in [
    ("Paris", "France"), ("Lyon", "France"), ("Marseille", "France"), ("Berlin", "Germany"), ("Munich", "Germany"),
    ("Hamburg", "Germany"), ("Madrid", "Spain"), ("Barcelona", "Spain"), ("Rome", "Italy"), ("Milan", "Italy"),
    ("Tokyo", "Japan"), ("Osaka", "Japan")]]


@pytest.mark.real
def test_section_on_smollm2(smollm2):
    from almostlinear.data import FALLBACK_TEXTS

    # Small on purpose: one edit, 6 value steps on the bare prompt, C from the ~400 tokens of the
    # packaged fallback texts (never the audit's generated neutral texts).
    ctx = AuditContext(smollm2, Budget.quick(), progress=lambda m: None)
    section = EditingSection(edits=1, facts=KNOWN, hparams={"v_steps": 6, "n_prefixes": 0})
    (result,) = run_sections(ctx, [section], lambda source: list(FALLBACK_TEXTS))
    assert result.status == "ok", result.notes
    assert result.metric("edits").value == 1
    assert result.metric("edit_layer").value == 3  # 10 % of SmolLM2's 30 blocks
    assert result.metric("undo_exact").value == 1.0 and result.metric("bake_undo_exact").value == 1.0
    # the case is a fact the model knows, so before the edit the new target loses; after, it wins
    assert result.metric("unedited_es").value == 0.0
    assert result.metric("edit_es").value == 100.0
    # r-ROME: u is solved for the template-averaged key, which with the bare template only is the rewrite key
    assert result.metric("rewrite_reach_mean").value == pytest.approx(1.0, abs=1e-4)
    assert 0 < result.metric("key_statistics_tokens").value < 1000
