"""interference on toy levers in a tiny Llama, against direct computations; principal angles against SciPy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from calibrate_levers import AddLever, FixedLever, WeightLever, next_token_logprob, sentences, unit
from scipy.linalg import subspace_angles
from tiny_models import D_MODEL, build_model, make_tokenizer

from almostlinear.calibrate import Footprint, InterferenceReport, footprints_of, interference, principal_cosines
from almostlinear.core import hooks
from almostlinear.core.artifact import Where
from almostlinear.core.collect import tokenize
from almostlinear.core.errors import ChoiceError, EmptyDataError, LeverError, ShapeError


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    return build_model("llama"), make_tokenizer(), sentences(12)


def orthogonal_pair(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    v = unit(D_MODEL, seed)
    u = unit(D_MODEL, seed + 1)
    u = u - (u @ v) * v
    return v, u / u.norm()


def test_orthogonal_levers_at_two_layers_gap_grows_with_strength(setup):
    model, tokenizer, texts = setup
    v, u = orthogonal_pair()
    levers = {"first": AddLever("resid_post.0", v), "second": AddLever("resid_post.1", u)}
    gaps = []
    for strength in (0.001, 0.1, 1.0):
        report = interference(levers, model, tokenizer, texts, strengths=strength)
        assert isinstance(report, InterferenceReport)
        gaps.append(report.gap)
        assert report.pair_gap[0, 1] == report.gap and report.pair_cosine[1, 0] == report.cosine
        assert math.isnan(report.pair_gap[0, 0])
    assert gaps[0] < 0.01  # nearly additive for tiny strengths
    assert gaps[0] < gaps[1] < gaps[2]
    assert report.cosine > 0.9
    (overlap,) = report.overlaps
    assert overlap.first_footprint.space == "residual" and overlap.max_cosine < 1e-6
    assert report.no_footprint == ()


def per_token_change(model, tokenizer, texts, scale, vector, site) -> torch.Tensor:
    """Direct computation: next-token log-probabilities with ``scale * vector`` added, minus without."""
    inputs = tokenize(tokenizer, texts, max_length=64, device="cpu")
    mask = inputs["attention_mask"].bool()
    valid = mask[:, :-1] & mask[:, 1:]
    valid[:, 0] = False
    with torch.no_grad():
        base = torch.log_softmax(model(**inputs).logits[:, :-1][valid].float(), -1)
        with hooks.add(model, site, vector * scale):
            changed = torch.log_softmax(model(**inputs).logits[:, :-1][valid].float(), -1)
    return (changed - base).double()


def test_a_lever_with_itself_against_a_direct_computation(setup):
    model, tokenizer, texts = setup
    vector = unit(D_MODEL, 4)
    lever = AddLever("resid_post.0", vector)
    report = interference([lever, lever], model, tokenizer, texts, strengths=0.7, batch_size=len(texts))
    once = per_token_change(model, tokenizer, texts, 0.7, vector, "resid_post.0")
    twice = per_token_change(model, tokenizer, texts, 1.4, vector, "resid_post.0")
    gap = float((twice - 2 * once).norm() / (2 * once).norm())
    cosine = float((twice * once).sum() / (twice.norm() * once.norm()))
    assert report.gap == pytest.approx(gap, rel=1e-5)
    assert report.cosine == pytest.approx(cosine, rel=1e-6)
    assert report.n_tokens == once.shape[0]
    assert report.alone_rms[0] == pytest.approx(float(once.norm()) / math.sqrt(once.shape[0]), rel=1e-5)
    assert report.labels == ("0:toy.add", "1:toy.add")
    (overlap,) = report.overlaps
    assert overlap.cosines == pytest.approx((1.0,), abs=1e-12)


def test_three_levers_pairs_behaviour_and_report(setup):
    model, tokenizer, texts = setup
    v, u = orthogonal_pair(seed=10)
    delta = 0.3 * torch.randn_like(model.model.norm.weight)
    levers = {"add0": AddLever("resid_post.0", v), "add1": AddLever("resid_pre.1", u, footprint=False),
              "weight": WeightLever("model.norm.weight", delta)}
    before = {name: value.clone() for name, value in model.state_dict().items()}
    behaviour, prompts = next_token_logprob(20), sentences(6, seed=3)
    report = interference(levers, model, tokenizer, texts, strengths=[0.01, 0.02, 0.05],
                          behaviour=behaviour, prompts=prompts)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert report.pair_gap.diagonal().isnan().all()
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.equal(report.pair_gap[off], report.pair_gap.T[off]) and report.pair_cosine[0, 2] > 0.99
    # a pair inside the stack measures what the two levers alone measure as a stack of two
    pair = interference({"add0": levers["add0"], "weight": levers["weight"]}, model, tokenizer, texts,
                        strengths=[0.01, 0.05])
    assert report.pair_gap[0, 2] == pytest.approx(pair.gap, rel=1e-9)
    assert report.pair_cosine[2, 0] == pytest.approx(pair.cosine, rel=1e-9)
    assert report.gap < 0.05 and report.pair_gap[off].max() < 0.05  # small strengths: nearly additive
    assert report.no_footprint == ("add1", "weight") and report.overlaps == ()
    # single effects against direct computation, and the prediction is their sum
    base = behaviour(model, tokenizer, prompts)
    direct = []
    for label, strength in zip(levers, (0.01, 0.02, 0.05)):
        with levers[label].apply(model, strength=strength):
            direct.append(float((behaviour(model, tokenizer, prompts) - base).mean()))
    assert report.effects_alone == pytest.approx(direct, rel=1e-9)
    assert report.effect_predicted == pytest.approx(sum(direct), rel=1e-9)
    assert report.effect_measured == pytest.approx(report.effect_predicted, rel=0.05)
    assert report.effect_gap == pytest.approx(report.effect_measured - report.effect_predicted)
    text = str(report)
    assert "no footprint: add1, weight" in text and "pairs: relative gap" in text and "predicted" in text
    data = report.as_dict()
    json.dumps(data, allow_nan=False)
    assert data["pair_gap"][0][0] is None and data["labels"] == ["add0", "add1", "weight"]


def test_kl_of_the_joint_against_each_alone(setup):
    model, tokenizer, texts = setup
    v, u = orthogonal_pair(seed=20)
    first, second = AddLever("resid_post.0", v), AddLever("resid_post.1", u)
    report = interference([first, second], model, tokenizer, texts, strengths=[0.5, 0.0])
    # the second lever at strength 0 changes nothing: the joint is the first alone
    assert report.kl_alone[1] == 0.0 and report.kl_joint_from_alone[0] == pytest.approx(0.0, abs=1e-7)
    assert report.kl_joint == pytest.approx(report.kl_alone[0], rel=1e-6)
    assert report.kl_joint_from_alone[1] == pytest.approx(report.kl_joint, rel=1e-6)
    assert report.gap == pytest.approx(0.0, abs=1e-6)


def test_principal_cosines_match_scipy():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(3, 16, generator=generator, dtype=torch.float64)
    b = torch.randn(2, 16, generator=generator, dtype=torch.float64)
    ours = principal_cosines(a, b).numpy()
    expected = np.sort(np.cos(subspace_angles(a.T.numpy(), b.T.numpy())))[::-1]
    np.testing.assert_allclose(ours, expected, atol=1e-12)
    eye = torch.eye(6, dtype=torch.float64)
    np.testing.assert_allclose(principal_cosines(eye[:2], eye[2:5]).numpy(), [0.0, 0.0], atol=1e-15)
    mixed = torch.randn(3, 3, generator=generator, dtype=torch.float64) @ a  # another basis of the same span
    np.testing.assert_allclose(principal_cosines(a, mixed).numpy(), [1.0, 1.0, 1.0], atol=1e-10)


def test_footprints_are_read_by_duck_typing():
    class Record:
        where, basis, role = Where.at("mlp_key.1"), torch.ones(2, 64), "reads"

    class Offers:
        def footprint(self):
            return [Record(), {"where": "resid_pre.0", "basis": torch.ones(4)}]

    found = footprints_of(Offers())
    assert [f.space for f in found] == ["mlp_key", "residual"] and found[1].role == "writes"
    assert found[1].basis.shape == (1, 4) and footprints_of(object()) == ()
    with pytest.raises(ChoiceError):
        Footprint(Where.at("resid_post.0"), torch.ones(1, 4), "edits")
    with pytest.raises(ShapeError):
        principal_cosines(torch.ones(1, 4), torch.ones(1, 5))


def test_clear_errors(setup):
    model, tokenizer, texts = setup
    lever = AddLever("resid_post.0", unit(D_MODEL, 1))
    with pytest.raises(EmptyDataError, match="at least two"):
        interference([lever], model, tokenizer, texts)
    with pytest.raises(ShapeError):
        interference([lever, lever], model, tokenizer, texts, strengths=[1.0])
    with pytest.raises(LeverError, match="no strength"):
        interference([lever, FixedLever("resid_post.1", unit(D_MODEL, 2))], model, tokenizer, texts, strengths=2.0)
    with pytest.raises(EmptyDataError):
        interference([lever, lever], model, tokenizer, [])
    report = interference([lever, FixedLever("resid_post.1", unit(D_MODEL, 2))], model, tokenizer, texts[:2])
    assert report.strengths == (1.0, 1.0)
