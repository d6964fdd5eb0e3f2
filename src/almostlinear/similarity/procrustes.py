"""Orthogonal Procrustes similarity and distance between two representations.

Both sides are centred and scaled to unit Frobenius norm; the best rotation of one onto the other
then leaves a squared residual of ``2 - 2·||XᵀY||_*`` (nuclear norm), the orthogonal Procrustes
distance of Ding, Denain and Steinhardt (arXiv 2108.01661). Its arccos form is the angular shape
metric of Williams et al. (arXiv 2110.14739), a true metric. SciPy's ``scipy.spatial.procrustes``
also allows a scaling and reports ``1 - ||XᵀY||²_*``. Widths may differ: the narrower side is
implicitly padded with zero columns.

Unlike CKA, the nuclear norm weighs every shared direction by its singular value rather than its
square, so Procrustes is more sensitive to low-variance directions (arXiv 2108.01661 argues this
makes it track functional differences better).
"""

from __future__ import annotations

import math

import torch

from ..core.errors import check_choice
from ._inputs import centred, paired, require_variance

KINDS = ("squared", "angular", "scaled")


def normalised(x: torch.Tensor) -> torch.Tensor:
    """Centred, unit-Frobenius-norm copy of a checked float64 ``[n, d]`` matrix."""
    xc = centred(x)
    return xc / torch.linalg.matrix_norm(xc)


def nuclear_alignment(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||aᵀb||_*`` for normalised ``a``, ``b``: 1 when one is a rotation of the other, else less."""
    n, da = a.shape
    db = b.shape[1]
    if n < min(da, db):
        # a = U S Vᵀ with n columns in U: aᵀb = V (S Uᵀb) has the singular values of the small S Uᵀb
        u, s, _ = torch.linalg.svd(a, full_matrices=False)
        return float(torch.linalg.svdvals(s[:, None] * (u.T @ b)).sum())
    return float(torch.linalg.svdvals(a.T @ b).sum())


def procrustes_similarity(x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None) -> float:
    """``||XᵀY||_*`` of the centred, unit-norm representations, in ``[0, 1]``."""
    x, y = paired(x, y, mask=mask)
    require_variance(x, "x")
    require_variance(y, "y")
    return min(nuclear_alignment(normalised(x), normalised(y)), 1.0)


def procrustes_distance(x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None,
                        kind: str = "squared") -> float:
    """Distance after the best rotation of one normalised representation onto the other.

    ``kind``: ``"squared"`` is ``2 - 2s`` (arXiv 2108.01661), ``"angular"`` is ``arccos(s)``
    (arXiv 2110.14739), ``"scaled"`` is ``1 - s²`` (SciPy's disparity, which also fits a scale),
    where ``s`` is :func:`procrustes_similarity`.
    """
    check_choice(kind, KINDS, "Procrustes distance kind")
    s = procrustes_similarity(x, y, mask=mask)
    if kind == "squared":
        return max(2.0 - 2.0 * s, 0.0)
    if kind == "angular":
        return math.acos(s)
    return max(1.0 - s * s, 0.0)
