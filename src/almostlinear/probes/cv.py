"""Cross-validated probe accuracy per layer, with folds that keep groups (subjects) apart.

A probe tested on a subject it was trained on can recall rather than generalise, so the folds are
built from whole groups. The L2 strength is either fixed (the documented default, ``DEFAULT_L2``
on standardised features) or chosen per layer by an inner grouped cross-validation on each outer
training part, so the test fold never influences the choice.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, ShapeError
from .linear import accuracy, fit_linear

DEFAULT_L2 = 1e-2
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)


def grouped_folds(groups: Sequence[Hashable] | None, k: int = 5, *, n: int | None = None,
                  seed: int = 0) -> list[torch.Tensor]:
    """``k`` disjoint index sets covering ``range(n)``; all members of a group share one fold.

    ``groups=None`` makes every example its own group (plain k-fold; give ``n``). Groups are
    dealt largest first, each to the currently smallest fold (ties broken by a seeded shuffle),
    so fold sizes are as even as the groups allow.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ShapeError(f"k must be an integer >= 2, got {k!r}")
    if groups is None:
        if n is None:
            raise ShapeError("give either groups or the number of examples n")
        groups = list(range(n))
    groups = list(groups)
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    if len(groups) < k:
        raise EmptyDataError(f"{len(groups)} examples cannot fill {k} folds: use fewer folds or more data")
    if len(members) < k:
        raise EmptyDataError(f"only {len(members)} distinct groups for {k} folds: use k <= {len(members)}")
    order = list(members.values())
    random.Random(seed).shuffle(order)
    order.sort(key=len, reverse=True)  # stable: the shuffle breaks ties between equal sizes
    folds: list[list[int]] = [[] for _ in range(k)]
    for idx in order:
        min(folds, key=len).extend(idx)
    return [torch.tensor(sorted(f), dtype=torch.long) for f in folds]


@dataclass(frozen=True)
class CVResult:
    """Pooled held-out accuracy per layer, per-fold accuracies and the L2 used per fold and layer."""

    accuracy: torch.Tensor  # [layers]
    fold_accuracy: torch.Tensor  # [k, layers]
    fold_sizes: torch.Tensor  # [k]
    l2: torch.Tensor | None  # [k, layers], None for unpenalised methods

    @property
    def std_error(self) -> torch.Tensor:
        """Standard error of the per-fold accuracies' mean, per layer."""
        k = self.fold_accuracy.shape[0]
        return self.fold_accuracy.std(0) / k ** 0.5


def _check(x: torch.Tensor, y, groups) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x)
    x = x[None] if x.dim() == 2 else x
    if x.dim() != 3:
        raise ShapeError(f"x must be [n, d] or [layers, n, d], got {tuple(x.shape)}")
    y = torch.as_tensor(y).reshape(-1)
    if y.shape[0] != x.shape[1]:
        raise ShapeError(f"x has {x.shape[1]} examples but y has {y.shape[0]} labels")
    if groups is not None and len(groups) != x.shape[1]:
        raise ShapeError(f"x has {x.shape[1]} examples but groups has {len(groups)} entries")
    if torch.unique(y).numel() != 2:
        raise EmptyDataError(f"cross-validation of a binary probe needs two classes, got {torch.unique(y).tolist()}")
    values = torch.unique(y)
    return x, y == values.max()


def _pick_l2(x: torch.Tensor, y: torch.Tensor, groups, method: str, grid, k: int, seed: int) -> torch.Tensor:
    """Per layer, the grid value with the best inner cross-validated accuracy (smallest on ties)."""
    scores = torch.stack([cross_validate(x, y, groups=groups, k=k, method=method, l2=value, seed=seed).accuracy
                          for value in grid])  # [grid, layers]
    best = scores.argmax(0)  # first maximum: the smallest penalty among ties
    return torch.tensor(grid, dtype=torch.float64)[best]


def cross_validate(x: torch.Tensor, y, *, groups: Sequence[Hashable] | None = None, k: int = 5,
                   method: str = "logistic", l2: float | None = DEFAULT_L2,
                   l2_grid: Sequence[float] = L2_GRID, inner_k: int = 3, seed: int = 0) -> CVResult:
    """Held-out accuracy per layer of ``method`` probes over ``k`` grouped folds.

    ``l2=None`` chooses the penalty per layer by an inner ``inner_k``-fold grouped CV over
    ``l2_grid`` on each outer training part. A training part holding one class only raises
    :class:`EmptyDataError` (with grouped folds this happens when a group holds a whole class).
    """
    x, y = _check(x, y, groups)
    folds = grouped_folds(groups, k, n=x.shape[1], seed=seed)
    penalised = method in ("logistic", "ridge")
    fold_acc = torch.zeros(k, x.shape[0], dtype=torch.float64)
    chosen = torch.zeros(k, x.shape[0], dtype=torch.float64) if penalised else None
    everything = torch.arange(x.shape[1])
    for i, test in enumerate(folds):
        train = everything[~torch.isin(everything, test)]
        if torch.unique(y[train]).numel() != 2:
            raise EmptyDataError(f"fold {i}'s training part holds one class only; shuffle or regroup the data")
        strength = l2
        if penalised and l2 is None:
            sub = None if groups is None else [groups[j] for j in train.tolist()]
            strength = _pick_l2(x[:, train], y[train], sub, method, l2_grid, inner_k, seed + 1 + i)
        if penalised:
            chosen[i] = torch.as_tensor(strength, dtype=torch.float64).expand(x.shape[0])
        weight, bias = fit_linear(x[:, train], y[train], method=method,
                                  l2=strength if strength is not None else DEFAULT_L2)
        fold_acc[i] = accuracy(weight, bias, x[:, test], y[test])
    sizes = torch.tensor([len(f) for f in folds], dtype=torch.float64)
    pooled = (fold_acc * sizes[:, None]).sum(0) / sizes.sum()
    return CVResult(pooled, fold_acc, sizes.long(), chosen)
