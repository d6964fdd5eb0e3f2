"""Low-rank factors of a weight difference, with the error of the truncation stated.

Plain tensor maths (no transformers). By the Eckart–Young–Mirsky theorem the best rank-``k``
approximation of ``ΔW`` in the Frobenius norm keeps its ``k`` largest singular triplets, and its
error is the root sum of squares of the singular values dropped; :func:`truncate` returns that
error relative to ``‖ΔW‖_F``. A target error picks the smallest rank that meets it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.errors import AlmostLinearError, NonFiniteError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Truncation:
    """``B @ A`` ≈ ``ΔW`` with ``B`` ``[out, k]`` and ``A`` ``[k, in]`` (float64).

    ``error`` is ``‖ΔW − B A‖_F / ‖ΔW‖_F`` (0 for a zero ``ΔW``); ``lost`` and ``total`` are the
    squared norms dropped and present, so errors over many matrices can be pooled.
    """

    A: Tensor
    B: Tensor
    error: float
    lost: float
    total: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


def rank_for_error(singular_values: Tensor, target_error: float) -> int:
    """The smallest ``k`` whose relative Frobenius error is at most ``target_error`` (at least 1)."""
    s2 = singular_values.double().pow(2)
    total = float(s2.sum())
    if total == 0.0:
        return 1
    # tail[k] = Σ_{i ≥ k} σᵢ², the squared error of keeping the first k
    tail = torch.flip(torch.cumsum(torch.flip(s2, [0]), 0), [0])
    tail = torch.cat([tail, torch.zeros(1, dtype=tail.dtype)])
    allowed = (target_error ** 2) * total
    for k in range(1, s2.numel() + 1):
        if float(tail[k]) <= allowed:
            return k
    return s2.numel()


def truncate(delta: Tensor, *, rank: int | None = None, target_error: float | None = None,
             precision: torch.dtype | None = None) -> Truncation:
    """The best rank-``rank`` factors of ``delta`` ``[out, in]`` (or the smallest rank meeting
    ``target_error``); with neither, the numerical rank: singular values above the round-off of
    ``precision`` (default ``delta``'s dtype; pass the dtype the difference was stored in)."""
    if delta.dim() != 2:
        raise AlmostLinearError(f"only a matrix has low-rank factors, got shape {tuple(delta.shape)}")
    if rank is not None and rank < 1:
        raise AlmostLinearError(f"rank must be at least 1, got {rank}")
    if target_error is not None and not (0.0 <= target_error < 1.0):
        raise AlmostLinearError(f"target_error is a relative Frobenius error in [0, 1), got {target_error}")
    d = delta.detach().double()
    if not bool(torch.isfinite(d).all()):
        raise NonFiniteError("the weight difference contains NaN or infinite values")
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    if rank is not None:
        k = min(rank, s.numel())
    elif target_error is not None:
        k = rank_for_error(s, target_error)
    else:  # numerical rank: singular values above the round-off of the largest in the delta's own dtype
        eps = torch.finfo(precision or (delta.dtype if delta.is_floating_point() else torch.float64)).eps
        tol = (float(s[0]) if s.numel() else 0.0) * max(d.shape) * eps
        k = max(1, int((s > tol).sum()))
    total = float(s.pow(2).sum())
    lost = float(s[k:].pow(2).sum())
    error = math.sqrt(lost / total) if total > 0 else 0.0
    return Truncation(A=vh[:k].contiguous(), B=(u[:, :k] * s[:k]).contiguous(), error=error, lost=lost,
                      total=total)
