import subprocess
import sys

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from almostlinear.core.stats import RunningMoments
from almostlinear.linearity import affine_r2, fit_affine, residual_moments


def _moments(x, y):
    return RunningMoments(x.shape[1], y.shape[1]).update(x, y)


def test_in_sample_score_equals_least_squares_r2():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g, dtype=torch.float64)
    y = x @ torch.randn(8, 5, generator=g, dtype=torch.float64) + torch.randn(500, 5, generator=g, dtype=torch.float64)
    m = _moments(x, y)
    r2 = affine_r2(fit_affine(m), m)
    # reference: numpy least squares with an intercept, score as in arXiv 2405.12250 (centred, Frobenius)
    design = np.hstack([x.numpy(), np.ones((500, 1))])
    coef, *_ = np.linalg.lstsq(design, y.numpy(), rcond=None)
    resid = y.numpy() - design @ coef
    centred = y.numpy() - y.numpy().mean(0)
    assert abs(r2 - (1 - (resid ** 2).sum() / (centred ** 2).sum())) < 1e-9


def test_exact_affine_map_scores_one_held_out():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)
    x_train, x_test = torch.randn(200, 6, generator=g, dtype=torch.float64), torch.randn(100, 6, generator=g, dtype=torch.float64) + 3
    fit = fit_affine(_moments(x_train, x_train @ A + 2))
    assert affine_r2(fit, _moments(x_test, x_test @ A + 2)) > 1 - 1e-9


def test_noise_overfits_in_sample_but_not_held_out():
    g = torch.Generator().manual_seed(2)
    n, d = 400, 40
    train = _moments(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g))
    test = _moments(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g))
    in_sample = affine_r2(fit_affine(train), train)
    assert abs(in_sample - d / n) < 0.04  # the d/n noise floor the audit reports
    assert affine_r2(fit_affine(train), test) < 0.0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_residual_moments_equal_direct_moments(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64) * 10
    delta = torch.randn(50, 4, generator=g, dtype=torch.float64)
    derived = residual_moments(_moments(x, delta))
    direct = _moments(x, x + delta)
    for name in ("mean_y", "sxx_", "syy_", "sxy_"):
        assert torch.allclose(getattr(derived, name), getattr(direct, name), atol=1e-9, rtol=1e-9)


def test_importing_linearity_loads_nothing_and_every_public_name_resolves():
    code = (
        "import sys, types\n"
        "import almostlinear.linearity as package\n"
        "assert 'torch' not in sys.modules, 'importing the package imported torch'\n"
        "for name in package.__all__:  # a name shadowed by its submodule would come back as a module\n"
        "    assert not isinstance(getattr(package, name), types.ModuleType), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
