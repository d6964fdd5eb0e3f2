"""Mergeable running moments in float64: mean, covariance and cross-covariance.

Batches are combined with the parallel update of Chan, Golub and LeVeque (1979): each batch's
centred sums are added with a correction for the shift of the mean, so statistics of two halves
merged equal those of the whole, to rounding, whatever the batch sizes. Float64 accumulation keeps
covariances of activations with norms in the hundreds usable for closed-form solves.

With ``maps=L`` the same object holds ``L`` independent sets of moments (one per layer, say) updated
together from ``[L, n, d]`` batches, so their products run as one batched matrix multiply; with
``y_trace_only`` it keeps ``sum ||y - mean_y||^2`` instead of the ``y`` covariance, which is all that
an R² needs and a third of the cost of each batch.

The state lives on ``device`` (the CPU by default) and every batch is moved there before its
products are formed: on an accelerator, pass its device so that the ``d x d`` products run where the
activations already are and nothing is copied to the host per batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .errors import EmptyDataError, NonFiniteError, ShapeError


@dataclass
class RunningMoments:
    """First and second moments of ``x`` (and optionally of ``y`` and between ``x`` and ``y``).

    ``update(x)`` or ``update(x, y)`` with ``[n, d]`` batches (``[maps, n, d]`` with ``maps``);
    ``merge(other)`` combines two. With a ``maps`` axis every tensor gains that leading dimension.
    """

    dim_x: int
    dim_y: int | None = None
    n: int = 0
    mean_x: torch.Tensor | None = None
    mean_y: torch.Tensor | None = None
    sxx_: torch.Tensor | None = None  # sum of centred outer products, not yet normalised
    syy_: torch.Tensor | None = None  # with y_trace_only: its trace, sum ||y - mean_y||^2
    sxy_: torch.Tensor | None = None
    batch_dtype: torch.dtype = torch.float64  # float32 halves the cost of each batch's products
    maps: int | None = None  # a leading axis of that many independent moment sets
    y_trace_only: bool = False
    device: torch.device | str | None = None  # where the state is created; None: the CPU

    def __post_init__(self) -> None:
        if self.y_trace_only and self.dim_y is None:
            raise ShapeError("y_trace_only needs paired moments: construct with dim_y")
        if self.maps is not None and self.maps < 1:
            raise ShapeError(f"maps must be at least 1, got {self.maps}")
        if self.mean_x is None:
            lead = () if self.maps is None else (self.maps,)

            def zeros(*shape: int) -> torch.Tensor:
                return torch.zeros((*lead, *shape), dtype=torch.float64, device=self.device or "cpu")

            self.mean_x = zeros(self.dim_x)
            self.sxx_ = zeros(self.dim_x, self.dim_x)
            if self.dim_y is not None:
                self.mean_y = zeros(self.dim_y)
                self.syy_ = zeros() if self.y_trace_only else zeros(self.dim_y, self.dim_y)
                self.sxy_ = zeros(self.dim_x, self.dim_y)

    @property
    def paired(self) -> bool:
        return self.dim_y is not None

    def _check(self, x: torch.Tensor, dim: int, name: str) -> torch.Tensor:
        if self.maps is None and (x.dim() != 2 or x.shape[1] != dim):
            raise ShapeError(f"{name} must be [n, {dim}], got {tuple(x.shape)}")
        if self.maps is not None and (x.dim() != 3 or x.shape[0] != self.maps or x.shape[2] != dim):
            raise ShapeError(f"{name} must be [{self.maps}, n, {dim}], got {tuple(x.shape)}")
        x = x.detach().to(device=self.mean_x.device, dtype=self.batch_dtype)
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
            if y.shape[-2] != x.shape[-2]:
                raise ShapeError(f"x has {x.shape[-2]} rows but y has {y.shape[-2]}")
        elif y is not None:
            raise ShapeError("these moments are not paired: construct with dim_y to add y")
        m = x.shape[-2]
        if m == 0:
            return self
        batch = _moments_of(x, y, self.y_trace_only)
        if self.maps is None:
            batch = [None if t is None else t.double() for t in batch]
        self._absorb(m, *batch)
        return self

    def _absorb(self, m, mean_x, mean_y, sxx, syy, sxy) -> None:
        n = self.n
        total = n + m
        dx = mean_x - self.mean_x
        w = n * m / total
        if self.maps is None:
            self.sxx_.add_(sxx).addr_(dx, dx, alpha=w)
        else:
            _add_shifted(self.sxx_, sxx, w, dx, dx)
        self.mean_x += dx * (m / total)
        if self.paired:
            dy = mean_y - self.mean_y
            if self.y_trace_only:
                self.syy_ += syy + w * dy.square().sum(-1)
            elif self.maps is None:
                self.syy_.add_(syy).addr_(dy, dy, alpha=w)
            else:
                _add_shifted(self.syy_, syy, w, dy, dy)
            if self.maps is None:
                self.sxy_.add_(sxy).addr_(dx, dy, alpha=w)
            else:
                _add_shifted(self.sxy_, sxy, w, dx, dy)
            self.mean_y += dy * (m / total)
        self.n = total

    def _layout(self) -> tuple:
        return self.dim_x, self.dim_y, self.maps, self.y_trace_only

    def merge(self, other: RunningMoments) -> RunningMoments:
        """A new object holding the moments of both inputs' data."""
        if self._layout() != other._layout():
            raise ShapeError(f"cannot merge moments of layouts (dim_x, dim_y, maps, y_trace_only) "
                             f"{self._layout()} and {other._layout()}")
        out = self.copy()
        if other.n:
            out._absorb(other.n, other.mean_x, other.mean_y, other.sxx_, other.syy_, other.sxy_)
        return out

    def copy(self) -> RunningMoments:
        """An independent copy (of the same class, so subclasses keep their methods)."""
        out = copy.copy(self)
        for name in ("mean_x", "mean_y", "sxx_", "syy_", "sxy_"):
            value = getattr(self, name)
            setattr(out, name, None if value is None else value.clone())
        return out

    def _require(self, minimum: int) -> None:
        if self.n < minimum:
            raise EmptyDataError(f"need at least {minimum} samples, have {self.n}")

    def cov_x(self, ddof: int = 1) -> torch.Tensor:
        self._require(ddof + 1)
        return self.sxx_ / (self.n - ddof)

    def total_var_y(self, ddof: int = 1) -> torch.Tensor:
        """The trace of ``y``'s covariance (per map with ``maps``), kept with or without ``y_trace_only``."""
        self._require(ddof + 1)
        total = self.syy_ if self.y_trace_only else self.syy_.diagonal(dim1=-2, dim2=-1).sum(-1)
        return total / (self.n - ddof)

    def cov_y(self, ddof: int = 1) -> torch.Tensor:
        if self.y_trace_only:
            raise ShapeError("these moments keep only the trace of y's covariance: construct without y_trace_only")
        self._require(ddof + 1)
        return self.syy_ / (self.n - ddof)

    def cross_cov(self, ddof: int = 1) -> torch.Tensor:
        """``Cov(x, y)`` as ``[dim_x, dim_y]``."""
        self._require(ddof + 1)
        return self.sxy_ / (self.n - ddof)


def _add_shifted(total: torch.Tensor, batch: torch.Tensor, w: float, a: torch.Tensor, b: torch.Tensor) -> None:
    """``total += batch + w a bᵀ`` per map, in place, rounded as that expression is (``batch`` may be
    float32: it widens exactly), with one ``[maps, d, d]`` temporary instead of three."""
    if not w:  # the first batch: nothing to correct for
        total += batch
        return
    shift = (w * a)[..., :, None] * b[..., None, :]
    total += shift.add_(batch)


def _mean(x: torch.Tensor) -> torch.Tensor:
    # A single set averages in the batch's dtype; a stack of maps averages in float64 before centring
    # (how the per-block fits have always done it), so both reproduce their earlier numbers exactly.
    return x.mean(0) if x.dim() == 2 else x.mean(-2, dtype=torch.float64)


def _moments_of(x: torch.Tensor, y: torch.Tensor | None, y_trace_only: bool = False):
    mean_x = _mean(x)
    xc = x - mean_x.unsqueeze(-2).to(x.dtype)
    xct = xc.transpose(-1, -2)
    sxx = xct @ xc
    if y is None:
        return mean_x, None, sxx, None, None
    mean_y = _mean(y)
    yc = y - mean_y.unsqueeze(-2).to(y.dtype)
    syy = yc.double().square().sum((-2, -1)) if y_trace_only else yc.transpose(-1, -2) @ yc
    return mean_x, mean_y, sxx, syy, xct @ yc
