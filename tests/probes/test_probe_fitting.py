import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from almostlinear.core.errors import EmptyDataError, ShapeError
from almostlinear.probes import LinearProbe, accuracy, fit_logistic, fit_mass_mean


def _data(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.5, 20, d)  # uneven scales, like LM activations
    y = (x[:, 0] / 0.5 + x[:, 1] / 0.6 + torch.randn(n, generator=g) > 0)
    return x, y


@pytest.mark.parametrize("n,d", [(300, 12), (60, 150)])  # primal and dual (n < d) paths
def test_logistic_matches_scikit_learn(n, d):
    x, y = _data(n, d)
    l2 = 1e-2
    w, b = fit_logistic(x, y, l2=l2)
    z = ((x - x.mean(0)) / x.std(0)).numpy()
    ref = LogisticRegression(C=1 / (n * l2), tol=1e-12, max_iter=10_000).fit(z, y.numpy())
    w_std = (w * x.std(0)).numpy()
    assert np.allclose(w_std, ref.coef_[0], atol=1e-3, rtol=1e-3)
    predicted = (x.double() @ w + b > 0).numpy()
    assert (predicted == ref.predict(z)).mean() >= 0.99


def test_layers_at_once_equal_one_at_a_time():
    x, y = _data(120, 10)
    stacked = torch.stack([x, 3 * x + 1, -x])
    w, b = fit_logistic(stacked, y)
    for layer in range(3):
        w1, b1 = fit_logistic(stacked[layer], y)
        assert torch.allclose(w[layer], w1, atol=1e-5, rtol=1e-4)
        assert torch.allclose(b[layer], b1, atol=1e-5, rtol=1e-4)


def test_mass_mean_is_difference_of_means_and_whitened_is_fisher():
    x, y = _data(400, 6)
    w, b = fit_mass_mean(x, y)
    mu1, mu0 = x[y].double().mean(0), x[~y].double().mean(0)
    assert torch.allclose(w, mu1 - mu0)
    assert torch.allclose(b, -(w * (mu1 + mu0) / 2).sum())
    wf, _ = fit_mass_mean(x, y, whiten=True, shrinkage=0.0)
    centred = torch.cat([x[y].double() - mu1, x[~y].double() - mu0])
    fisher = torch.linalg.solve(centred.T @ centred, mu1 - mu0)
    cosine = torch.nn.functional.cosine_similarity(wf, fisher, dim=0)
    assert cosine > 0.9999


def test_probe_artifact_round_trip(tmp_path):
    x, y = _data(200, 8)
    w, b = fit_logistic(x, y)
    probe = LinearProbe(w, b)
    path = probe.save(tmp_path / "probe.safetensors")
    again = LinearProbe.load(path)
    assert torch.equal(again.weight, probe.weight) and torch.equal(again.bias, probe.bias)
    assert again.score(x, y) == probe.score(x, y) == float(accuracy(w, b, x, y))


def test_bad_input_is_refused():
    x, y = _data(50, 4)
    with pytest.raises(EmptyDataError, match="two classes"):
        fit_logistic(x, torch.ones(50, dtype=torch.bool))
    with pytest.raises(ShapeError, match="labels"):
        fit_mass_mean(x, y[:-1])
    with pytest.raises(ShapeError):
        fit_logistic(torch.randn(2, 3, 4, 5), y)
