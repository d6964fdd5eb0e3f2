"""Angular distance between layers and the causal inner product of the unembedding."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from almostlinear.core.errors import EmptyDataError, ShapeError
from almostlinear.linearity import (
    angular_distance,
    angular_distance_profile,
    causal_whitening,
    concept_directions,
    single_token_pairs,
)
from almostlinear.linearity.causal import off_diagonal_abs_cosine
from tiny_models import make_tokenizer


def test_angular_distance_of_identical_opposite_and_orthogonal_vectors():
    v = torch.tensor([[3.0, -1.0, 2.0]])
    assert float(angular_distance(v, v)) == 0.0
    assert float(angular_distance(v, -v)) == pytest.approx(1.0)
    assert float(angular_distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 5.0]))) == pytest.approx(0.5)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 100.0), st.floats(0.01, 100.0))
def test_angular_distance_ignores_positive_scale_and_is_symmetric(seed, a, b):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    assert torch.allclose(angular_distance(a * x, b * y), angular_distance(x, y), atol=1e-7)
    assert torch.allclose(angular_distance(x, y), angular_distance(y, x))
    assert bool(((angular_distance(x, y) >= 0) & (angular_distance(x, y) <= 1)).all())


def test_profile_rows_are_shifts_and_columns_starts():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(5, 6, 4, generator=g)
    profile = angular_distance_profile(states)
    assert profile.shape == (4, 4)
    for shift in range(1, 5):
        for start in range(5 - shift):
            expected = angular_distance(states[start], states[start + shift]).mean()
            assert float(profile[shift - 1, start]) == pytest.approx(float(expected))
        assert torch.isnan(profile[shift - 1, 5 - shift:]).all()
    same = angular_distance_profile(states[:1].expand(3, -1, -1))
    assert torch.all(same[~torch.isnan(same)] == 0)
    with pytest.raises(ShapeError):
        angular_distance_profile(states[:1])


def _unembedding(vocab=300, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    mix = q * torch.logspace(-1, 1, d, dtype=torch.float64)  # anisotropic like real heads, Cov condition 1e4
    return torch.randn(vocab, d, generator=g, dtype=torch.float64) @ mix + 0.5


def test_whitening_makes_the_unembedding_covariance_the_identity():
    gamma = _unembedding()
    whitening = causal_whitening(gamma)
    g = whitening(gamma)
    assert torch.allclose(g.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(torch.cov(g.T), torch.eye(12, dtype=torch.float64), atol=1e-9)
    a, b = torch.randn(12, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    direct = a @ torch.linalg.solve(torch.cov(gamma.double().T), b)  # x^T Cov(γ)^-1 y
    assert float(whitening.inner(a, b)) == pytest.approx(float(direct), rel=1e-8)
    with pytest.raises(ShapeError):
        causal_whitening(gamma[:5])


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_causal_cosines_do_not_depend_on_the_basis_of_the_head(seed):
    # x^T Cov(γ)^-1 y is unchanged when γ -> γ M for an invertible M; Euclidean cosines are not
    gamma = _unembedding(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    scales = torch.logspace(-0.7, 0.7, 12, dtype=torch.float64)[torch.randperm(12, generator=g)]
    mixed = gamma @ (q * scales)  # invertible, condition number 25
    pairs = {"a": [(0, 1), (2, 3), (4, 5)], "b": [(6, 7), (8, 9)], "c": [(10, 11), (12, 13), (14, 15)]}
    _, before = concept_directions(causal_whitening(gamma)(gamma), pairs)
    _, after = concept_directions(causal_whitening(mixed)(mixed), pairs)
    assert torch.allclose(off_diagonal_abs_cosine(before), off_diagonal_abs_cosine(after), atol=1e-8)
    _, raw_before = concept_directions(gamma, pairs)
    _, raw_after = concept_directions(mixed, pairs)
    assert not torch.allclose(off_diagonal_abs_cosine(raw_before), off_diagonal_abs_cosine(raw_after), atol=1e-3)


def test_concept_directions_are_unit_mean_differences():
    vectors = torch.arange(24, dtype=torch.float64).reshape(6, 4) ** 1.5
    names, directions = concept_directions(vectors, {"x": [(0, 1), (2, 3)], "empty": [], "y": [(4, 5)]})
    assert names == ["x", "y"]
    expected = ((vectors[1] - vectors[0]) + (vectors[3] - vectors[2])) / 2
    assert torch.allclose(directions[0], expected / expected.norm())
    assert torch.allclose(directions.norm(dim=1), torch.ones(2, dtype=torch.float64))
    with pytest.raises(EmptyDataError):
        concept_directions(vectors, {"none": []})
    cos = off_diagonal_abs_cosine(directions)
    assert cos.shape == (1,) and math.isclose(float(cos[0]), abs(float(directions[0] @ directions[1])))


def test_single_token_pairs_keep_only_one_token_words_that_differ():
    tok = make_tokenizer()
    kept = single_token_pairs(tok, [("king", "queen"), ("king", "emperor"), ("cat", "cat"), ("Paris", "France")])
    vocab = tok.get_vocab()
    assert kept == [(vocab["king"], vocab["queen"]), (vocab["Paris"], vocab["France"])]
