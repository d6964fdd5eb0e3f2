"""choose_strength on toy levers: the choice, the grid and the held-out numbers against direct
computations with steering.cost.side_effects."""

from __future__ import annotations

import json
import math

import pytest
import torch
from calibrate_levers import AddLever, FixedLever, WeightLever, next_token_logprob, sentences, unit
from tiny_models import D_MODEL, build_model, make_tokenizer

from almostlinear.calibrate import StrengthChoice, choose_strength
from almostlinear.core.errors import AlmostLinearError, EmptyDataError, LeverError, NonFiniteError
from almostlinear.data.statements import split
from almostlinear.steering.cost import side_effects

STRENGTHS = [0.1, 0.5, 1.0, 2.0, 4.0]


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    return build_model("llama"), make_tokenizer(), sentences(16)


def kl_of(model, tokenizer, texts, lever, strength) -> float:
    return side_effects(model, tokenizer, texts, lambda: lever.apply(model, strength=strength),
                        max_length=64, batch_size=8, skip_first=True).kl


def halves(items, seed=0):
    """The validation and held-out parts choose_strength uses (held_out=0.5)."""
    return split(list(items), 0.5, seed=seed, key=lambda t: t)


def test_picks_the_largest_strength_within_budget(setup):
    model, tokenizer, neutral = setup
    lever = AddLever("resid_post.0", unit(D_MODEL, 1))
    validation, _ = halves(neutral)
    brute = [kl_of(model, tokenizer, validation, lever, s) for s in STRENGTHS]
    assert all(a < b for a, b in zip(brute, brute[1:]))  # the toy's KL grows with strength
    budget = (brute[2] + brute[3]) / 2  # strengths up to 1.0 fit, 2.0 does not
    choice = choose_strength(lever, model, tokenizer, neutral, strengths=STRENGTHS, kl_budget=budget)
    assert isinstance(choice, StrengthChoice) and choice.found
    assert choice.strength == 1.0 and choice.label == "toy.add" and choice.units == "raw"
    assert choice.lever is lever
    assert [row["strength"] for row in choice.grid] == STRENGTHS
    assert [row["kl"] for row in choice.grid] == pytest.approx(brute, rel=1e-9)
    assert [row["within_budget"] for row in choice.grid] == [True, True, True, False, False]
    assert choice.kl == pytest.approx(brute[2], rel=1e-9) and choice.effect is None
    assert (choice.validation_texts, choice.test_texts) == (8, 8)


def test_held_out_numbers_come_from_the_held_out_texts(setup):
    model, tokenizer, neutral = setup
    lever = AddLever("resid_post.0", unit(D_MODEL, 1))
    prompts = sentences(12, seed=5)
    behaviour = next_token_logprob(20)
    choice = choose_strength(lever, model, tokenizer, neutral, strengths=[0.5], kl_budget=1.0,
                             behaviour=behaviour, prompts=prompts, seed=3)
    validation, test = halves(neutral, seed=3)
    assert choice.test_kl == pytest.approx(kl_of(model, tokenizer, test, lever, 0.5), rel=1e-9)
    assert choice.kl == pytest.approx(kl_of(model, tokenizer, validation, lever, 0.5), rel=1e-9)
    assert not math.isclose(choice.test_kl, choice.kl, rel_tol=1e-6)
    prompts_val, prompts_test = halves(prompts, seed=3)
    with lever.apply(model, strength=0.5):
        steered = behaviour(model, tokenizer, prompts_test)
    direct = float((steered - behaviour(model, tokenizer, prompts_test)).mean())
    assert choice.test_effect == pytest.approx(direct, rel=1e-9)
    assert (choice.validation_prompts, choice.test_prompts) == (len(prompts_val), len(prompts_test))
    assert not math.isclose(choice.test_effect, choice.effect, rel_tol=1e-6)


def test_prefers_the_candidate_with_the_larger_effect(setup):
    model, tokenizer, neutral = setup
    token = 20
    unembedding = model.lm_head.weight[token].detach().clone()
    toward = unembedding / unembedding.norm()
    other = unit(D_MODEL, 7)
    other = other - (other @ toward) * toward
    candidates = {"toward": AddLever("resid_post.1", toward), "other": AddLever("resid_post.1", other / other.norm())}
    prompts = sentences(10, seed=9)
    choice = choose_strength(candidates, model, tokenizer, neutral, strengths=[0.25, 0.5], kl_budget=10.0,
                             behaviour=next_token_logprob(token), prompts=prompts)
    assert choice.label == "toward"
    best = max(choice.grid, key=lambda row: row["effect"])
    assert (choice.label, choice.strength, choice.effect) == (best["label"], best["strength"], best["effect"])
    assert choice.effect > 0
    # asking for the score to fall picks the point that lowers it most
    down = choose_strength(candidates, model, tokenizer, neutral, strengths=[-0.5, 0.5], kl_budget=10.0,
                           behaviour=next_token_logprob(token), prompts=prompts, sign=-1)
    assert (down.label, down.strength) == ("toward", -0.5) and down.effect > 0


def test_any_lever_kind_and_the_model_is_restored(setup):
    model, tokenizer, neutral = setup
    before = {name: value.clone() for name, value in model.state_dict().items()}
    delta = 0.5 * torch.randn_like(model.model.norm.weight)
    candidates = {"hook": AddLever("resid_pre.1", unit(D_MODEL, 2)), "weight": WeightLever("model.norm.weight", delta)}
    choice = choose_strength(candidates, model, tokenizer, neutral, strengths=[0.5, 1.0], kl_budget=1e-12)
    assert not choice.found and choice.lever is None and "no candidate" in str(choice)
    assert {row["label"] for row in choice.grid} == {"hook", "weight"}
    assert all(row["kl"] > 0 for row in choice.grid)
    weight_kl = [row["kl"] for row in choice.grid if row["label"] == "weight"]
    assert weight_kl == pytest.approx([kl_of(model, tokenizer, halves(neutral)[0], candidates["weight"], s)
                                       for s in (0.5, 1.0)], rel=1e-9)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    json.dumps(choice.as_dict(), allow_nan=False)


def test_progress_bar_and_summary(setup, capsys):
    model, tokenizer, neutral = setup
    choice = choose_strength({"a": AddLever("resid_post.0", unit(D_MODEL, 1))}, model, tokenizer, neutral,
                             strengths=[0.1, -0.2], kl_budget=1.0, progress=True)
    assert "lever x strength" in capsys.readouterr().err
    assert choice.strength == -0.2  # the largest |strength| within budget
    assert "a at strength -0.2" in str(choice) and choice.as_dict()["label"] == "a"


def test_clear_errors(setup):
    model, tokenizer, neutral = setup
    lever = AddLever("resid_post.0", unit(D_MODEL, 1))
    with pytest.raises(EmptyDataError):
        choose_strength({}, model, tokenizer, neutral, strengths=[1.0])
    with pytest.raises(EmptyDataError):
        choose_strength(lever, model, tokenizer, neutral, strengths=[])
    with pytest.raises(EmptyDataError):
        choose_strength(lever, model, tokenizer, [], strengths=[1.0])
    with pytest.raises(EmptyDataError):
        choose_strength(lever, model, tokenizer, ["one text"], strengths=[1.0])
    with pytest.raises(NonFiniteError):
        choose_strength(lever, model, tokenizer, neutral, strengths=[1.0, float("nan")])
    with pytest.raises(LeverError, match="no strength"):
        choose_strength(FixedLever("resid_post.0", unit(D_MODEL, 1)), model, tokenizer, neutral, strengths=[1.0])
    with pytest.raises(LeverError, match="not a lever"):
        choose_strength({"x": object()}, model, tokenizer, neutral, strengths=[1.0])
    with pytest.raises(AlmostLinearError, match="together"):
        choose_strength(lever, model, tokenizer, neutral, strengths=[1.0], behaviour=next_token_logprob(3))
    with pytest.raises(AlmostLinearError, match="held_out"):
        choose_strength(lever, model, tokenizer, neutral, strengths=[1.0], held_out=1.0)
    with pytest.raises(AlmostLinearError, match="sign"):
        choose_strength(lever, model, tokenizer, neutral, strengths=[1.0], sign=2)
