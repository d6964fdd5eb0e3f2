"""Dose-response, linearity, steerability, KL-budgeted choice and composition, on tiny models."""

import numpy as np
import pytest
import torch
from scipy import stats

from almostlinear.core.errors import NonFiniteError
from almostlinear.core.hooks import record
from almostlinear.steering import (
    TokenPreference,
    additivity,
    anti_steerable_fraction,
    choose_layer_and_strength,
    cosine_matrix,
    cross_effects,
    dose_response,
    fit_steering,
    linear_fit,
    side_effects,
    steerability,
)
from almostlinear.data.statements import split
from tiny_models import TEXTS, WORDS, build_model, make_tokenizer

PAIRS = [(TEXTS[0], TEXTS[3]), (TEXTS[1], TEXTS[5]), (TEXTS[2], TEXTS[4])]
PROMPTS = ["the cat is", "a dog", "the old king", "Paris is the", "one two", "Rome is in"]


def test_linear_fit_matches_scipy():
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 7)
    y = 0.3 + 2.0 * x[:, None] + rng.normal(size=(7, 5))
    slope, intercept, r2 = linear_fit(torch.tensor(x), torch.tensor(y))
    for j in range(5):
        ref = stats.linregress(x, y[:, j])
        assert float(slope[j]) == pytest.approx(ref.slope)
        assert float(intercept[j]) == pytest.approx(ref.intercept)
        assert float(r2[j]) == pytest.approx(ref.rvalue**2)


def test_steerability_and_anti_steerable_share():
    s = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    scores = torch.stack([2 * s, -0.5 * s, s + 3, torch.zeros(4)], 1)  # slopes 2, -0.5, 1, 0
    assert torch.allclose(steerability(scores, s), torch.tensor([2.0, -0.5, 1.0, 0.0], dtype=torch.float64))
    assert anti_steerable_fraction(steerability(scores, s)) == 0.25
    assert anti_steerable_fraction(steerability(scores, s), sign=-1) == 0.5


def _projection_behaviour(site, u):
    """Exactly linear in an added vector: the mean projection of the site's activation on u."""
    def score(model, tokenizer, prompts):
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
        with torch.no_grad(), record(model, site, positions="last") as rec:
            model(**enc)
        return rec[site].double() @ u
    return score


@pytest.fixture(scope="module")
def setup():
    model, tok = build_model("llama"), make_tokenizer()
    return model, tok, fit_steering(model, tok, PAIRS, layer=0)


def test_dose_response_of_an_exactly_linear_behaviour(setup):
    model, tok, vector = setup
    u = torch.randn(vector.d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dose = dose_response(model, tok, vector, PROMPTS, [-1.0, 0.5, 1.0, 2.0], _projection_behaviour("resid_post.0", u))
    assert dose.strengths == [-1.0, 0.0, 0.5, 1.0, 2.0]  # 0 added
    expected_slope = vector.norms["residual_median"] * float(vector.direction.double() @ u)
    assert dose.linearity()["slope"] == pytest.approx(expected_slope, rel=1e-4)
    assert dose.linearity()["r2"] == pytest.approx(1.0, abs=1e-8)
    assert torch.allclose(dose.slopes, torch.full((len(PROMPTS),), expected_slope, dtype=torch.float64), rtol=1e-4)
    assert dose.anti_steerable(sign=1 if expected_slope > 0 else -1) == 0.0
    assert dose.side == [None] * 5


def test_dose_response_side_effects_match_cost_and_grow(setup):
    model, tok, vector = setup
    beh = TokenPreference([" cat", " dog"], [" king", " queen"])
    neutral = list(TEXTS)
    dose = dose_response(model, tok, vector, PROMPTS, [-2.0, 1.0, 4.0], beh, neutral=neutral)
    zero = dose.strengths.index(0.0)
    assert dose.kl[zero] == 0.0 and dose.delta_ce[zero] == 0.0
    assert dose.kl[-1] > dose.kl[zero + 1] > 0
    direct = side_effects(model, tok, neutral, lambda: vector.apply(model, 4.0), skip_first=True, max_length=64)
    assert dose.side[-1].kl == pytest.approx(direct.kl)
    assert torch.equal(dose.baseline, beh(model, tok, PROMPTS))
    with pytest.raises(NonFiniteError):
        dose_response(model, tok, vector, PROMPTS, [float("nan")], beh)


def test_token_preference_is_the_log_odds_of_the_word_sets(setup):
    model, tok, _ = setup
    beh = TokenPreference([" cat", " dog"], [" king"])
    score = beh(model, tok, ["the old king"])
    ids = tok(["the old king"], return_tensors="pt")
    with torch.no_grad():
        log_p = torch.log_softmax(model(**ids).logits[0, -1].double(), -1)
    cat, dog, king = (WORDS.index(w) + 3 for w in ("cat", "dog", "king"))
    expected = torch.logsumexp(log_p[[cat, dog]], 0) - log_p[king]
    assert float(score[0]) == pytest.approx(float(expected), abs=1e-4)


def test_choice_respects_the_kl_budget_and_reports_held_out_numbers():
    model, tok = build_model("gpt2"), make_tokenizer()
    beh = TokenPreference([" cat"], [" king"])
    choice = choose_layer_and_strength(model, tok, PAIRS, PROMPTS, beh, list(TEXTS), layers=[0, 1],
                                       strengths=[0.5, 1.0, 4.0], kl_budget=0.005)
    assert len(choice.grid) == 6
    allowed = [r for r in choice.grid if r["kl"] <= 0.005]
    assert allowed and len(allowed) < len(choice.grid)  # the budget binds, and something fits in it
    best = max(allowed, key=lambda r: r["effect"])
    assert (choice.layer, choice.strength) == (best["layer"], best["strength"])
    assert choice.validation_prompts + choice.test_prompts == len(PROMPTS)
    # the reported numbers are those of the held-out halves, recomputed here by hand
    val, test = split(PROMPTS, 0.5, seed=0, key=lambda p: p)
    neutral_test = split(list(TEXTS), 0.5, seed=0, key=lambda t: t)[1]
    with choice.vector.apply(model, choice.strength):
        steered = beh(model, tok, test)
    assert choice.test_effect == pytest.approx(float((steered - beh(model, tok, test)).mean()), abs=1e-9)
    held_out_kl = side_effects(model, tok, neutral_test, lambda: choice.vector.apply(model, choice.strength),
                               max_length=64, skip_first=True).kl
    assert choice.test_kl == pytest.approx(held_out_kl, abs=1e-9)
    none = choose_layer_and_strength(model, tok, PAIRS, PROMPTS, beh, list(TEXTS), layers=[0], strengths=[50.0],
                                     kl_budget=0.0)
    assert none.layer is None and none.vector is None


def test_additivity_and_cross_effects_on_a_linear_behaviour(setup):
    model, tok, first = setup
    second = fit_steering(model, tok, PAIRS[:2], layer=0, method="pca_uncentred")
    g = torch.Generator().manual_seed(1)
    u, w = (torch.randn(first.d, generator=g, dtype=torch.float64) for _ in range(2))
    beh = _projection_behaviour("resid_post.0", u)
    result = additivity(model, tok, first, second, beh, PROMPTS, (0.7, -1.3))
    assert result.gap == pytest.approx(0.0, abs=1e-4 * max(1.0, abs(result.effect_joint)))
    assert result.ratio == pytest.approx(1.0, rel=1e-4)
    behaviours = {"u": beh, "w": _projection_behaviour("resid_post.0", w)}
    cross = cross_effects(model, tok, {"a": first, "b": second}, behaviours, PROMPTS, strength=0.5)
    for i, v in enumerate((first, second)):
        for j, direction in enumerate((u, w)):
            assert float(cross.matrix[i, j]) == pytest.approx(float(v.added(0.5).double() @ direction), rel=1e-4,
                                                              abs=1e-6)
    cos = cosine_matrix([first, second])
    assert float(cos[0, 1]) == pytest.approx(first.cosine(second))
    assert torch.allclose(cos.diagonal(), torch.ones(2, dtype=torch.float64))


def test_vector_side_effects_is_the_cost_of_applying_it(setup):
    model, tok, vector = setup
    ours = vector.side_effects(model, list(TEXTS), 2.0, tokenizer=tok)
    direct = side_effects(model, tok, list(TEXTS), lambda: vector.apply(model, 2.0), skip_first=True)
    assert ours.kl == pytest.approx(direct.kl) and ours.delta_ce == pytest.approx(direct.delta_ce)
    assert ours.kl > 0


def test_additivity_gap_of_a_nonlinear_behaviour_is_measured_not_assumed(setup):
    # next-token log-odds are not linear in the residual stream: the gap is nonzero and is exactly
    # joint - (first + second), each computed here with the hooks directly
    model, tok, first = setup
    second = fit_steering(model, tok, PAIRS[:2], layer=1)
    beh = TokenPreference([" cat", " dog"], [" king", " queen"])
    result = additivity(model, tok, first, second, beh, PROMPTS, (3.0, 4.0))
    base = beh(model, tok, PROMPTS)
    with first.apply(model, 3.0):
        one = beh(model, tok, PROMPTS) - base
    with second.apply(model, 4.0):
        two = beh(model, tok, PROMPTS) - base
    with first.apply(model, 3.0), second.apply(model, 4.0):
        both = beh(model, tok, PROMPTS) - base
    assert result.gap == pytest.approx(float((both - one - two).mean()), abs=1e-9)
    assert abs(result.gap) > 1e-4
    assert torch.allclose(result.per_example_joint, both)
