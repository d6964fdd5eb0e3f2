"""Per-block affine fits: moments, held-out R², sublayer recording and replacement on tiny models."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from almostlinear.core.collect import tokenize
from almostlinear.core.errors import ChoiceError, ShapeError, StructureError
from almostlinear.core.hooks import record
from almostlinear.core.locate import locate
from almostlinear.core.stats import RunningMoments
from almostlinear.linearity import PairMoments, held_out_r2, replace_sublayer, sublayer
from almostlinear.linearity.affine import AffineFit
from almostlinear.core.collect import Batch
from almostlinear.linearity.passes import SplitMoments, next_token_loss, sublayer_moments
from almostlinear.linearity.sublayers import KINDS
from tiny_models import CAUSAL, TEXTS, WORDS, build_model, make_tokenizer


def _random_texts(n=40, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (length,), generator=g)) for _ in range(n)]


def _pairs(n, seed, noise=0.5, layers=2, d=5, maps_seed=100):
    maps = torch.randn(layers, d, d, generator=torch.Generator().manual_seed(maps_seed), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(layers, n, d, generator=g, dtype=torch.float64) * 3 + 1
    return x, x @ maps + 2 + noise * torch.randn(layers, n, d, generator=g, dtype=torch.float64)


def test_held_out_r2_equals_numpy_least_squares_scored_on_test():
    x, y = _pairs(300, 0)
    xt, yt = _pairs(200, 1)  # new inputs and noise, the same maps
    moments = PairMoments(2, 5, 5, torch.float64)
    moments.update(x[:, :150], y[:, :150]).update(x[:, 150:], y[:, 150:])
    test = PairMoments(2, 5, 5, torch.float64).update(xt, yt)
    scores = test.r2(moments.fit(0.0))
    for layer in range(2):
        design = np.hstack([x[layer].numpy(), np.ones((300, 1))])
        coef, *_ = np.linalg.lstsq(design, y[layer].numpy(), rcond=None)
        pred = np.hstack([xt[layer].numpy(), np.ones((200, 1))]) @ coef
        target = yt[layer].numpy()
        expected = 1 - ((target - pred) ** 2).sum() / ((target - target.mean(0)) ** 2).sum()
        assert abs(float(scores[layer]) - expected) < 1e-7
    assert 0.9 < float(scores.min()) < 1  # a real held-out score, not a degenerate one


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.integers(0, 10_000))
def test_merged_moments_equal_moments_of_all_data(cut, seed):
    x, y = _pairs(61, seed)
    whole = PairMoments(2, 5, 5, torch.float64).update(x, y)
    a = PairMoments(2, 5, 5, torch.float64).update(x[:, :cut], y[:, :cut])
    b = PairMoments(2, 5, 5, torch.float64).update(x[:, cut:], y[:, cut:])
    merged = a.merge(b)
    assert isinstance(merged, PairMoments)
    for name in ("mean_x", "mean_y", "sxx_", "sxy_", "syy_"):
        assert torch.allclose(getattr(merged, name), getattr(whole, name), atol=1e-9, rtol=1e-9)
    assert merged.n == whole.n


def test_each_layer_of_pair_moments_equals_running_moments_of_that_layer():
    x, y = _pairs(40, 3)
    pairs = PairMoments(2, 5, 5, torch.float64).update(x[:, :15], y[:, :15]).update(x[:, 15:], y[:, 15:])
    for layer in range(2):
        single = RunningMoments(5, 5).update(x[layer, :15], y[layer, :15]).update(x[layer, 15:], y[layer, 15:])
        assert torch.allclose(pairs.mean_x[layer], single.mean_x, rtol=1e-12, atol=1e-12)
        assert torch.allclose(pairs.sxx_[layer], single.sxx_, rtol=1e-12, atol=1e-10)
        assert torch.allclose(pairs.sxy_[layer], single.sxy_, rtol=1e-12, atol=1e-10)
        assert torch.allclose(pairs.syy_[layer], single.syy_.trace(), rtol=1e-12)
    with pytest.raises(ShapeError, match="trace"):
        pairs.cov_y()


def test_ridge_is_chosen_on_validation_and_exact_maps_score_one():
    x, y = _pairs(200, 2, noise=0.0)
    parts = [PairMoments(2, 5, 5, torch.float64).update(x[:, i::3], y[:, i::3]) for i in range(3)]
    scores, fits = held_out_r2(*parts)
    assert torch.all(scores > 1 - 1e-6)  # the smallest ridge of the grid, 1e-4, shrinks a little
    assert len(fits) == 2 and fits[0].A.shape == (5, 5)
    with pytest.raises(ShapeError):
        parts[0].update(x[:1], y[:1])


def _linear_mlp(model):
    """Make every MLP of a tiny Llama exactly linear: act(gate) -> 1, so mlp(x) = down(up(x))."""
    for layer in model.model.layers:
        layer.mlp.act_fn = torch.nn.Module()
        layer.mlp.act_fn.forward = lambda t: torch.ones_like(t)
    return model


def test_an_exactly_linear_mlp_scores_one_and_a_real_one_less():
    tok = make_tokenizer()
    train, test = _random_texts(40, seed=0), _random_texts(20, seed=1)
    for model, expect_one in ((_linear_mlp(build_model("llama")), True), (build_model("llama", seed=3), False)):
        s = locate(model)
        parts = [sublayer(s, i, "mlp") for i in range(s.n_layers)]
        fit_on = sublayer_moments(model, tok, s, train, parts, batch_size=8)["mlp"]
        scored = sublayer_moments(model, tok, s, test, parts, batch_size=8)["mlp"]
        assert fit_on.n > 8 * s.d_model  # far more tokens than features: held-out R² is meaningful
        scores = scored.r2(fit_on.fit(0.0))
        if expect_one:
            assert torch.all(scores > 1 - 1e-6), scores
        else:
            assert torch.all(scores < 1 - 1e-4), scores


def test_attention_over_a_single_token_is_affine():
    # softmax over one key is 1, so attention reduces to o_proj(v_proj(x)) (+ biases in some families)
    words = list(WORDS)
    for family in CAUSAL:
        model, tok = build_model(family), make_tokenizer()
        s = locate(model)
        parts = [sublayer(s, i, "attn") for i in range(s.n_layers)]
        moments = sublayer_moments(model, tok, s, words, parts, skip_first=False)["attn"]
        assert moments.n == len(words) > s.d_model
        scores = moments.r2(moments.fit(0.0))  # an exact map fits every token, in or out of sample
        assert torch.all(scores > 1 - 1e-6), (family, scores)
    # with context, attention mixes tokens and is no longer affine in the token's own input
    model = build_model("llama")
    s = locate(model)
    parts = [sublayer(s, i, "attn") for i in range(s.n_layers)]
    fit_on = sublayer_moments(model, make_tokenizer(), s, _random_texts(40), parts)["attn"]
    scored = sublayer_moments(model, make_tokenizer(), s, _random_texts(20, seed=2), parts)["attn"]
    assert torch.all(scored.r2(fit_on.fit(1e-4)) < 0.999)


@pytest.mark.parametrize("family", CAUSAL)
def test_replacing_a_sublayer_by_an_exact_map_leaves_the_logits_unchanged(family):
    model, tok = build_model(family), make_tokenizer()
    s = locate(model)
    inputs = tokenize(tok, list(TEXTS), max_length=32, device="cpu")
    with torch.no_grad():
        before = model(**inputs).logits
    part = sublayer(s, 1, "mlp")
    with torch.no_grad(), record(model, [part.output], keep_full=True, structure=s) as reading:
        model(**inputs)
    true_out = reading.full(part.output)[0].clone()
    # a "map" that returns the recorded output for these inputs: replacement by a perfect fit
    with torch.no_grad(), replace_sublayer(model, part, lambda x: true_out):
        same = model(**inputs).logits
    assert torch.allclose(same, before, atol=1e-6)
    # an affine map that is not the sublayer changes the logits; leaving restores the model
    d = s.d_model
    zero = AffineFit(torch.zeros(d, d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64),
                     torch.zeros(d, dtype=torch.float64), 0.0)
    with torch.no_grad(), replace_sublayer(model, part, zero):
        changed = model(**inputs).logits
    assert not torch.allclose(changed, before, atol=1e-4)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)


def test_fitted_map_of_a_linear_mlp_replaces_it_exactly_and_hooks_go_away_on_errors():
    model, tok = _linear_mlp(build_model("llama")), make_tokenizer()
    s = locate(model)
    part = sublayer(s, 0, "mlp")
    fits = sublayer_moments(model, tok, s, _random_texts(40), [part], batch_size=8)["mlp"].fit(0.0)
    base, _ = next_token_loss(model, tok, list(TEXTS))
    with replace_sublayer(model, part, fits[0], skip_first=True):
        replaced, _ = next_token_loss(model, tok, list(TEXTS))
    assert abs(replaced - base) < 1e-5
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    with pytest.raises(RuntimeError, match="boom"), replace_sublayer(model, part, fits[0]):
        raise RuntimeError("boom")
    assert hooks() == 0


def test_sublayers_are_found_in_every_decoder_and_refused_in_bert():
    for family in CAUSAL:
        s = locate(build_model(family))
        for kind in KINDS:
            part = sublayer(s, 0, kind)
            assert (part.input.name, part.output.name) == (f"{kind}_in", f"{kind}_out")
            reads, writes = part.input.target(s)[0], part.output.target(s)[0]
            assert any(m is writes for m in reads.modules())  # the output projection is inside the sublayer
    with pytest.raises(StructureError, match="MLP"):
        sublayer(locate(build_model("bert")), 0, "mlp")
    with pytest.raises(ChoiceError, match="kind"):
        sublayer(locate(build_model("llama")), 0, "ffn")


def _batch(parts, text_index, d=5, seed=0):
    """A batch of random sublayer activations, a few rows per text (none for some texts)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 4, (len(text_index),), generator=g)
    rows = torch.repeat_interleave(torch.as_tensor(text_index), counts)
    acts = {site: torch.randn(len(rows), d, generator=g) * 3 + 1 for p in parts for site in (p.input, p.output)}
    return Batch(acts, torch.zeros(len(rows), dtype=torch.long), rows, torch.ones(len(rows), dtype=torch.long))


def test_split_moments_from_shared_batches_equal_a_pass_per_split_bit_for_bit():
    from almostlinear.linearity import Sublayer

    parts = [Sublayer(layer, kind) for layer in range(2) for kind in KINDS]
    splits = {"train": (0, 1), "val": (2,), "test": (3,)}
    # shared batches of 6 texts after a first part of 5 (as when some texts also give logits)
    bounds = [0, 5, 11, 17, 23, 29, 30]
    batches = [_batch(parts, list(range(a, b)), seed=a) for a, b in zip(bounds[:-1], bounds[1:])]
    shared = SplitMoments(parts, 5, splits, texts_per_update=4)
    for batch in batches:
        shared.add(batch)
    got = shared.result()
    joined = {site: torch.cat([b.activations[site] for b in batches]) for site in batches[0].activations}
    index = torch.cat([b.text_index for b in batches])
    for name, residues in splits.items():
        texts = [i for i in range(30) if i % 4 in residues]
        expected = {kind: PairMoments(2, 5, 5) for kind in KINDS}
        for start in range(0, len(texts), 4):  # a pass over this split alone, 4 texts a batch
            rows = torch.isin(index, torch.tensor(texts[start:start + 4])).nonzero()[:, 0]
            for kind in KINDS:
                chosen = [p for p in parts if p.kind == kind]
                expected[kind].update(torch.stack([joined[p.input][rows] for p in chosen]),
                                      torch.stack([joined[p.output][rows] for p in chosen]))
        for kind in KINDS:
            assert got[name][kind].n == expected[kind].n > 0
            for field in ("mean_x", "mean_y", "sxx_", "sxy_", "syy_"):
                assert torch.equal(getattr(got[name][kind], field), getattr(expected[kind], field)), (name, kind, field)
