import math

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.models import LoadedModel
from almostlinear.audit.sources import build_source
from almostlinear.truth import TruthDirection, contrast_prompts, fit_contrast_pca
from almostlinear.truth.distractor import ALL_METHODS
from almostlinear.truth.section import SOURCE_NAME, TruthDirectionsSection
from tiny_models import build_model, make_tokenizer, toy_statements

BUDGET = Budget(neutral_texts=4, neutral_new_tokens=4, lens_tokens=8, statements=40, fact_candidates=8, batch_size=8)


def _run(family="llama"):
    kind = "encoder" if family == "bert" else "causal-lm"
    loaded = LoadedModel(build_model(family), make_tokenizer(), f"tiny-{family}", "memory", kind)
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None)
    # The tiny tokenizer knows only a few words: a question and answers made of them.
    prompts = contrast_prompts(toy_statements(4), question="{statement} ? {answer}", answers=("one", "two"),
                               words=("cat", "dog"))
    ctx.sources[SOURCE_NAME] = prompts

    def texts_for(source):
        return [p.text for p in ctx.sources[source]]

    [result] = run_sections(ctx, [TruthDirectionsSection()], texts_for)
    return result, loaded


def test_section_runs_on_a_tiny_llama_and_reports_every_method_per_layer():
    result, loaded = _run()
    assert result.status == "ok", result.notes
    n_layers = loaded.structure.n_layers
    for method in ALL_METHODS:
        values = [result.metric(f"truth_{method}_accuracy", layer).value for layer in range(n_layers)]
        assert all(0.0 <= v <= 1.0 for v in values)
        if method in ("ccs", "contrast_pca"):
            assert all(v >= 0.5 for v in values)  # sign-free accuracy cannot fall below chance
    assert result.metric("pairs_train").value + result.metric("pairs_test").value == 40
    assert any(note.startswith("Protocol behind this verdict") for note in result.notes)
    zero_shot = result.metric("zero_shot_accuracy").value
    assert 0.0 <= zero_shot <= 1.0
    assert result.metric("ccs_minus_zero_shot").reference == 0.04
    following = result.metric("unsupervised_methods_following_distractor")
    assert following.value in (0, 1, 2) and following.source == "arXiv 2312.10029"
    for metric in result.metrics:
        assert metric.value is None or math.isfinite(metric.value)
    [figure] = result.figures
    assert {s.name for s in figure.series} >= {"CCS", "contrast PCA"}
    assert all(len(s.x) == len(s.y) == n_layers for s in figure.series)


def test_source_builder_takes_a_third_of_the_budget_in_whole_subjects_and_the_section_survives_unknown_words():
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None, sources={"cities": toy_statements(4)})
    prompts = build_source(ctx, "cities_contrast")
    clean = [p for p in prompts if p.variant == "clean"]
    taken = BUDGET.statements // 3
    taken += taken % 2  # each subject brings its true and its false statement
    assert len(clean) == 2 * taken
    assert sum(p.label for p in clean if p.positive) == len(clean) // 4  # subjects kept whole: half true
    ctx.sources[SOURCE_NAME] = prompts
    # The tiny tokenizer knows neither "Is this true?" nor "Yes"/"No": both sides read the same
    # tokens, the degenerate case; the section must still finish and say why zero-shot is missing.
    [result] = run_sections(ctx, [TruthDirectionsSection()], lambda source: [p.text for p in ctx.sources[source]])
    assert result.status == "ok", result.notes
    assert any("No zero-shot baseline" in note for note in result.notes)
    for metric in result.metrics:
        assert metric.value is None or math.isfinite(metric.value)


def test_section_skips_encoders_with_a_reason():
    result, _ = _run("bert")
    assert result.status == "skipped" and "causal" in result.notes[0]


def test_a_direction_fitted_on_real_model_activations_round_trips(tmp_path):
    # End to end on the tiny model: activations -> contrast PCA -> artifact -> file -> same decisions.
    from almostlinear.core.collect import collect

    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    prompts = contrast_prompts(toy_statements(4)[:8], question="{statement} ? {answer}", answers=("one", "two"))
    clean = [p for p in prompts if p.variant == "clean"]
    acts = collect(loaded.model, loaded.tokenizer, [p.text for p in clean], ["resid_post.1"], positions="last")
    x = acts["resid_post.1"]
    x_pos, x_neg = x[0::2], x[1::2]
    direction = fit_contrast_pca(x_pos, x_neg).to_direction(0, layer=1)
    loaded_back = TruthDirection.load(direction.save(tmp_path / "t.safetensors"))
    assert (loaded_back.predict(x_pos, x_neg) == direction.predict(x_pos, x_neg)).all()
