"""Straight and spherical paths against direct formulas and SciPy's geometric_slerp."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import geometric_slerp

from almostlinear.core.errors import NonFiniteError, ShapeError
from almostlinear.latent import lerp, path, slerp


def _codes(seed, d=6, n=None):
    g = torch.Generator().manual_seed(seed)
    shape = (d,) if n is None else (n, d)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)


def test_lerp_is_the_straight_line():
    a, b = _codes(0, n=3)
    p = lerp(a, b, 5)
    assert p.shape == (5, 3, 6)
    assert torch.equal(p[0], a) and torch.allclose(p[-1], b)
    assert torch.allclose(p[2], (a + b) / 2)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 12), steps=st.integers(2, 12))
def test_slerp_of_unit_vectors_equals_scipy_geometric_slerp(seed, d, steps):
    a, b = _codes(seed, d)
    a, b = a / a.norm(), b / b.norm()
    if float(a @ b) < -0.999:
        return  # antipodal: the arc is not unique
    ours = slerp(a, b, steps).numpy()
    reference = geometric_slerp(a.numpy(), b.numpy(), np.linspace(0, 1, steps))
    assert np.allclose(ours, reference, atol=1e-8)


def test_slerp_moves_the_norm_linearly_and_the_angle_evenly():
    a, b = _codes(3)
    b = 3 * b
    p = slerp(a, b, 7)
    assert torch.allclose(p.norm(dim=-1), torch.linspace(float(a.norm()), float(b.norm()), 7, dtype=torch.float64))
    unit = p / p.norm(dim=-1, keepdim=True)
    angles = torch.arccos((unit[:-1] * unit[1:]).sum(-1).clamp(-1, 1))
    assert torch.allclose(angles, angles[0].expand_as(angles), atol=1e-9)
    assert torch.allclose(p[0], a) and torch.allclose(p[-1], b)


def test_slerp_of_parallel_codes_is_the_straight_line():
    a = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)
    assert torch.allclose(slerp(a, 2 * a, 4), lerp(a, 2 * a, 4))


@pytest.mark.parametrize("steps", [1, 0, -3])
def test_a_path_with_fewer_than_two_steps_is_refused(steps):
    a, b = _codes(0)
    for kind in ("lerp", "slerp"):
        with pytest.raises(ShapeError, match="at least 2 steps"):
            path(a, b, steps, kind)


def test_bad_endpoints_are_refused():
    a, b = _codes(0)
    with pytest.raises(ShapeError, match="same shape"):
        lerp(a, b[:3], 3)
    with pytest.raises(NonFiniteError):
        slerp(a, torch.full_like(b, float("nan")), 3)
    with pytest.raises(ValueError, match="unknown path kind"):
        path(a, b, 3, "spline")
