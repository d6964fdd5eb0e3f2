"""Canonical correlation analysis between representations: mean CCA, SVCCA and PWCCA.

The canonical correlations of centred ``X`` and ``Y`` are the singular values of ``U_xᵀU_y``, where
``U`` is an orthonormal basis of each side's column space (from a thin SVD, dropping directions
below rounding level). This is Björck and Golub's method: stable, with no covariance inverse.

* Mean CCA: the average of the ``min(rank_x, rank_y)`` canonical correlations.
* SVCCA (Raghu et al., arXiv 1706.05806): first keep, on each side, the top singular directions that
  explain ``keep_variance`` (99%) of its variance, then mean CCA between those subspaces.
* PWCCA (Morcos et al., arXiv 1806.05759): a weighted mean of the correlations, each canonical
  variate ``h_i`` of ``X`` weighted by ``Σ_j |<h_i, x_j>|`` over ``X``'s centred columns ``x_j``, so
  directions that account for much of ``X`` count more. It is asymmetric: ``pwcca(x, y)`` weights
  by ``x``.

CCA is invariant to any invertible linear map of either side, so it cannot say anything when the
two widths together exceed the number of examples (arXiv 1905.00414): every correlation is then 1.
These functions refuse that case instead of returning a meaningless 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import ShapeError
from ._inputs import centred, paired, require_variance


@dataclass(frozen=True)
class Subspace:
    """Thin SVD ``X_c = U diag(s) Vh`` of a centred representation, truncated to its rank."""

    u: torch.Tensor  # [n, r]
    s: torch.Tensor  # [r]
    vh: torch.Tensor  # [r, d]

    @property
    def rank(self) -> int:
        return self.s.shape[0]


def subspace(x: torch.Tensor, keep_variance: float | None = None) -> Subspace:
    """Column space of a checked float64 ``x``; with ``keep_variance``, only its top directions."""
    xc = centred(x)
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    tol = float(s[0]) * max(xc.shape) * torch.finfo(torch.float64).eps if s.numel() else 0.0
    rank = max(int((s > tol).sum()), 1)
    if keep_variance is not None:
        if not 0.0 < keep_variance <= 1.0:
            raise ShapeError(f"keep_variance must be in (0, 1], got {keep_variance}")
        share = torch.cumsum(s[:rank].square(), 0) / s[:rank].square().sum()
        rank = min(int((share < keep_variance - 1e-12).sum()) + 1, rank)
    return Subspace(u[:, :rank], s[:rank], vh[:rank])


def _check_room(a: Subspace, b: Subspace) -> None:
    n = a.u.shape[0]
    if a.rank + b.rank > n - 1:
        raise ShapeError(
            f"CCA is degenerate here: the representations span {a.rank} and {b.rank} dimensions but "
            f"{n} centred examples leave room for only {n - 1}, so every canonical correlation is 1. "
            "Use more examples, svcca() with a lower keep_variance, or linear_cka()."
        )


def correlations_between(a: Subspace, b: Subspace) -> torch.Tensor:
    """Canonical correlations, largest first, ``min(rank_a, rank_b)`` of them."""
    _check_room(a, b)
    return torch.linalg.svdvals(a.u.T @ b.u).clamp(0.0, 1.0)


def pwcca_between(a: Subspace, b: Subspace) -> float:
    """Projection-weighted mean of the canonical correlations, weights from ``a``'s columns."""
    _check_room(a, b)
    p, rho, _ = torch.linalg.svd(a.u.T @ b.u, full_matrices=False)
    k = rho.shape[0]
    # <h_i, x_j> for canonical variates h_i = U_a p_i and centred columns x_j = U_a diag(s) vh[:, j]
    weights = (p[:, :k].T @ (a.s[:, None] * a.vh)).abs().sum(1)
    return float((weights * rho.clamp(0.0, 1.0)).sum() / weights.sum())


def _pair(x, y, mask, keep_variance=None) -> tuple[Subspace, Subspace]:
    x, y = paired(x, y, mask=mask)
    require_variance(x, "x")
    require_variance(y, "y")
    return subspace(x, keep_variance), subspace(y, keep_variance)


def canonical_correlations(x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """All canonical correlations between ``x`` ``[n, d_x]`` and ``y`` ``[n, d_y]``, largest first."""
    return correlations_between(*_pair(x, y, mask))


def mean_cca(x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None) -> float:
    """Mean canonical correlation (``ρ̄`` in arXiv 1905.00414)."""
    return float(canonical_correlations(x, y, mask=mask).mean())


def svcca(x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None,
          keep_variance: float = 0.99) -> float:
    """SVCCA (arXiv 1706.05806): mean CCA between the top-variance subspaces of each side."""
    return float(correlations_between(*_pair(x, y, mask, keep_variance)).mean())


def pwcca(x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None) -> float:
    """PWCCA (arXiv 1806.05759), weighted by how much of ``x`` each canonical variate accounts for."""
    return pwcca_between(*_pair(x, y, mask))
