"""Truncated SVD with the Eckart–Young error stated, against NumPy's SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from almostlinear.core.errors import AlmostLinearError, NonFiniteError
from almostlinear.export import rank_for_error, truncate


@given(rows=st.integers(2, 12), cols=st.integers(2, 12), rank=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_error_is_the_dropped_singular_values(rows, cols, rank, seed):
    delta = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cut = truncate(delta, rank=rank)
    s = np.linalg.svd(delta.numpy(), compute_uv=False)
    k = min(rank, len(s))
    expected = np.sqrt((s[k:] ** 2).sum() / (s ** 2).sum())
    assert cut.rank == k and cut.error == pytest.approx(expected, abs=1e-12)
    realised = float((cut.B @ cut.A - delta).norm() / delta.norm())
    assert realised == pytest.approx(expected, abs=1e-10)  # the factors have exactly the stated error


def test_rank_for_error_is_the_smallest_that_meets_it():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])
    total = float((s ** 2).sum())
    errors = [np.sqrt(float((s[k:] ** 2).sum()) / total) for k in range(5)]
    for target in (0.0, 0.05, errors[1], errors[2] + 1e-9, 0.9):
        k = rank_for_error(s, target)
        assert errors[k] <= target + 1e-15 and (k == 1 or errors[k - 1] > target)


def test_numerical_rank_of_a_low_rank_float32_difference():
    g = torch.Generator().manual_seed(0)
    delta = (torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)).float()
    assert truncate(delta.double(), precision=torch.float32).rank == 3
    assert truncate(delta).rank == 3  # the dtype of the difference sets the round-off


def test_zero_and_bad_inputs():
    cut = truncate(torch.zeros(3, 4))
    assert cut.rank == 1 and cut.error == 0.0 and not cut.B.any()
    with pytest.raises(AlmostLinearError):
        truncate(torch.zeros(3))
    with pytest.raises(AlmostLinearError):
        truncate(torch.ones(3, 3), rank=0)
    with pytest.raises(AlmostLinearError):
        truncate(torch.ones(3, 3), target_error=1.0)
    with pytest.raises(NonFiniteError):
        truncate(torch.full((2, 2), float("nan")))
