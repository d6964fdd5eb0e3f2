"""Least-squares affine maps between two representations, fitted and scored from moments alone.

Everything here works on :class:`~almostlinear.core.stats.RunningMoments` of pairs ``(x, y)``, so
activations are streamed, never stored. The score is the share of ``y``'s total variance that the
map explains, ``R^2 = 1 - SSE / SST`` summed over output dimensions; with centred and
Frobenius-normalised matrices this is exactly the "linearity score" of arXiv 2405.12250. Scored on
the data it was fitted on, it is optimistic by about ``d / n`` (the fit of pure noise); scored on
held-out tokens it is honest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError
from ..core.linalg import spd_solve
from ..core.stats import RunningMoments


@dataclass(frozen=True)
class AffineFit:
    """``y ≈ (x - x_mean) @ A + y_mean``, with the ridge ``lam`` used."""

    A: torch.Tensor  # [dim_x, dim_y]
    x_mean: torch.Tensor
    y_mean: torch.Tensor
    lam: float


def fit_affine(moments: RunningMoments, *, ridge: float = 0.0) -> AffineFit:
    """Ridge-regularised least squares; ``ridge`` is relative to the mean variance of ``x``.

    Solved by Cholesky (an order of magnitude faster than an eigendecomposition on small CPUs).
    A floor of 1e-9 on the relative ridge keeps rank-deficient inputs solvable when ``ridge`` is 0.
    """
    if moments.n < 2:
        raise EmptyDataError(f"need at least 2 samples to fit a map, have {moments.n}")
    cxx, cxy = moments.cov_x(ddof=0), moments.cross_cov(ddof=0)
    lam = max(ridge, 1e-9) * float(torch.trace(cxx)) / cxx.shape[0]
    A = spd_solve(cxx, cxy, lam)
    return AffineFit(A, moments.mean_x.clone(), moments.mean_y.clone(), lam)


def affine_r2(fit: AffineFit, moments: RunningMoments) -> float:
    """Explained share of total variance of ``y`` when ``fit`` predicts it on these data."""
    cxx, cxy = moments.cov_x(ddof=0), moments.cross_cov(ddof=0)
    sst = moments.total_var_y(ddof=0)  # only the trace of y's covariance enters
    A = fit.A.to(cxx.device)
    shift = (moments.mean_y - fit.y_mean.to(cxx.device)) - (moments.mean_x - fit.x_mean.to(cxx.device)) @ A
    sse = sst - 2 * torch.sum(A * cxy) + torch.sum(A * (cxx @ A)) + shift @ shift
    sse = sse.clamp_min(0)  # a sum of squares; the expanded form can round to a tiny negative number
    if sst <= 0:
        raise EmptyDataError("y has no variance on these data; the score is undefined")
    return float(1 - sse / sst)


def residual_moments(moments: RunningMoments) -> RunningMoments:
    """Moments of ``(x, y + x)`` from those of ``(x, y)``.

    Accumulating ``(h_l, h_{l+1} - h_l)`` and deriving ``(h_l, h_{l+1})`` by addition avoids the
    cancellation that the opposite direction would suffer, since the block's update is small
    next to the residual stream it is added to. Moments that keep only the trace of ``y``'s
    covariance give the trace of the sum's.
    """
    if moments.dim_y != moments.dim_x or moments.maps is not None:
        raise EmptyDataError("x and y must have the same width (and one set of moments) to add them")
    if moments.y_trace_only:
        syy = moments.syy_ + 2 * torch.trace(moments.sxy_) + torch.trace(moments.sxx_)
    else:
        syy = moments.syy_ + moments.sxy_ + moments.sxy_.T + moments.sxx_
    return RunningMoments(
        moments.dim_x, moments.dim_y, moments.n,
        moments.mean_x.clone(), moments.mean_y + moments.mean_x,
        moments.sxx_.clone(), syy, moments.sxy_ + moments.sxx_,
        batch_dtype=moments.batch_dtype, y_trace_only=moments.y_trace_only,
    )
