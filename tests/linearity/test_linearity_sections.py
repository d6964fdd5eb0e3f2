"""The block-linearity and causal-inner-product audit sections on tiny models."""

import pytest
import torch

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.models import LoadedModel
from almostlinear.linearity.blocks_section import BlockLinearitySection
from almostlinear.linearity.blocks import held_out_r2
from almostlinear.linearity.causal_section import CausalInnerProductSection
from almostlinear.linearity.passes import sublayer_moments
from almostlinear.linearity.sublayers import KINDS, sublayer
from tiny_models import WORDS, build_model, make_tokenizer

BUDGET = Budget(neutral_texts=24, neutral_new_tokens=8, lens_tokens=40, statements=40, fact_candidates=40,
                batch_size=8)


def _texts(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (10,), generator=g)) for _ in range(n)]


def _run(family, sections):
    kind = "encoder" if family == "bert" else "causal-lm"
    loaded = LoadedModel(build_model(family), make_tokenizer(), f"tiny-{family}", "memory", kind)
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None, sources={"neutral": _texts()})
    return run_sections(ctx, sections, lambda source: ctx.sources[source])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_block_linearity_section_reports_r2_replacement_and_angles(family):
    (result,) = _run(family, [BlockLinearitySection()])
    assert result.status == "ok", result.notes
    for kind in ("attn", "mlp"):
        values = [result.metric(f"{kind}_r2_held_out", layer).value for layer in range(2)]
        assert all(v <= 1 for v in values)
        assert result.metric(f"{kind}_r2_held_out_mean").value == pytest.approx(sum(values) / 2)
        deltas = [m for m in result.metrics if m.name == f"{kind}_replacement_delta_ce"]
        assert {m.layer for m in deltas} == {0, 1}  # two blocks: each is among the most and least linear
    assert result.metric("mlp_r2_held_out", 0).source == "arXiv 2606.19379"
    assert result.metric("angular_distance_min_n1").value == pytest.approx(
        min(result.metric("angular_distance_across_block", layer).value for layer in range(2)))
    assert 0 <= result.metric("angular_distance_min_n2").value <= 1
    assert {f.id for f in result.figures} == {"sublayer_r2", "replacement_delta_ce", "angular_distance",
                                              "angular_distance_min"}
    for figure in result.figures:
        for series in figure.series:
            assert len(series.x) == len(series.y)


def test_block_linearity_is_skipped_for_bert_with_a_reason():
    (result,) = _run("bert", [BlockLinearitySection()])
    assert result.status == "skipped" and "MLP" in result.notes[0]


def test_causal_inner_product_section_needs_no_forward_pass():
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny", "memory", "causal-lm")
    calls = []
    loaded.model.register_forward_pre_hook(lambda *_: calls.append(1))
    ctx = AuditContext(loaded, BUDGET, progress=lambda _: None)
    (result,) = run_sections(ctx, [CausalInnerProductSection()], lambda source: [])
    assert result.status == "ok", result.notes
    assert calls == []
    assert result.metric("whitening_identity_error").value < 1e-8
    causal, euclid = result.metric("mean_abs_cos_causal").value, result.metric("mean_abs_cos_euclidean").value
    assert 0 <= causal <= 1 and 0 <= euclid <= 1
    assert result.metric("pairs_country_to_capital").value == 5  # the tiny vocabulary holds five of them
    n = result.metric("concepts").value
    assert len(result.figures[0].series[0].y) == n * (n - 1) // 2


def test_causal_section_is_skipped_without_a_head():
    (result,) = _run("bert", [CausalInnerProductSection()])
    assert result.status == "skipped" and "output head" in result.notes[0]


def _own_pass_r2(loaded, texts):
    """The held-out R² of a separate forward pass per split (how the section measured before it joined
    the shared pass)."""
    s = loaded.structure
    parts = [sublayer(s, layer, kind) for layer in range(s.n_layers) for kind in KINDS]
    splits = [[t for i, t in enumerate(texts) if i % 4 in rests] for rests in ((0, 1), (2,), (3,))]
    moments = [sublayer_moments(loaded.model, loaded.tokenizer, s, split, parts, batch_size=BUDGET.batch_size)
               for split in splits]
    return {kind: held_out_r2(*(m[kind] for m in moments))[0] for kind in KINDS}, moments


class _KeepingMoments(BlockLinearitySection):
    """Keeps the last group's moments, which the section frees once they are fitted."""

    def reduce_layers(self, ctx, layers):
        self.kept = self.moments.result()
        super().reduce_layers(ctx, layers)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_block_fits_from_the_shared_pass_equal_those_of_a_pass_per_split(family):
    section = _KeepingMoments()
    (result,) = _run(family, [section])
    loaded = LoadedModel(build_model(family), make_tokenizer(), f"tiny-{family}", "memory", "causal-lm")
    r2, moments = _own_pass_r2(loaded, _texts())
    for kind in KINDS:
        for layer in range(2):
            assert result.metric(f"{kind}_r2_held_out", layer).value == pytest.approx(float(r2[kind][layer]), abs=1e-6)
        for own, shared in zip(moments, section.kept.values()):
            assert own[kind].n == shared[kind].n
            for name in ("mean_x", "mean_y", "sxx_", "sxy_", "syy_"):  # equal to float32 rounding
                a, b = getattr(own[kind], name), getattr(shared[kind], name)
                assert float((a - b).abs().max()) <= 1e-6 * float(a.abs().max()), name


def test_block_linearity_reads_a_mixture_of_experts_as_one_mlp_sublayer():
    # mlp_in and mlp_out are the sparse block's input and output, so the section needs no down projection
    (result,) = _run("mixtral", [BlockLinearitySection()])
    assert result.status == "ok", result.notes
    assert all(result.metric("mlp_r2_held_out", layer).value <= 1 for layer in range(2))
    assert {m.layer for m in result.metrics if m.name == "mlp_replacement_delta_ce"} == {0, 1}
