import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import procrustes as scipy_procrustes

from almostlinear.core.errors import ChoiceError
from almostlinear.similarity import procrustes_distance, procrustes_similarity
from almostlinear.similarity.procrustes import normalised, nuclear_alignment


def _pair(seed, n=50, dx=6, dy=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) + 2.0
    y = x[:, : min(dx, dy)] @ rng.normal(size=(min(dx, dy), dy)) + rng.normal(size=(n, dy))
    return x, y


def _standardise(a):
    a = a - a.mean(0)
    return a / np.linalg.norm(a)


@pytest.mark.parametrize("dx, dy", [(6, 6), (4, 7), (7, 3)])
def test_squared_distance_equals_scipy_orthogonal_procrustes(dx, dy):
    x, y = _pair(0, dx=dx, dy=dy)
    width = max(dx, dy)
    a = np.pad(_standardise(x), ((0, 0), (0, width - dx)))  # zero-padding the narrower side
    b = np.pad(_standardise(y), ((0, 0), (0, width - dy)))
    rotation, nuclear = orthogonal_procrustes(a, b)
    residual = np.linalg.norm(a @ rotation - b) ** 2
    tx, ty = torch.tensor(x), torch.tensor(y)
    assert procrustes_similarity(tx, ty) == pytest.approx(nuclear, rel=1e-10)
    assert procrustes_distance(tx, ty) == pytest.approx(residual, rel=1e-9, abs=1e-12)
    assert procrustes_distance(tx, ty, kind="angular") == pytest.approx(math.acos(nuclear), rel=1e-10)


def test_scaled_distance_equals_scipy_spatial_procrustes_disparity():
    x, y = _pair(1)
    *_, disparity = scipy_procrustes(x, y)
    assert procrustes_distance(torch.tensor(x), torch.tensor(y), kind="scaled") == pytest.approx(disparity, rel=1e-9)


def test_few_examples_route_equals_the_direct_svd():
    x, y = _pair(2, n=8, dx=20, dy=15)
    a, b = normalised(torch.tensor(x)), normalised(torch.tensor(y))
    direct = float(torch.linalg.svdvals(a.T @ b).sum())
    assert nuclear_alignment(a, b) == pytest.approx(direct, rel=1e-10)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(5, 40), d=st.integers(1, 10), scale=st.floats(1e-3, 1e3),
       shift=st.floats(-100, 100))
def test_procrustes_is_invariant_to_rotation_scaling_and_shift(seed, n, d, scale, shift):
    x, y = (torch.tensor(a) for a in _pair(seed, n=n, dx=d, dy=d))
    q = torch.linalg.qr(torch.tensor(np.random.default_rng(seed + 1).normal(size=(d, d))))[0]
    assert procrustes_similarity(scale * x @ q + shift, y) == pytest.approx(procrustes_similarity(x, y), rel=1e-8)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_angular_distance_satisfies_the_triangle_inequality(seed):
    rng = np.random.default_rng(seed)
    a, b, c = (torch.tensor(rng.normal(size=(12, 3)) @ rng.normal(size=(3, 4))) for _ in range(3))
    ab, bc, ac = (procrustes_distance(p, q, kind="angular") for p, q in ((a, b), (b, c), (a, c)))
    assert ac <= ab + bc + 1e-9


def test_a_rotated_copy_has_distance_zero_and_unknown_kind_is_refused():
    x, _ = _pair(3)
    x = torch.tensor(x)
    q = torch.linalg.qr(torch.tensor(np.random.default_rng(4).normal(size=(6, 6))))[0]
    assert procrustes_distance(x, 3 * x @ q) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ChoiceError, match="kind"):
        procrustes_distance(x, x, kind="cosine")
