"""Interpolation curves, barriers and REPAIR against direct computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from almostlinear.connectivity import (
    InterpolationCurve,
    feedforward_spec,
    hidden_layers,
    interpolate,
    interpolated,
    lerp_state,
    repair_,
)
from almostlinear.core.errors import EmptyDataError, NonFiniteError, ShapeError


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def test_curve_matches_hand_built_interpolations():
    a, b = _net(0), _net(1)
    x = torch.randn(20, 4)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    curve = interpolate(a, b, lambda m: float(m(x).detach().square().mean()), alphas=[0.0, 0.3, 1.0])
    for alpha, value in zip(curve.alphas, curve.values["loss"]):
        ref = _net(0)
        ref.load_state_dict({k: (1 - alpha) * before[k] + alpha * b.state_dict()[k] for k in before})
        assert value == pytest.approx(float(ref(x).detach().square().mean()), rel=1e-5)
    for k, v in a.state_dict().items():
        assert torch.equal(v, before[k])  # restored bit for bit


def test_barrier_definitions():
    curve = InterpolationCurve((0.0, 0.5, 1.0), {"loss": (1.0, 3.0, 2.0), "accuracy": (0.9, 0.6, 0.8)})
    assert curve.barrier("loss") == pytest.approx(3.0 - 1.5)
    assert curve.barrier_linear("loss") == pytest.approx(3.0 - 1.5)
    assert curve.barrier("accuracy") == pytest.approx(0.4 - 0.15)  # error barrier
    flat = InterpolationCurve((0.0, 0.5, 1.0), {"loss": (1.0, 1.5, 2.0)})
    assert flat.barrier("loss") == pytest.approx(0.5) and flat.barrier_linear("loss") == pytest.approx(0.0)
    assert curve.midpoint("accuracy") == 0.6


def test_interpolated_restores_on_error_and_checks_shapes():
    a, b = _net(0), _net(1)
    before = [p.clone() for p in a.parameters()]
    with pytest.raises(RuntimeError):
        with interpolated(a, b, 0.5):
            raise RuntimeError
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before))
    with pytest.raises(ShapeError):
        lerp_state({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5)
    with pytest.raises(EmptyDataError):
        interpolate(a, b, lambda m: 0.0, alphas=1)
    with pytest.raises(NonFiniteError, match="inf at alpha=0.5"):
        interpolate(a, b, lambda m: float("inf") if not torch.equal(m[0].weight, before[0]) else 1.0, alphas=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before))  # restored after the error too


def test_repair_sets_hidden_statistics_to_the_interpolated_targets():
    a, b = _net(0), _net(1)
    spec = feedforward_spec(a)
    x = torch.randn(500, 4)
    assert hidden_layers(spec) == ["0", "2"]
    alpha = 0.4

    def stats(model, layer):
        z = model[: layer + 1](x).double()
        return z.mean(0), z.std(0, unbiased=False)

    with interpolated(a, b, alpha):
        repair_(a, _net(0), b, alpha, [x], spec)
        for layer in (0, 2):
            mean, std = stats(a, layer)
            ma, sa = stats(_net(0), layer)
            mb, sb = stats(b, layer)
            torch.testing.assert_close(mean, (1 - alpha) * ma + alpha * mb, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(std, (1 - alpha) * sa + alpha * sb, atol=1e-4, rtol=1e-4)


def test_repair_refuses_to_rescale_an_endpoint():
    # interpolate() works inside model A: REPAIR must then get a copy of A, not A itself
    a, b = _net(0), _net(1)
    with pytest.raises(ValueError, match="copy of A"):
        repair_(a, a, b, 0.5, [torch.randn(8, 4)], feedforward_spec(a))
