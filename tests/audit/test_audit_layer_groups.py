"""Sections whose statistics grow as depth x width², served a group of layers per pass."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from almostlinear.audit.plan import plan_layer_groups, run_sections
from almostlinear.core.models import LoadedModel
from almostlinear.core.section import AuditContext, Budget, LayeredSection, layer_groups
from almostlinear.lens.section import LogitLensSection
from almostlinear.linearity.blocks_section import BlockLinearitySection
from almostlinear.linearity.section import InterLayerLinearity
from tiny_models import D_MLP, D_MODEL, EOS_ID, PAD_ID, VOCAB, WORDS, make_tokenizer

LAYERS = 5


def _model():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=LAYERS,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         vocab_size=VOCAB, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
                                         bos_token_id=None)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
        model.lm_head.weight.mul_(10)
    return model


def _texts(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (12,), generator=g)) for _ in range(n)]


class _Watched:
    """Mixed into a section: records how many layers' moments it holds at most."""

    most = 0

    def consume(self, source, batch):
        super().consume(source, batch)
        held = self.moments.parts if isinstance(self, BlockLinearitySection) else self.group \
            if isinstance(self, LogitLensSection) else list(self.moments)
        layers = {getattr(p, "layer", p) for p in held}
        self.most = max(self.most, len(layers))


class WatchedInterLayer(_Watched, InterLayerLinearity):
    pass


class WatchedBlocks(_Watched, BlockLinearitySection):
    pass


class WatchedLens(_Watched, LogitLensSection):
    pass


def _run(state_bytes, quick=True, tuned=0):
    loaded = LoadedModel(_model(), make_tokenizer(), "tiny-llama-5", "memory", "causal-lm")
    budget = Budget(neutral_texts=64, neutral_new_tokens=12, lens_tokens=60, statements=8, fact_candidates=8,
                    batch_size=8, quick_mode=quick, tuned_lens_tokens=tuned, state_bytes=state_bytes)
    texts = _texts()
    ctx = AuditContext(loaded, budget, progress=lambda _: None, sources={"neutral": texts})
    passes = []
    loaded.model.register_forward_pre_hook(lambda *_: passes.append(1))
    sections = [WatchedInterLayer(), WatchedBlocks(), WatchedLens()]
    results = run_sections(ctx, sections, lambda source: texts)
    return {r.id: r for r in results}, sections, len(passes), ctx


def _values(results):
    return {(rid, m.name, m.layer): m.value for rid, r in results.items() for m in r.metrics}


def test_layer_groups_cover_every_layer_once_within_the_budget():
    assert layer_groups(5, 10, 1000) == [range(0, 5)]
    assert layer_groups(5, 10, 20) == [range(0, 2), range(2, 4), range(4, 5)]
    assert layer_groups(3, 10, 1) == [range(0, 1), range(1, 2), range(2, 3)]  # at least one layer a group
    for groups in (layer_groups(30, 7, 50), layer_groups(32, 3 * 10**9, 12 * 10**9)):
        assert [layer for g in groups for layer in g] == list(range(groups[-1].stop))
    assert len(layer_groups(32, 3 * 10**9, 12 * 10**9)) == 8


def test_sections_served_in_groups_give_the_metrics_of_one_pass_with_bounded_state():
    whole, whole_sections, whole_passes, ctx = _run(state_bytes=10**12)
    per_layer = sum(s.layer_state_bytes(ctx) for s in whole_sections)
    assert plan_layer_groups(ctx, whole_sections) == [range(LAYERS)]
    staged, sections, passes, ctx = _run(state_bytes=2 * per_layer)
    assert plan_layer_groups(ctx, sections) == [range(0, 2), range(2, 4), range(4, 5)]
    for result in list(whole.values()) + list(staged.values()):
        assert result.status == "ok", result.notes
    assert [s.most for s in whole_sections] == [LAYERS] * 3
    assert [s.most for s in sections] == [2, 2, 2]  # never more than one group's layers at once
    # two more passes (8 batches each), the first of them stopped after block 3 (no logits)
    assert passes == whole_passes + 16
    a, b = _values(whole), _values(staged)
    assert a.keys() == b.keys()
    for key, value in a.items():
        # the groups' passes batch the texts as the shared pass does: equal up to float rounding
        assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert any(key[0] == "interlayer_linearity" and key[2] == LAYERS - 1 for key in a)


def test_freed_group_state_leaves_nothing_behind():
    _, sections, _, _ = _run(state_bytes=1)  # one layer a group
    inter, blocks, lens = sections
    assert inter.moments == {} and blocks.moments is None and lens.fitter is None and lens.targets is None
    assert sorted(inter.curves["held_out"]) == list(range(LAYERS))
    # only the maps that can still be among the 2 most or 2 least linear blocks are kept
    assert all(len(fits) <= 4 for fits in blocks.fits.values())


def test_the_quick_budget_trains_the_tuned_lens_on_its_own_token_budget():
    assert Budget.quick().tuned_tokens > 0 and Budget.full().tuned_tokens == Budget.full().lens_tokens
    legacy = Budget(neutral_texts=4, neutral_new_tokens=4, lens_tokens=64, statements=4, fact_candidates=4)
    assert legacy.tuned_tokens == 64  # outside quick mode a budget without the field trains on lens_tokens
    assert Budget(neutral_texts=4, neutral_new_tokens=4, lens_tokens=64, statements=4, fact_candidates=4,
                  quick_mode=True).tuned_tokens == 0
    results, sections, _, ctx = _run(state_bytes=10**12, quick=True, tuned=64)
    lens = results["logit_lens"]
    assert lens.status == "ok", lens.notes
    assert [s.name for s in lens.figures[0].series] == ["logit lens", "affine lens", "tuned lens"]
    tuned = [lens.metric("tuned_lens_kl", layer).value for layer in range(-1, LAYERS - 1)]
    affine = [lens.metric("affine_lens_kl", layer).value for layer in range(-1, LAYERS - 1)]
    assert all(math.isfinite(v) and v >= 0 for v in tuned)
    assert tuned != affine  # trained away from its affine start
    assert lens.metric("median_tuned_lens_kl").value >= 0
    assert any("64 training tokens" in note for note in lens.notes)
    # served in groups, the tuned lens starts from the same affine lens and scores the same
    staged, _, _, _ = _run(state_bytes=1, quick=True, tuned=64)
    for layer in range(-1, LAYERS - 1):
        assert staged["logit_lens"].metric("tuned_lens_kl", layer).value == pytest.approx(
            lens.metric("tuned_lens_kl", layer).value, rel=1e-5)


def test_a_layered_section_run_without_groups_still_finishes():
    # a runner that only calls needs/consume/finish gets the one-group behaviour
    loaded = LoadedModel(_model(), make_tokenizer(), "tiny-llama-5", "memory", "causal-lm")
    budget = Budget(neutral_texts=16, neutral_new_tokens=12, lens_tokens=60, statements=8, fact_candidates=8)
    ctx = AuditContext(loaded, budget, progress=lambda _: None, sources={"neutral": _texts(16)})
    section = InterLayerLinearity()
    assert isinstance(section, LayeredSection)
    [need] = section.needs(ctx)
    from almostlinear.core.collect import stream
    for batch in stream(loaded.model, loaded.tokenizer, ctx.texts("neutral"), need.sites, skip_first=True):
        section.consume("neutral", batch)
    result = section.finish(ctx)
    assert result.status == "ok" and len([m for m in result.metrics if m.name == "linearity_held_out"]) == LAYERS


@pytest.mark.parametrize("d, layers, expected_group", [(576, 30, 30), (4096, 32, 3), (8192, 80, 1)])
def test_the_default_budget_groups_big_models_and_leaves_small_ones_in_one_pass(d, layers, expected_group):
    from types import SimpleNamespace

    ctx = SimpleNamespace(structure=SimpleNamespace(d_model=d, n_layers=layers), budget=Budget.quick())
    sections = [InterLayerLinearity(), BlockLinearitySection(), LogitLensSection()]
    groups = plan_layer_groups(ctx, sections)
    assert len(groups[0]) == expected_group
    per_layer = sum(s.layer_state_bytes(ctx) for s in sections)
    assert per_layer == pytest.approx(180 * d * d, rel=1e-2)  # the 48 + 96 + 36 B·d² the sections declare
    assert len(groups[0]) * per_layer <= max(Budget.quick().state_bytes, per_layer)


def test_state_memory_option_reaches_the_budget(monkeypatch, tmp_path):
    import almostlinear.audit as audit_package
    from almostlinear.cli import main
    from almostlinear.clitools import byte_size

    assert [byte_size(t) for t in ("6GB", "512MiB", "2e9", "1.5 gib", "4096")] == \
        [6 * 10**9, 512 * 2**20, 2 * 10**9, int(1.5 * 2**30), 4096]
    seen = {}

    class Stop(Exception):
        pass

    def fake_run_audit(*args, budget=None, quick=False, **kwargs):
        seen.update(budget=budget, quick=quick)
        raise Stop

    monkeypatch.setattr(audit_package, "run_audit", fake_run_audit)
    with pytest.raises(Stop):  # --debug lets the stub's exception through instead of a one-line error
        main(["--debug", "audit", "--quick", "--state-memory", "3GiB", "--out", str(tmp_path / "out"), "--quiet"])
    assert seen["budget"].state_bytes == 3 * 2**30
    assert seen["budget"].quick_mode and seen["quick"]
    assert seen["budget"].lens_tokens == Budget.quick().lens_tokens  # only the state budget changed
