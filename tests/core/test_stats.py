"""RunningMoments: equals batch covariance, merges exactly, rejects bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from almostlinear import RunningMoments
from almostlinear.core.errors import EmptyDataError, NonFiniteError, ShapeError


def _data(n, dx, dy=None, seed=0, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=gen) * torch.linspace(0.1, 3.0, dx) + offset
    if dy is None:
        return x, None
    mix = torch.randn(dx, dy, generator=gen)
    y = x @ mix + 0.5 * torch.randn(n, dy, generator=gen) - offset
    return x, y


def _feed(moments, x, y, sizes):
    start = 0
    for size in sizes:
        moments.update(x[start:start + size], None if y is None else y[start:start + size])
        start += size
    assert start == x.shape[0]
    return moments


def _np_cov(x, y=None, ddof=1):
    if y is None:
        return np.cov(x.double().numpy(), rowvar=False, ddof=ddof)
    joint = np.cov(np.hstack([x.double().numpy(), y.double().numpy()]), rowvar=False, ddof=ddof)
    d = x.shape[1]
    return joint[:d, :d], joint[d:, d:], joint[:d, d:]


@pytest.mark.parametrize("sizes", [[50], [1] * 50, [7, 13, 1, 29], [25, 0, 25]])
def test_unpaired_equals_numpy(sizes):
    x, _ = _data(50, 5)
    m = _feed(RunningMoments(5), x, None, sizes)
    assert m.n == 50 and not m.paired
    assert m.cov_x().dtype == torch.float64
    np.testing.assert_allclose(m.mean_x.numpy(), x.double().mean(0).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.cov_x().numpy(), _np_cov(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.cov_x(ddof=0).numpy(), _np_cov(x, ddof=0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sizes", [[40], [3, 17, 20], [1] * 40])
def test_paired_equals_numpy(sizes):
    x, y = _data(40, 4, 3, seed=1)
    m = _feed(RunningMoments(4, 3), x, y, sizes)
    cxx, cyy, cxy = _np_cov(x, y)
    assert m.paired
    np.testing.assert_allclose(m.mean_y.numpy(), y.double().mean(0).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m.cov_x().numpy(), cxx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.cov_y().numpy(), cyy, rtol=1e-10, atol=1e-12)
    assert m.cross_cov().shape == (4, 3)
    np.testing.assert_allclose(m.cross_cov().numpy(), cxy, rtol=1e-10, atol=1e-12)


def test_large_offset_keeps_precision():
    """Activations with a large common offset: float64 and centring keep the covariance exact."""
    x, y = _data(200, 6, 2, seed=3, offset=1e4)
    m = _feed(RunningMoments(6, 2), x, y, [64, 64, 64, 8])
    cxx, _, cxy = _np_cov(x, y)
    np.testing.assert_allclose(m.cov_x().numpy(), cxx, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(m.cross_cov().numpy(), cxy, rtol=1e-8, atol=1e-8)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 60), split=st.floats(0, 1), chunk=st.integers(1, 20), paired=st.booleans(),
       seed=st.integers(0, 1000))
def test_merge_of_halves_equals_whole(n, split, chunk, paired, seed):
    x, y = _data(n, 3, 2 if paired else None, seed=seed)
    cut = int(round(split * n))
    dim_y = 2 if paired else None
    whole = _feed(RunningMoments(3, dim_y), x, y, [n])
    left = RunningMoments(3, dim_y)
    right = RunningMoments(3, dim_y)
    for start in range(0, cut, chunk):
        stop = min(cut, start + chunk)
        left.update(x[start:stop], None if y is None else y[start:stop])
    for start in range(cut, n, chunk):
        stop = min(n, start + chunk)
        right.update(x[start:stop], None if y is None else y[start:stop])
    merged = left.merge(right)
    assert merged.n == n
    assert torch.allclose(merged.mean_x, whole.mean_x, rtol=1e-10, atol=1e-12)
    assert torch.allclose(merged.cov_x(), whole.cov_x(), rtol=1e-9, atol=1e-12)
    if paired:
        assert torch.allclose(merged.cov_y(), whole.cov_y(), rtol=1e-9, atol=1e-12)
        assert torch.allclose(merged.cross_cov(), whole.cross_cov(), rtol=1e-9, atol=1e-12)
    # merging is symmetric and leaves its inputs alone
    other = right.merge(left)
    assert torch.allclose(other.cov_x(), merged.cov_x(), rtol=1e-9, atol=1e-12)
    assert left.n == cut and right.n == n - cut


def test_merge_with_empty_and_copy():
    x, _ = _data(10, 2)
    m = RunningMoments(2).update(x)
    assert torch.equal(m.merge(RunningMoments(2)).cov_x(), m.cov_x())
    assert torch.allclose(RunningMoments(2).merge(m).cov_x(), m.cov_x(), rtol=1e-12)
    clone = m.copy()
    clone.update(x)
    assert m.n == 10 and clone.n == 20


def test_accepts_other_dtypes():
    x, _ = _data(30, 3)
    expected = RunningMoments(3).update(x.double()).cov_x()
    assert torch.allclose(RunningMoments(3).update(x.half().float()).cov_x(), expected, atol=1e-2)
    assert torch.allclose(RunningMoments(3).update(x.to(torch.bfloat16)).cov_x(), expected, atol=0.1)


@pytest.mark.parametrize(
    "call",
    [
        lambda: RunningMoments(3).update(torch.ones(4, 2)),
        lambda: RunningMoments(3).update(torch.ones(3)),
        lambda: RunningMoments(3).update(torch.ones(2, 4, 3)),
        lambda: RunningMoments(3, 2).update(torch.ones(4, 3)),  # paired without y
        lambda: RunningMoments(3).update(torch.ones(4, 3), torch.ones(4, 2)),  # unpaired with y
        lambda: RunningMoments(3, 2).update(torch.ones(4, 3), torch.ones(5, 2)),  # rows differ
        lambda: RunningMoments(3, 2).update(torch.ones(4, 3), torch.ones(4, 3)),  # y width
    ],
)
def test_wrong_shapes(call):
    with pytest.raises(ShapeError):
        call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite(bad):
    x = torch.ones(4, 3)
    x[2, 1] = bad
    m = RunningMoments(3)
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        m.update(x)
    assert m.n == 0 and torch.equal(m.sxx_, torch.zeros(3, 3))  # nothing was absorbed
    with pytest.raises(NonFiniteError):
        RunningMoments(2, 3).update(torch.ones(4, 2), x)
    assert issubclass(NonFiniteError, FloatingPointError) and issubclass(NonFiniteError, ValueError)


@pytest.mark.parametrize("a, b", [((3, None), (4, None)), ((3, 2), (3, None)), ((3, 2), (3, 1))])
def test_merge_mismatched_dims(a, b):
    with pytest.raises(ShapeError, match="cannot merge"):
        RunningMoments(*a).merge(RunningMoments(*b))


def test_too_few_samples():
    m = RunningMoments(2)
    with pytest.raises(EmptyDataError):
        m.cov_x()
    m.update(torch.ones(1, 2))
    with pytest.raises(EmptyDataError):
        m.cov_x()
    assert torch.equal(m.cov_x(ddof=0), torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(EmptyDataError):
        RunningMoments(2, 1).update(torch.ones(1, 2), torch.ones(1, 1)).cross_cov()


# ---------------------------------------------------------------------------------------------
# a leading axis of maps, and the trace of y's covariance only


@pytest.mark.parametrize("y_trace_only", [False, True])
@pytest.mark.parametrize("sizes", [[30], [7, 1, 22], [10, 0, 20]])
def test_maps_equal_one_moments_object_per_map(sizes, y_trace_only):
    xs, ys = zip(*(_data(30, 4, 3, seed=s, offset=s) for s in range(3)))
    x, y = torch.stack(xs), torch.stack(ys)  # [3 maps, 30, d]
    maps = RunningMoments(4, 3, maps=3, y_trace_only=y_trace_only)
    start = 0
    for size in sizes:
        maps.update(x[:, start:start + size], y[:, start:start + size])
        start += size
    assert maps.n == 30 and maps.sxx_.shape == (3, 4, 4) and maps.sxy_.shape == (3, 4, 3)
    for i in range(3):
        single = _feed(RunningMoments(4, 3), xs[i], ys[i], sizes)
        np.testing.assert_allclose(maps.mean_x[i].numpy(), single.mean_x.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(maps.mean_y[i].numpy(), single.mean_y.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(maps.cov_x()[i].numpy(), single.cov_x().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(maps.cross_cov()[i].numpy(), single.cross_cov().numpy(), rtol=1e-10, atol=1e-12)
        syy = maps.syy_[i] if y_trace_only else maps.syy_[i].trace()
        assert float(syy) == pytest.approx(float(single.syy_.trace()), rel=1e-12)
    if y_trace_only:
        with pytest.raises(ShapeError, match="trace"):
            maps.cov_y()
    else:
        np.testing.assert_allclose(maps.cov_y()[1].numpy(), _np_cov(xs[1], ys[1])[1], rtol=1e-10, atol=1e-12)


def test_maps_merge_and_copy_keep_the_layout_and_the_class():
    class Sub(RunningMoments):
        pass

    x, y = torch.randn(2, 20, 3, dtype=torch.float64), torch.randn(2, 20, 2, dtype=torch.float64)
    whole = Sub(3, 2, maps=2, y_trace_only=True).update(x, y)
    left = Sub(3, 2, maps=2, y_trace_only=True).update(x[:, :8], y[:, :8])
    right = Sub(3, 2, maps=2, y_trace_only=True).update(x[:, 8:], y[:, 8:])
    merged = left.merge(right)
    assert type(merged) is Sub and type(left.copy()) is Sub and left.n == 8
    for name in ("mean_x", "mean_y", "sxx_", "sxy_", "syy_"):
        assert torch.allclose(getattr(merged, name), getattr(whole, name), rtol=1e-12, atol=1e-12), name
    with pytest.raises(ShapeError, match="cannot merge"):
        whole.merge(RunningMoments(3, 2, maps=2))
    with pytest.raises(ShapeError, match="cannot merge"):
        whole.merge(RunningMoments(3, 2, maps=3, y_trace_only=True))


@pytest.mark.parametrize(
    "call",
    [
        lambda: RunningMoments(3, 2, maps=2).update(torch.ones(4, 3), torch.ones(4, 2)),  # no maps axis
        lambda: RunningMoments(3, 2, maps=2).update(torch.ones(3, 4, 3), torch.ones(3, 4, 2)),  # 3 maps, not 2
        lambda: RunningMoments(3, 2, maps=2).update(torch.ones(2, 4, 3), torch.ones(2, 5, 2)),  # rows differ
        lambda: RunningMoments(3, y_trace_only=True),  # a trace of nothing
        lambda: RunningMoments(3, maps=0),
    ],
)
def test_maps_wrong_shapes(call):
    with pytest.raises(ShapeError):
        call()


def test_moments_that_keep_only_the_trace_of_y_score_as_the_full_ones():
    from almostlinear.linearity.affine import affine_r2, fit_affine, residual_moments

    x, y = _data(400, 6, 6, seed=3, offset=2.0)
    full, trace = RunningMoments(6, 6), RunningMoments(6, 6, y_trace_only=True)
    _feed(full, x, y, [150, 250])
    _feed(trace, x, y, [150, 250])
    assert trace.syy_.shape == ()
    torch.testing.assert_close(trace.total_var_y(), torch.trace(full.cov_y()), rtol=1e-12, atol=0)
    for a, b in ((full, trace), (residual_moments(full), residual_moments(trace))):
        torch.testing.assert_close(b.total_var_y(ddof=0), torch.trace(a.cov_y(ddof=0)), rtol=1e-12, atol=0)
        fit = fit_affine(a, ridge=1e-2)
        assert affine_r2(fit, b) == pytest.approx(affine_r2(fit, a), rel=1e-12)
    with pytest.raises(ShapeError):
        trace.cov_y()
