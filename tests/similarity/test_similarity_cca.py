import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import eigh
from sklearn.cross_decomposition import CCA

from almostlinear.core.errors import ShapeError
from almostlinear.similarity import canonical_correlations, mean_cca, pwcca, svcca


def _pair(seed, n=300, dx=6, dy=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dx)) @ rng.normal(size=(dx, dx)) + 5.0
    shared = min(dx, dy, 3)
    y = x[:, :shared] @ rng.normal(size=(shared, dy)) + 2.0 * rng.normal(size=(n, dy))
    return x, y


def _eigen_cca(x, y):
    """Reference by another route: the generalised eigenproblem Sxy Syy⁻¹ Syx w = ρ² Sxx w."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    values, vectors = eigh(sxy @ np.linalg.solve(syy, sxy.T), sxx)
    order = np.argsort(values)[::-1][: min(x.shape[1], y.shape[1])]
    return np.sqrt(np.clip(values[order], 0, None)), vectors[:, order]


def test_canonical_correlations_equal_the_generalised_eigenproblem():
    x, y = _pair(0)
    expected, _ = _eigen_cca(x, y)
    got = canonical_correlations(torch.tensor(x), torch.tensor(y)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)
    assert mean_cca(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected.mean(), rel=1e-8)


def test_canonical_correlations_equal_scikit_learn_cca():
    x, y = _pair(1, dx=5, dy=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CCA(n_components=4, scale=False, max_iter=5000, tol=1e-12).fit(x, y)
    xs, ys = model.transform(x, y)
    expected = [np.corrcoef(xs[:, i], ys[:, i])[0, 1] for i in range(4)]
    got = canonical_correlations(torch.tensor(x), torch.tensor(y)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.floats(-50, 50))
def test_cca_is_invariant_to_any_invertible_linear_map(seed, shift):
    x, y = _pair(seed, n=60, dx=4, dy=4)
    a = np.random.default_rng(seed + 1).normal(size=(4, 4)) + 3 * np.eye(4)  # well conditioned
    before = canonical_correlations(torch.tensor(x), torch.tensor(y))
    after = canonical_correlations(torch.tensor(x @ a + shift), torch.tensor(y))
    torch.testing.assert_close(after, before, rtol=1e-7, atol=1e-9)


def test_svcca_keeps_the_top_variance_directions_then_runs_cca():
    x, y = _pair(2, dx=8, dy=8)
    x[:, 4:] *= 1e-3  # four directions with almost no variance
    tx, ty = torch.tensor(x), torch.tensor(y)
    assert svcca(tx, ty, keep_variance=1.0) == pytest.approx(mean_cca(tx, ty))
    # reference: numpy SVD truncation to 99% of the variance, then CCA by the eigenproblem
    reduced = []
    for a in (x, y):
        u, s, _ = np.linalg.svd(a - a.mean(0), full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), 0.99) + 1)
        reduced.append(u[:, :k] * s[:k])
    expected, _ = _eigen_cca(*reduced)
    assert reduced[0].shape[1] <= 4
    assert svcca(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected.mean(), rel=1e-8)


def test_pwcca_equals_a_direct_projection_weighted_mean():
    x, y = _pair(3)
    rho, w = _eigen_cca(x, y)
    variates = (x - x.mean(0)) @ w  # canonical variates of x, one column each
    variates /= np.linalg.norm(variates, axis=0)
    weights = np.abs(variates.T @ (x - x.mean(0))).sum(1)
    expected = (weights * rho).sum() / weights.sum()
    assert pwcca(torch.tensor(x), torch.tensor(y)) == pytest.approx(expected, rel=1e-8)
    assert pwcca(torch.tensor(x), torch.tensor(x)) == pytest.approx(1.0)


def test_cca_refuses_more_dimensions_than_examples_and_bad_variance_share():
    x, y = _pair(4, n=10, dx=6, dy=6)
    with pytest.raises(ShapeError, match="degenerate"):
        mean_cca(torch.tensor(x), torch.tensor(y))
    x, y = _pair(5, n=50)
    with pytest.raises(ShapeError, match="keep_variance"):
        svcca(torch.tensor(x), torch.tensor(y), keep_variance=0.0)


def test_mask_selects_rows():
    x, y = (torch.tensor(a) for a in _pair(6))
    mask = torch.arange(300) % 2 == 0
    assert mean_cca(x, y, mask=mask) == pytest.approx(mean_cca(x[mask], y[mask]), rel=1e-12)
