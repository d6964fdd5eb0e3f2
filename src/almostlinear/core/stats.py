"""Mergeable running moments in float64: mean, covariance and cross-covariance.

Batches are combined with the parallel update of Chan, Golub and LeVeque (1979): each batch's
centred sums are added with a correction for the shift of the mean, so statistics of two halves
merged equal those of the whole, to rounding, whatever the batch sizes. Float64 accumulation keeps
covariances of activations with norms in the hundreds usable for closed-form solves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import EmptyDataError, NonFiniteError, ShapeError


@dataclass
class RunningMoments:
    """First and second moments of ``x`` (and optionally of ``y`` and between ``x`` and ``y``).

    ``update(x)`` or ``update(x, y)`` with ``[n, d]`` batches; ``merge(other)`` combines two.
    """

    dim_x: int
    dim_y: int | None = None
    n: int = 0
    mean_x: torch.Tensor | None = None
    mean_y: torch.Tensor | None = None
    sxx_: torch.Tensor | None = None  # sum of centred outer products, not yet normalised
    syy_: torch.Tensor | None = None
    sxy_: torch.Tensor | None = None
    batch_dtype: torch.dtype = torch.float64  # float32 halves the cost of each batch's products

    def __post_init__(self) -> None:
        if self.mean_x is None:
            self.mean_x = torch.zeros(self.dim_x, dtype=torch.float64)
            self.sxx_ = torch.zeros(self.dim_x, self.dim_x, dtype=torch.float64)
            if self.dim_y is not None:
                self.mean_y = torch.zeros(self.dim_y, dtype=torch.float64)
                self.syy_ = torch.zeros(self.dim_y, self.dim_y, dtype=torch.float64)
                self.sxy_ = torch.zeros(self.dim_x, self.dim_y, dtype=torch.float64)

    @property
    def paired(self) -> bool:
        return self.dim_y is not None

    def _check(self, x: torch.Tensor, dim: int, name: str) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != dim:
            raise ShapeError(f"{name} must be [n, {dim}], got {tuple(x.shape)}")
        x = x.detach().to(device="cpu", dtype=self.batch_dtype)
        if not torch.isfinite(x).all():
            raise NonFiniteError(
                f"{name} contains NaN or infinite values: check the model's dtype (float16 overflows "
                "are common) and the inputs"
            )
        return x

    def update(self, x: torch.Tensor, y: torch.Tensor | None = None) -> RunningMoments:
        """Add a batch. Returns ``self`` so calls can be chained."""
        x = self._check(x, self.dim_x, "x")
        if self.paired:
            if y is None:
                raise ShapeError("these moments are paired: pass y with x")
            y = self._check(y, self.dim_y, "y")
            if y.shape[0] != x.shape[0]:
                raise ShapeError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        elif y is not None:
            raise ShapeError("these moments are not paired: construct with dim_y to add y")
        m = x.shape[0]
        if m == 0:
            return self
        batch = [None if t is None else t.double() for t in _moments_of(x, y)]
        self._absorb(m, *batch)
        return self

    def _absorb(self, m, mean_x, mean_y, sxx, syy, sxy) -> None:
        n = self.n
        total = n + m
        dx = mean_x - self.mean_x
        w = n * m / total
        self.sxx_.add_(sxx).addr_(dx, dx, alpha=w)
        self.mean_x += dx * (m / total)
        if self.paired:
            dy = mean_y - self.mean_y
            self.syy_.add_(syy).addr_(dy, dy, alpha=w)
            self.sxy_.add_(sxy).addr_(dx, dy, alpha=w)
            self.mean_y += dy * (m / total)
        self.n = total

    def merge(self, other: RunningMoments) -> RunningMoments:
        """A new object holding the moments of both inputs' data."""
        if (self.dim_x, self.dim_y) != (other.dim_x, other.dim_y):
            raise ShapeError(
                f"cannot merge moments of dims {(self.dim_x, self.dim_y)} and {(other.dim_x, other.dim_y)}"
            )
        out = self.copy()
        if other.n:
            out._absorb(other.n, other.mean_x, other.mean_y, other.sxx_, other.syy_, other.sxy_)
        return out

    def copy(self) -> RunningMoments:
        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        return RunningMoments(self.dim_x, self.dim_y, self.n, clone(self.mean_x), clone(self.mean_y),
                              clone(self.sxx_), clone(self.syy_), clone(self.sxy_), self.batch_dtype)

    def _require(self, minimum: int) -> None:
        if self.n < minimum:
            raise EmptyDataError(f"need at least {minimum} samples, have {self.n}")

    def cov_x(self, ddof: int = 1) -> torch.Tensor:
        self._require(ddof + 1)
        return self.sxx_ / (self.n - ddof)

    def cov_y(self, ddof: int = 1) -> torch.Tensor:
        self._require(ddof + 1)
        return self.syy_ / (self.n - ddof)

    def cross_cov(self, ddof: int = 1) -> torch.Tensor:
        """``Cov(x, y)`` as ``[dim_x, dim_y]``."""
        self._require(ddof + 1)
        return self.sxy_ / (self.n - ddof)


def _moments_of(x: torch.Tensor, y: torch.Tensor | None):
    mean_x = x.mean(0)
    xc = x - mean_x
    sxx = xc.T @ xc
    if y is None:
        return mean_x, None, sxx, None, None
    mean_y = y.mean(0)
    yc = y - mean_y
    return mean_x, mean_y, sxx, yc.T @ yc, xc.T @ yc
