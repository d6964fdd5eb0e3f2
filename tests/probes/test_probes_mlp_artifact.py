"""The MLP probe reads what a linear probe cannot; probe artifacts carry their provenance."""

import pytest
import torch

from almostlinear.core.artifact import Where, load
from almostlinear.core.errors import ChoiceError, EmptyDataError, ShapeError, SiteError
from almostlinear.core.sites import Site
from almostlinear.probes import LinearProbe, accuracy, fit_logistic, fit_mlp


def _xor(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0) ^ (x[:, 1] > 0)  # XOR of two signs: no single hyperplane separates it
    return x, y


def test_mlp_probe_solves_xor_that_a_linear_probe_cannot():
    x, y = _xor(600, 0)
    x_test, y_test = _xor(400, 1)
    mlp = fit_mlp(x, y, hidden=32, lr=1e-2, seed=0)
    w, b = fit_logistic(x, y, l2=1e-2)
    assert float(mlp.accuracy(x_test, y_test)[0]) > 0.9
    assert float(accuracy(w, b, x_test, y_test)) < 0.65


def test_mlp_layers_train_independently_and_stop_early():
    x, y = _xor(300, 2)
    noise = torch.randn(300, 6, generator=torch.Generator().manual_seed(3))
    mlp = fit_mlp(torch.stack([x, noise]), y, hidden=16, lr=1e-2, max_epochs=400, patience=20)
    x_test, y_test = _xor(300, 4)
    acc = mlp.accuracy(torch.stack([x_test, torch.randn(300, 6)]), y_test)
    assert acc[0] > 0.85 and abs(float(acc[1]) - 0.5) < 0.12
    # the noise layer's best validation loss came early; the signal layer kept improving for longer
    assert int(mlp.epochs[1]) < int(mlp.epochs[0]) < 400


def test_mlp_validation_split_respects_groups():
    x, y = _xor(120, 5)
    groups = (torch.arange(120) // 10).tolist()
    with pytest.raises(EmptyDataError, match="groups"):
        fit_mlp(x, y, groups=groups[:-1])
    fit = fit_mlp(x, y, groups=groups, max_epochs=5)
    assert fit.w1.shape == (1, 6, 64)


def test_probe_provenance_round_trips_and_direction_is_unit(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = x[:, 2] - 0.5 * x[:, 5] > 0
    probe = LinearProbe.fit(x, y, method="logistic", l2=1e-2, site=Site("resid_post", 7),
                            data_hash="abc123", model_fingerprint="f00d")
    again = load(probe.save(tmp_path / "p.safetensors"))
    assert isinstance(again, LinearProbe)
    prov = again.provenance
    assert (prov.site, prov.layer, prov.method, prov.data_hash, prov.model_fingerprint) == (
        "resid_post", 7, "logistic", "abc123", "f00d")
    assert prov.extra == {"l2": 1e-2} and prov.where == Where("resid_post", (7,)) and prov.units is None
    assert again.kind == "probes.linear" and not hasattr(again, "apply")  # a probe only reads
    direction = again.as_direction()
    assert direction.dtype == torch.float32 and abs(float(direction.norm()) - 1) < 1e-6
    assert direction[2] > 0 > direction[5]  # points towards label True
    assert again.score(x, y) == probe.score(x, y) > 0.95


@pytest.mark.parametrize("method", ["ridge", "mass_mean", "mass_mean_whitened"])
def test_every_method_fits_through_the_artifact(method):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 5, generator=g)
    y = x[:, 0] > 0
    probe = LinearProbe.fit(x, y, method=method, site="resid_post.3")
    assert probe.provenance.method == method and probe.provenance.layer == 3
    assert probe.score(x, y) > 0.9


def test_probe_refuses_bad_input():
    with pytest.raises(ShapeError, match="\\[n, d\\]"):
        LinearProbe.fit(torch.randn(2, 10, 3), torch.arange(10) % 2)
    with pytest.raises(ChoiceError, match="unknown probe method"):
        LinearProbe.fit(torch.randn(10, 3), torch.arange(10) % 2, method="svm")
    with pytest.raises(SiteError, match="NAME.LAYER"):
        LinearProbe.fit(torch.randn(10, 3), torch.arange(10) % 2, site="resid_post")
    with pytest.raises(ShapeError, match="no direction"):
        LinearProbe(torch.zeros(3), torch.tensor(0.0)).as_direction()
    with pytest.raises(ShapeError, match="0/1"):
        accuracy(torch.ones(3), torch.tensor(0.0), torch.randn(4, 3), torch.tensor([0, 1, 2, 1]))
