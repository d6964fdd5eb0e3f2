"""Closed-form ridge and the subspace logistic fitter against scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier

from almostlinear.core.errors import NonFiniteError, ShapeError
from almostlinear.probes import fit_logistic, fit_ridge


def _data(n, d, seed=0, layers=None):
    g = torch.Generator().manual_seed(seed)
    shape = (n, d) if layers is None else (layers, n, d)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.linspace(0.5, 20, d, dtype=torch.float64)
    first = x if layers is None else x[0]
    y = first[:, 0] / 0.5 + first[:, 1] / 0.6 + torch.randn(n, generator=g, dtype=torch.float64) > 0
    return x, y


@pytest.mark.parametrize("n,d", [(200, 12), (30, 80)])  # primal and dual solves
def test_ridge_on_raw_features_equals_sklearn_ridge_classifier(n, d):
    x, y = _data(n, d)
    l2 = 0.05
    w, b = fit_ridge(x, y, l2=l2, standardize_features=False)
    ref = RidgeClassifier(alpha=n * l2, solver="cholesky").fit(x.numpy(), y.numpy())
    assert np.allclose(w.numpy(), ref.coef_.ravel(), rtol=1e-6, atol=1e-9)
    assert abs(float(b) - float(np.ravel(ref.intercept_)[0])) < 1e-8
    assert ((x @ w + b > 0).numpy() == ref.predict(x.numpy())).all()


def test_standardised_ridge_equals_sklearn_ridge_on_scaled_data():
    x, y = _data(150, 10, seed=3)
    l2 = 0.1
    w, b = fit_ridge(x, y, l2=l2)
    mean, std = x.mean(0), x.std(0)
    ref = Ridge(alpha=150 * l2).fit(((x - mean) / std).numpy(), (2 * y.double() - 1).numpy())
    assert np.allclose((w * std).numpy(), ref.coef_, rtol=1e-6, atol=1e-9)
    assert abs(float(b + (w * mean).sum()) - ref.intercept_) < 1e-8


def test_ridge_per_layer_penalties_equal_separate_fits():
    x, y = _data(60, 8, layers=3)
    w, b = fit_ridge(x, y, l2=torch.tensor([1e-3, 1e-1, 1.0]))
    for layer, l2 in enumerate((1e-3, 1e-1, 1.0)):
        w1, b1 = fit_ridge(x[layer], y, l2=l2)
        assert torch.allclose(w[layer], w1) and torch.allclose(b[layer], b1)


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
@pytest.mark.parametrize("n,d", [(400, 20), (40, 90)])
def test_logistic_reaches_sklearns_optimum(n, d, l2):
    x, y = _data(n, d, seed=7)
    w, b = fit_logistic(x, y, l2=l2, tol=1e-8, dtype=torch.float64)
    mean, std = x.mean(0), x.std(0)
    z = ((x - mean) / std).numpy()
    ref = LogisticRegression(C=1 / (n * l2), tol=1e-12, max_iter=100_000).fit(z, y.numpy())
    assert np.allclose((w * std).numpy(), ref.coef_[0], atol=1e-5, rtol=1e-5)
    assert abs(float(b + (w * mean).sum()) - ref.intercept_[0]) < 1e-5


def test_logistic_per_layer_penalty_and_tolerance():
    x, y = _data(120, 10, layers=2)
    w, b = fit_logistic(x, y, l2=torch.tensor([1e-2, 1.0]), tol=1e-8, dtype=torch.float64)
    strong, _ = fit_logistic(x[1], y, l2=1.0, tol=1e-8, dtype=torch.float64)
    assert torch.allclose(w[1], strong, atol=1e-7)
    assert w[0].norm() > w[1].norm()  # the weaker penalty gives the longer weight
    # at the returned point the gradient of the penalised objective is below the tolerance
    z = (x[0] - x[0].mean(0)) / x[0].std(0)
    w_std = w[0] * x[0].std(0)
    u = z @ w_std + (b[0] + (w[0] * x[0].mean(0)).sum())
    grad = z.T @ (torch.sigmoid(u) - y.double()) / 120 + 1e-2 * w_std
    assert grad.abs().max() < 1e-7


def test_fitters_refuse_bad_input():
    x, y = _data(40, 5)
    with pytest.raises(ShapeError, match="labels"):
        fit_ridge(x, y[:-1])
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(NonFiniteError):
        fit_logistic(bad, y)
    with pytest.raises(ValueError, match="l2"):
        fit_logistic(x, y, l2=0.0)


def test_dual_path_is_right_with_two_threads_and_large_kernels():
    # batched LU on CPU with two threads gave wrong solutions above ~128 x 128 (torch 2.13 + MKL);
    # the dual Newton solves one kernel system at a time, so every layer must agree with scikit-learn
    x, y = _data(150, 200, seed=11, layers=4)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        w, _ = fit_logistic(x, y, l2=1e-2, tol=1e-8, dtype=torch.float64)
    finally:
        torch.set_num_threads(before)
    for layer in range(4):
        mean, std = x[layer].mean(0), x[layer].std(0)
        ref = LogisticRegression(C=1 / (150 * 1e-2), tol=1e-12, max_iter=100_000)
        ref.fit(((x[layer] - mean) / std).numpy(), y.numpy())
        assert np.allclose((w[layer] * std).numpy(), ref.coef_[0], atol=1e-5)
