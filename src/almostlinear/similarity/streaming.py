"""Linear CKA, plain and debiased, accumulated from batches without keeping the examples.

Plain CKA needs only the centred second moments, which :class:`~almostlinear.core.stats.RunningMoments`
merges exactly. The unbiased HSIC also needs fourth-order row statistics (``Σ||x_i||²||y_i||²``,
``Σ||x_i||² y_i``, ...). Because it is invariant to a constant shift of the rows (see ``cka.py``),
these are summed from rows shifted by the first batch's mean, which keeps the float64 sums well
conditioned for activations with large means, and the estimator is evaluated on the raw sums::

    tr(K̃L̃)  = ||XᵀY||² - Σ k_i l_i                       k_i = ||x_i||², s_x = Σ x_i
    1ᵀK̃1    = ||s_x||² - Σ k_i
    1ᵀK̃L̃1  = s_xᵀ(XᵀY)s_y - s_y·Σ k_i y_i - s_x·Σ l_i x_i + Σ k_i l_i

Memory is ``d_x² + d_y² + d_x·d_y`` float64 numbers, whatever the number of examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, ShapeError
from ..core.stats import RunningMoments
from ._inputs import check_mask
from .cka import cka_from_dots


@dataclass(frozen=True)
class CKAEstimate:
    """Linear CKA of the data seen so far, plain and debiased, and how many examples it used."""

    linear: float
    debiased: float
    n: int


class _RowSums:
    """Sums over rows of one side: ``s = Σx``, ``q = Σ||x||²``, ``qq = Σ||x||⁴``, ``xq = Σ||x||² x``."""

    def __init__(self, dim: int) -> None:
        self.s = torch.zeros(dim, dtype=torch.float64)
        self.xq = torch.zeros(dim, dtype=torch.float64)
        self.q = torch.zeros((), dtype=torch.float64)
        self.qq = torch.zeros((), dtype=torch.float64)

    def add(self, x: torch.Tensor, norms: torch.Tensor) -> None:
        self.s += x.sum(0)
        self.xq += norms @ x
        self.q += norms.sum()
        self.qq += norms @ norms


class StreamingCKA:
    """``update(x, y)`` with ``[n, d_x]`` and ``[n, d_y]`` batches, then ``result()``.

    Equal, to rounding, to :func:`~almostlinear.similarity.linear_cka` on all rows at once.
    """

    def __init__(self, dim_x: int, dim_y: int) -> None:
        self.moments = RunningMoments(dim_x, dim_y)
        self._shift: tuple[torch.Tensor, torch.Tensor] | None = None
        self._x, self._y = _RowSums(dim_x), _RowSums(dim_y)
        self._xx = torch.zeros(dim_x, dim_x, dtype=torch.float64)
        self._yy = torch.zeros(dim_y, dim_y, dtype=torch.float64)
        self._xy = torch.zeros(dim_x, dim_y, dtype=torch.float64)
        self._x_qy = torch.zeros(dim_x, dtype=torch.float64)  # Σ ||y_i||² x_i
        self._y_qx = torch.zeros(dim_y, dtype=torch.float64)  # Σ ||x_i||² y_i
        self._qxy = torch.zeros((), dtype=torch.float64)  # Σ ||x_i||² ||y_i||²

    @property
    def n(self) -> int:
        return self.moments.n

    def update(self, x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None) -> StreamingCKA:
        """Add a batch (rows selected by the boolean ``mask``). Returns ``self``."""
        if x.dim() == 2 and y.dim() == 2 and x.shape[0] != y.shape[0]:
            raise ShapeError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        if mask is not None:
            keep = check_mask(mask, x.shape[0])
            x, y = x[keep.to(x.device)], y[keep.to(y.device)]
        self.moments.update(x, y)  # checks shapes and finiteness
        if x.shape[0] == 0:
            return self
        x, y = x.detach().to("cpu", torch.float64), y.detach().to("cpu", torch.float64)
        if self._shift is None:
            self._shift = (x.mean(0), y.mean(0))
        x, y = x - self._shift[0], y - self._shift[1]
        kx, ky = x.square().sum(1), y.square().sum(1)
        self._x.add(x, kx)
        self._y.add(y, ky)
        self._xx += x.T @ x
        self._yy += y.T @ y
        self._xy += x.T @ y
        self._x_qy += ky @ x
        self._y_qx += kx @ y
        self._qxy += kx @ ky
        return self

    def result(self) -> CKAEstimate:
        n = self.n
        if n < 4:
            raise EmptyDataError(f"need at least 4 examples for debiased CKA, have {n}")
        m = self.moments
        plain = cka_from_dots(m.sxy_.square().sum(), m.sxx_.square().sum(), m.syy_.square().sum())
        x, y = self._x, self._y
        xy = _unbiased(self._xy, x.s, y.s, x.q, y.q, self._qxy, self._y_qx, self._x_qy, n)
        xx = _unbiased(self._xx, x.s, x.s, x.q, x.q, x.qq, x.xq, x.xq, n)
        yy = _unbiased(self._yy, y.s, y.s, y.q, y.q, y.qq, y.xq, y.xq, n)
        return CKAEstimate(plain, cka_from_dots(xy, xx, yy), n)


def _unbiased(cross, s_a, s_b, q_a, q_b, q_ab, b_qa, a_qb, n: int) -> torch.Tensor:
    """``n(n-3)·HSIC_u`` from raw sums; ``b_qa = Σ||a_i||² b_i``, ``a_qb = Σ||b_i||² a_i``."""
    trace = cross.square().sum() - q_ab
    sum_k, sum_l = s_a @ s_a - q_a, s_b @ s_b - q_b
    k_l = s_a @ cross @ s_b - s_b @ b_qa - s_a @ a_qb + q_ab
    return trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 / (n - 2) * k_l
