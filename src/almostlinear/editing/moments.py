"""Uncentred second moment ``E[k kᵀ]`` of MLP keys, accumulated in float64 and mergeable.

ROME, MEMIT and AlphaEdit all use the uncentred moment (no mean subtraction): the update must keep
``W k`` unchanged for the keys the layer actually sees, mean included. Sums and counts are kept
apart, so two halves merged give the whole exactly up to float64 rounding.

The sum lives where the first batch of keys lives (or on ``device``): on an accelerator the
``d_mlp x d_mlp`` products run there and nothing is copied to the host per batch.
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
    device: torch.device | str | None = None  # None: where the first keys arrive

    def __post_init__(self) -> None:
        if self.total is None:
            self.total = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=self.device or "cpu")

    def update(self, keys: torch.Tensor) -> SecondMoment:
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ShapeError(f"keys must be [n, {self.dim}], got {tuple(keys.shape)}")
        total = self._sum()
        if self.count == 0 and self.device is None and keys.device != total.device:
            self.total = total = total.to(keys.device)  # still empty: follow the keys to their device
        keys = keys.detach().to(device=self.total.device, dtype=torch.float64)
        if not torch.isfinite(keys).all():
            raise NonFiniteError("the keys contain NaN or infinite values: check the model's dtype")
        if keys.shape[0]:
            self.total.addmm_(keys.T, keys)
            self.count += keys.shape[0]
        return self

    def _sum(self) -> torch.Tensor:
        if self.total is None:
            self.total = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        return self.total

    def merge(self, other: SecondMoment) -> SecondMoment:
        if other.dim != self.dim:
            raise ShapeError(f"cannot merge second moments of widths {self.dim} and {other.dim}")
        mine, theirs = self._sum(), other._sum()
        return SecondMoment(self.dim, self.count + other.count, mine + theirs.to(mine.device))

    def moment(self) -> torch.Tensor:
        """``E[k kᵀ]`` as ``[d, d]`` float64, on the CPU."""
        if self.count == 0:
            raise EmptyDataError("no keys were accumulated: pass texts with at least one token")
        return (self._sum() / self.count).cpu()

    def moment_(self) -> torch.Tensor:
        """:meth:`moment`, formed in place of the running sum, which it consumes (the object is empty
        afterwards): one ``d x d`` float64 less at 8B scale, where each is 1.6 GB."""
        if self.count == 0:
            raise EmptyDataError("no keys were accumulated: pass texts with at least one token")
        total, count = self._sum(), self.count
        self.total, self.count = None, 0
        return total.div_(count).cpu()


def relative_difference(a: torch.Tensor, b: torch.Tensor, whole: torch.Tensor) -> float:
    """``‖a − b‖_F / ‖whole‖_F``: the split-half stability figure (smaller is steadier)."""
    norm = float(torch.linalg.matrix_norm(whole))
    return float(torch.linalg.matrix_norm(a - b)) / norm if norm > 0 else float("inf")
