"""Affine, orthogonal and low-rank maps against scikit-learn, SciPy and direct solves."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import orthogonal_procrustes
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score as sk_r2

from almostlinear.core.errors import EmptyDataError, NonFiniteError, ShapeError
from almostlinear.translate import (
    choose_ridge,
    fit_affine,
    fit_low_rank,
    fit_map,
    fit_orthogonal,
    fit_ridge,
    r2_score,
    retrieval_top1,
)


def _data(seed=0, n=120, dx=10, dy=7, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, dx, dtype=torch.float64) + 1.5
    w = torch.randn(dx, dy, generator=g, dtype=torch.float64)
    y = x @ w - 2.0 + noise * torch.randn(n, dy, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.5])
def test_ridge_equals_sklearn_ridge_with_the_same_penalty(ridge):
    x, y = _data()
    fitted = fit_ridge(x, y, ridge)
    xc = x - x.mean(0)
    alpha = ridge * float(torch.linalg.svdvals(xc).square().sum()) / x.shape[1]  # our unit: mean eigenvalue × n
    reference = Ridge(alpha=alpha, fit_intercept=True, solver="svd").fit(x.numpy(), y.numpy())
    assert np.allclose(fitted.weight.numpy(), reference.coef_.T, atol=1e-8)
    assert np.allclose(fitted.bias.numpy(), reference.intercept_, atol=1e-8)


def test_unpenalised_ridge_is_least_squares_with_intercept():
    x, y = _data(n=60, dx=5, dy=3)
    fitted = fit_ridge(x, y, 0.0)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    solution = torch.linalg.lstsq(design, y).solution
    assert torch.allclose(fitted.weight, solution[:-1], atol=1e-9)
    assert torch.allclose(fitted.bias, solution[-1], atol=1e-9)


def test_chosen_ridge_is_the_best_validation_score_and_changes_with_noise():
    x, y = _data(noise=0.01)
    best, scores = choose_ridge(x, y)
    assert scores[best] == max(scores.values())
    fitted = fit_affine(x, y)
    assert fitted.ridge == best and fitted.validation_r2 == scores
    # pure noise targets: the validation favours a strong penalty
    noise = torch.randn(120, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    best_noise, _ = choose_ridge(x, noise)
    assert best_noise > best


def test_r2_equals_sklearn_variance_weighted():
    x, y = _data()
    pred = y + 0.5 * torch.randn_like(y)
    assert r2_score(pred, y) == pytest.approx(sk_r2(y.numpy(), pred.numpy(), multioutput="variance_weighted"))


def test_orthogonal_map_recovers_a_rotation():
    x, _ = _data(dx=8)
    q = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64))[0]
    y = x @ q + 3.0
    fitted = fit_orthogonal(x, y)
    assert torch.allclose(fitted.weight, q, atol=1e-10)
    assert torch.allclose(x @ fitted.weight + fitted.bias, y, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 9), scale=st.floats(0.1, 10.0))
def test_scaled_orthogonal_map_recovers_rotation_and_scale(seed, d, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * d + 5, d, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    fitted = fit_orthogonal(x, scale * x @ q - 1.0, scale=True)
    assert fitted.scale == pytest.approx(scale, rel=1e-8)
    assert torch.allclose(fitted.weight, scale * q, atol=1e-7 * scale)


@pytest.mark.parametrize("dx, dy", [(6, 6), (4, 7), (7, 3)])
def test_orthogonal_scale_is_the_least_squares_scale_of_the_rotated_source(dx, dy):
    x, y = _data(dx=dx, dy=dy)
    xc, yc = x - x.mean(0), y - y.mean(0)
    fitted = fit_orthogonal(x, y, scale=True)
    rotated = xc @ (fitted.weight / fitted.scale)
    assert fitted.scale == pytest.approx(float((rotated * yc).sum() / rotated.square().sum()), rel=1e-10)


@pytest.mark.parametrize("dx, dy", [(6, 6), (4, 7), (7, 3)])
def test_orthogonal_map_equals_scipy_orthogonal_procrustes(dx, dy):
    x, y = _data(dx=dx, dy=dy)
    width = max(dx, dy)
    xc, yc = x - x.mean(0), y - y.mean(0)
    a = np.pad(xc.numpy(), ((0, 0), (0, width - dx)))
    b = np.pad(yc.numpy(), ((0, 0), (0, width - dy)))
    rotation, _ = orthogonal_procrustes(a, b)
    fitted = fit_orthogonal(x, y)
    # the padded rows and columns of SciPy's rotation are not determined; the used block must match in effect
    assert np.allclose(xc.numpy() @ fitted.weight.numpy(), (a @ rotation)[:, :dy], atol=1e-8)


def test_low_rank_map_is_reduced_rank_regression():
    x, y = _data(dx=9, dy=6, noise=0.5)
    for rank in (1, 3, 6):
        fitted = fit_low_rank(x, y, rank, ridge=0.0)
        assert torch.linalg.matrix_rank(fitted.weight, atol=1e-8) == rank
        # reduced-rank regression = OLS projected on the top principal directions of the OLS fitted values
        xc, yc = x - x.mean(0), y - y.mean(0)
        ols = torch.linalg.lstsq(xc, yc).solution
        _, _, vt = torch.linalg.svd(xc @ ols, full_matrices=False)
        expected = ols @ vt[:rank].T @ vt[:rank]
        assert torch.allclose(fitted.weight, expected, atol=1e-8)
    full = fit_low_rank(x, y, 6, ridge=0.0)
    assert torch.allclose(full.weight, fit_ridge(x, y, 0.0).weight, atol=1e-8)
    # in-sample fit can only get better with rank
    scores = [r2_score(x @ fit_low_rank(x, y, r, ridge=0.0).weight + fit_low_rank(x, y, r, ridge=0.0).bias, y)
              for r in range(1, 7)]
    assert all(a <= b + 1e-12 for a, b in zip(scores, scores[1:]))


@pytest.mark.parametrize("ridge", [1e-2, 0.5])
def test_low_rank_ridge_map_is_reduced_rank_regression_on_the_augmented_data(ridge):
    # reduced-rank ridge (Mukherjee and Zhu 2011): OLS on [xc; √λ I] → [yc; 0], projected on the top
    # right singular vectors of that problem's fitted values
    x, y = _data(dx=9, dy=6, noise=0.5)
    xc, yc = x - x.mean(0), y - y.mean(0)
    lam = ridge * float(xc.square().sum()) / min(xc.shape)
    xa = torch.cat([xc, lam ** 0.5 * torch.eye(9, dtype=x.dtype)])
    ya = torch.cat([yc, torch.zeros(9, 6, dtype=y.dtype)])
    w = torch.linalg.lstsq(xa, ya).solution
    _, _, vt = torch.linalg.svd(xa @ w, full_matrices=False)
    for rank in (1, 3):
        fitted = fit_low_rank(x, y, rank, ridge=ridge)
        assert torch.allclose(fitted.weight, w @ vt[:rank].T @ vt[:rank], atol=1e-8)
        assert torch.allclose(fitted.bias, y.mean(0) - x.mean(0) @ fitted.weight, atol=1e-8)


def test_retrieval_top1_counts_own_target_nearest():
    y = torch.eye(5, dtype=torch.float64) * 3
    assert retrieval_top1(y, y) == 1.0
    assert retrieval_top1(y[[1, 0, 2, 3, 4]], y) == pytest.approx(0.6)


def test_bad_input_gives_clear_errors():
    x, y = _data()
    with pytest.raises(ShapeError, match="sample counts must agree"):
        fit_affine(x, y[:-1])
    with pytest.raises(ShapeError, match="2-D"):
        fit_orthogonal(x[0], y[0])
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(NonFiniteError):
        fit_ridge(bad, y, 0.1)
    with pytest.raises(EmptyDataError):
        fit_ridge(x[:1], y[:1], 0.1)
    with pytest.raises(ShapeError, match="rank"):
        fit_low_rank(x, y, 0)
    with pytest.raises(ValueError, match="unknown map method"):
        fit_map(x, y, "cubic")


def test_ridge_validation_always_has_two_rows_to_score():
    # with 4 or 5 rows a fifth rounds to one validation row, whose R² is undefined
    x, y = _data(n=5)
    best, scores = choose_ridge(x, y)
    assert all(v == v for v in scores.values()) and scores[best] == max(scores.values())
