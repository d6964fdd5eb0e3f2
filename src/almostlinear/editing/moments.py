"""Uncentred second moment ``E[k kᵀ]`` of MLP keys, accumulated in float64 and mergeable.

ROME, MEMIT and AlphaEdit all use the uncentred moment (no mean subtraction): the update must keep
``W k`` unchanged for the keys the layer actually sees, mean included. Sums and counts are kept
apart, so two halves merged give the whole exactly up to float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.errors import EmptyDataError, NonFiniteError, ShapeError


@dataclass
class SecondMoment:
    """Running ``Σ k kᵀ`` and count over ``[n, d]`` batches."""

    dim: int
    count: int = 0
    total: torch.Tensor = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.total is None:
            self.total = torch.zeros(self.dim, self.dim, dtype=torch.float64)

    def update(self, keys: torch.Tensor) -> SecondMoment:
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ShapeError(f"keys must be [n, {self.dim}], got {tuple(keys.shape)}")
        keys = keys.detach().to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(keys).all():
            raise NonFiniteError("the keys contain NaN or infinite values: check the model's dtype")
        if keys.shape[0]:
            self.total.addmm_(keys.T, keys)
            self.count += keys.shape[0]
        return self

    def merge(self, other: SecondMoment) -> SecondMoment:
        if other.dim != self.dim:
            raise ShapeError(f"cannot merge second moments of widths {self.dim} and {other.dim}")
        return SecondMoment(self.dim, self.count + other.count, self.total + other.total)

    def moment(self) -> torch.Tensor:
        """``E[k kᵀ]`` as ``[d, d]`` float64."""
        if self.count == 0:
            raise EmptyDataError("no keys were accumulated: pass texts with at least one token")
        return self.total / self.count


def relative_difference(a: torch.Tensor, b: torch.Tensor, whole: torch.Tensor) -> float:
    """``‖a − b‖_F / ‖whole‖_F``: the split-half stability figure (smaller is steadier)."""
    norm = float(torch.linalg.matrix_norm(whole))
    return float(torch.linalg.matrix_norm(a - b)) / norm if norm > 0 else float("inf")
