import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from almostlinear.core.errors import EmptyDataError, NonFiniteError, ShapeError
from almostlinear.similarity import StreamingCKA, linear_cka, linear_hsic


def _data(seed, n, dx, dy, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.float64) + offset
    y = x[:, : min(dx, dy)] @ torch.randn(min(dx, dy), dy, generator=g, dtype=torch.float64)
    return x, y + torch.randn(n, dy, generator=g, dtype=torch.float64) + offset


def _orthogonal(d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]


# Naive O(n²) references written from the definitions, on raw (uncentred) Gram matrices.
def _naive_hsic_biased(x, y):
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    return torch.trace(x @ x.T @ h @ y @ y.T @ h) / (n - 1) ** 2


def _naive_hsic_unbiased(x, y):
    # Song et al. (2012): Grams with zeroed diagonals, eq. 3 of arXiv 2010.15327
    n = x.shape[0]
    k, m = (x @ x.T).fill_diagonal_(0), (y @ y.T).fill_diagonal_(0)
    one = torch.ones(n, dtype=torch.float64)
    value = (torch.trace(k @ m) + (one @ k @ one) * (one @ m @ one) / ((n - 1) * (n - 2))
             - 2 / (n - 2) * (one @ k @ m @ one))
    return value / (n * (n - 3))


@pytest.mark.parametrize("n, dx, dy", [(60, 5, 7), (12, 30, 20)])  # feature route, then Gram route
def test_hsic_and_cka_equal_the_naive_quadratic_formulas(n, dx, dy):
    x, y = _data(0, n, dx, dy, offset=3.0)
    assert linear_hsic(x, y) == pytest.approx(float(_naive_hsic_biased(x, y)), rel=1e-10)
    assert linear_hsic(x, y, debiased=True) == pytest.approx(float(_naive_hsic_unbiased(x, y)), rel=1e-9)
    naive = _naive_hsic_biased(x, y) / (_naive_hsic_biased(x, x) * _naive_hsic_biased(y, y)).sqrt()
    assert linear_cka(x, y) == pytest.approx(float(naive), rel=1e-10)
    naive_u = _naive_hsic_unbiased(x, y) / (_naive_hsic_unbiased(x, x) * _naive_hsic_unbiased(y, y)).sqrt()
    assert linear_cka(x, y, debiased=True) == pytest.approx(float(naive_u), rel=1e-9)


def test_cka_of_a_representation_with_itself_is_one():
    x, _ = _data(1, 40, 8, 8)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(6, 40), dx=st.integers(1, 12), dy=st.integers(1, 12),
       scale=st.floats(1e-3, 1e3), shift=st.floats(-100, 100), debiased=st.booleans())
def test_cka_is_invariant_to_rotation_isotropic_scaling_and_shift(seed, n, dx, dy, scale, shift, debiased):
    x, y = _data(seed, n, dx, dy)
    moved = scale * x @ _orthogonal(dx, seed + 1) + shift
    assert linear_cka(moved, y, debiased=debiased) == pytest.approx(linear_cka(x, y, debiased=debiased),
                                                                    rel=1e-7, abs=1e-9)


def test_cka_is_not_invariant_to_anisotropic_scaling():
    x, y = _data(2, 100, 4, 4)
    stretched = x * torch.tensor([10.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert abs(linear_cka(stretched, y) - linear_cka(x, y)) > 0.01


def test_debiased_cka_is_near_zero_for_independent_data_where_plain_cka_is_not():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, 100, generator=g, dtype=torch.float64)
    y = torch.randn(500, 100, generator=g, dtype=torch.float64)
    assert linear_cka(x, y) > 0.1  # the plain estimator's upward bias at d/n = 0.2
    assert abs(linear_cka(x, y, debiased=True)) < 0.02


def test_mask_selects_rows():
    x, y = _data(4, 50, 6, 5)
    mask = torch.arange(50) % 3 != 0
    assert linear_cka(x, y, mask=mask) == linear_cka(x[mask], y[mask])
    assert linear_cka(x, y, mask=mask, debiased=True) == linear_cka(x[mask], y[mask], debiased=True)


def test_streaming_equals_all_at_once_for_any_batching():
    x, y = _data(5, 301, 9, 6, offset=1e3)  # a large mean tests the shifted accumulation
    stream = StreamingCKA(9, 6)
    for start, stop in [(0, 1), (1, 1), (1, 50), (50, 200), (200, 301)]:
        stream.update(x[start:stop], y[start:stop])
    estimate = stream.result()
    assert estimate.n == 301
    assert estimate.linear == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert estimate.debiased == pytest.approx(linear_cka(x, y, debiased=True), rel=1e-8)


def test_streaming_with_mask():
    x, y = _data(6, 80, 4, 4)
    mask = torch.arange(80) < 60
    estimate = StreamingCKA(4, 4).update(x[:40], y[:40], mask=mask[:40]).update(x[40:], y[40:], mask=mask[40:]).result()
    assert estimate.linear == pytest.approx(linear_cka(x[:60], y[:60]), rel=1e-10)
    assert estimate.debiased == pytest.approx(linear_cka(x[:60], y[:60], debiased=True), rel=1e-9)


def test_bad_input_is_refused():
    x, y = _data(7, 20, 3, 3)
    with pytest.raises(ShapeError, match="same examples"):
        linear_cka(x, y[:10])
    with pytest.raises(ShapeError, match="n_examples"):
        linear_cka(x[:, 0], y)
    with pytest.raises(EmptyDataError):
        linear_cka(x[:0], y[:0])
    with pytest.raises(EmptyDataError, match="at least 4"):
        linear_cka(x[:3], y[:3], debiased=True)
    with pytest.raises(EmptyDataError, match="no variance"):
        linear_cka(torch.ones(20, 3), y)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(NonFiniteError):
        linear_cka(bad, y)
    with pytest.raises(ShapeError, match="boolean"):
        linear_cka(x, y, mask=torch.ones(20))
    with pytest.raises(ShapeError, match="shape"):
        linear_cka(x, y, mask=torch.ones(19, dtype=torch.bool))
    stream = StreamingCKA(3, 3)
    with pytest.raises(ShapeError):
        stream.update(x, y[:5])
    with pytest.raises(ShapeError):
        stream.update(x[:, :2], y[:, :2])
    with pytest.raises(NonFiniteError):
        stream.update(bad, y)
    with pytest.raises(EmptyDataError):
        stream.result()


def test_importing_similarity_loads_nothing_and_every_public_name_resolves():
    code = (
        "import sys, types\n"
        "import almostlinear.similarity as package\n"
        "assert 'torch' not in sys.modules, 'importing the package imported torch'\n"
        "for name in package.__all__:  # a name shadowed by its submodule would come back as a module\n"
        "    assert not isinstance(getattr(package, name), types.ModuleType), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
