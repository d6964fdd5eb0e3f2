import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge
from tiny_models import WORDS, build_model, make_tokenizer

from almostlinear import locate, stream
from almostlinear.core.artifact import Where
from almostlinear.core.errors import ChoiceError, EmptyDataError, LayerError, ShapeError
from almostlinear.lens import AffineLens, AffineLensFitter, LogitLens, evaluate_lenses, fit_affine_lens, lens_sites


def _synthetic(n, d=6, states=3, seed=0):
    """States whose last is an exact affine image of each earlier one, plus noise."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 5, d, dtype=torch.float64)
    out = [first]
    for _ in range(states - 1):
        out.append(out[-1] @ torch.randn(d, d, generator=g, dtype=torch.float64) * 0.5 + 1.0
                   + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64))
    return out


def _random_texts(n, seed, words=12):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (words,), generator=g).tolist()) for _ in range(n)]


def test_ridge_translator_matches_scikit_learn():
    states = _synthetic(300)
    lens = AffineLensFitter(3, 6).update(states).result(ridge=0.1)
    for s in range(2):
        x, y = states[s].numpy(), (states[-1] - states[s]).numpy()
        # fit_affine's ridge is relative: lam = ridge * mean variance of x (population); sklearn's alpha = lam * n
        alpha = 0.1 * x.var(0).mean() * len(x)
        ref = Ridge(alpha=alpha).fit(x, y)
        assert np.allclose(lens.A[s].numpy(), ref.coef_.T, atol=1e-4)
        assert np.allclose(lens.b[s].numpy(), ref.intercept_, atol=1e-4)
        predicted = lens.translate(states[s].float(), s).double().numpy()
        assert np.allclose(predicted, x + ref.predict(x), atol=1e-3)


def test_last_state_is_the_identity_and_bias_lens_is_the_mean_shift():
    states = _synthetic(200)
    fitter = AffineLensFitter(3, 6).update(states)
    lens, bias = fitter.result(ridge=1e-3), fitter.bias_only()
    h = torch.randn(5, 6)
    assert torch.equal(lens.translate(h, 2), h) and torch.equal(lens.translate(h, -1), h)
    assert bias.A is None
    for s in range(2):
        shift = (states[-1] - states[s]).mean(0).float()
        assert torch.allclose(bias.translate(h, s), h + shift, atol=1e-5)


def test_ridge_is_chosen_by_validation_error():
    states = _synthetic(240, d=8, seed=3)
    mask = torch.arange(240) % 4 == 3
    ridges = (1e-3, 1.0, 100.0)
    fitter = AffineLensFitter(3, 8).update(states, validation=mask)
    lens = fitter.result(ridges=ridges)
    for s in range(2):
        x, y = states[s].numpy(), (states[-1] - states[s]).numpy()
        tr, va = ~mask.numpy(), mask.numpy()
        errors = []
        for r in ridges:
            ref = Ridge(alpha=r * x[tr].var(0).mean() * tr.sum()).fit(x[tr], y[tr])
            errors.append(((ref.predict(x[va]) - y[va]) ** 2).sum())
        assert lens.ridge[s] == ridges[int(np.argmin(errors))]
    assert lens.ridge[-1] is None
    assert lens.tokens == 240


@settings(max_examples=20)
@given(st.lists(st.integers(1, 60), min_size=2, max_size=5))
def test_streamed_fit_equals_one_batch(cuts):
    states = _synthetic(sum(cuts), seed=len(cuts))
    whole = AffineLensFitter(3, 6, batch_dtype=torch.float64).update(states).result(ridge=0.5)
    fitter = AffineLensFitter(3, 6, batch_dtype=torch.float64)
    start = 0
    for size in cuts:
        fitter.update([s[start:start + size] for s in states])
        start += size
    parts = fitter.result(ridge=0.5)
    assert torch.allclose(whole.A, parts.A, atol=1e-5) and torch.allclose(whole.b, parts.b, atol=1e-4)


def test_bad_input_is_refused():
    fitter = AffineLensFitter(3, 6)
    with pytest.raises(ShapeError, match="3 states"):
        fitter.update(_synthetic(10)[:2])
    with pytest.raises(ShapeError, match="bool mask"):
        fitter.update(_synthetic(10), validation=torch.ones(3, dtype=torch.bool))
    with pytest.raises(EmptyDataError, match="at least 2 tokens"):
        fitter.result(ridge=1.0)
    fitter.update(_synthetic(20))
    with pytest.raises(EmptyDataError, match="validation"):
        fitter.result()  # no validation rows to choose the ridge on
    with pytest.raises(ShapeError):
        AffineLensFitter(1, 6)
    lens = fitter.result(ridge=1.0)
    with pytest.raises(LayerError, match="out of range"):
        lens.translate(torch.zeros(2, 6), 3)
    with pytest.raises(ShapeError, match="expects 6 features"):
        lens.translate(torch.zeros(2, 5), 0)
    with pytest.raises(ShapeError, match="fit a lens for this model"):
        lens.bind(locate(build_model("llama")))


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_affine_lens_beats_logit_lens_on_held_out_text(family):
    # A tiny random model with a sharpened head (x10), so that the final distributions are peaked and the
    # logit lens is measurably off; fitted on 200 random texts (~2200 tokens for d_model = 32), scored on 40 others.
    model, tokenizer = build_model(family), make_tokenizer()
    structure = locate(model)
    with torch.no_grad():
        structure.unembedding.weight.mul_(10)
    affine = fit_affine_lens(model, tokenizer, _random_texts(200, seed=1), structure=structure)
    assert isinstance(affine, AffineLens) and affine.provenance.model_fingerprint
    assert affine.provenance.where == Where("resid_post", ()) and affine.provenance.units is None  # every layer
    assert not any(hasattr(affine, verb) for verb in ("apply", "bake_"))  # a lens only reads
    decoder = LogitLens.from_structure(structure)
    held_out = stream(model, tokenizer, _random_texts(40, seed=2), lens_sites(structure), logits=True,
                      skip_first=True, structure=structure)
    scores = evaluate_lenses({"logit": decoder, "affine": affine}, held_out, decoder=decoder)
    logit, fitted = scores["logit"].kl, scores["affine"].kl
    assert all(a < 0.9 * g for a, g in zip(fitted[:-1], logit[:-1])), (fitted, logit)
    assert fitted[-1] == pytest.approx(0.0, abs=1e-5) and logit[-1] == pytest.approx(0.0, abs=1e-5)


@settings(max_examples=15)
@given(st.integers(0, 10_000), st.sampled_from([1e-4, 1e-2, 1.0, 30.0]))
def test_validation_errors_equal_the_direct_fit_and_score(seed, ridge):
    from almostlinear.core.stats import RunningMoments
    from almostlinear.lens.affine import validation_errors
    from almostlinear.linearity.affine import affine_r2, fit_affine

    states = _synthetic(120, d=5, seed=seed)
    x, y = states[0], states[-1] - states[0]
    train = RunningMoments(5, 5).update(x[:80], y[:80])
    val = RunningMoments(5, 5).update(x[80:] + 0.3, y[80:])  # shifted, so the mean term matters
    direct = (1 - affine_r2(fit_affine(train, ridge=ridge), val)) * float(torch.trace(val.cov_y(ddof=0)))
    assert float(validation_errors(train, val, [ridge])[0]) == pytest.approx(direct, rel=1e-6, abs=1e-9)


def test_fit_affine_lens_checks_its_arguments():
    model, tokenizer = build_model("llama"), make_tokenizer()
    with pytest.raises(EmptyDataError, match="at least 4 texts"):
        fit_affine_lens(model, tokenizer, _random_texts(3, seed=0))
    with pytest.raises(ChoiceError, match="affine lens method"):
        fit_affine_lens(model, tokenizer, _random_texts(8, seed=0), method="tuned")
    bias = fit_affine_lens(model, tokenizer, _random_texts(3, seed=0), method="bias")
    assert bias.A is None and bias.method == "bias" and bias.provenance.extra["texts"] == 3
