"""Maps between two models on shared texts: held-out R² and retrieval in both directions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.errors import ShapeError
from .artifact import LinearMap, MapScores, split_rows
from .maps import paired

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class DirectionScores:
    """One direction (``source → target``): held-out scores per map kind, and R² per rank."""

    source: str
    target: str
    held_out: dict[str, MapScores]
    train_r2: dict[str, float]
    ridge: float | None
    rank_r2: dict[int, float] = field(default_factory=dict)


@dataclass
class CrossModelScores:
    forward: DirectionScores
    backward: DirectionScores
    n_train: int
    n_test: int


def _one_direction(x, y, train, test, source: str, target: str, ranks: Sequence[int], seed: int,
                   groups=None) -> DirectionScores:
    held, in_sample = {}, {}
    train_groups = [groups[i] for i in train.tolist()] if groups is not None else None
    affine = LinearMap.fit(x[train], y[train], "affine", source=source, target=target, seed=seed,
                             groups=train_groups)
    ridge = affine.ridge
    fits = {"affine": affine,
            "orthogonal": LinearMap.fit(x[train], y[train], "orthogonal", source=source, target=target, scale=True)}
    rank_r2 = {}
    limit = min(x.shape[1], y.shape[1])
    for r in ranks:
        if r <= limit:
            low = LinearMap.fit(x[train], y[train], "low_rank", rank=r, ridge=ridge, source=source, target=target)
            rank_r2[r] = low.score(x[test], y[test]).r2
            if r == max(k for k in ranks if k <= limit):
                fits[f"low_rank_{r}"] = low
    for name, fitted in fits.items():
        held[name] = fitted.score(x[test], y[test])
        in_sample[name] = fitted.train_r2
    return DirectionScores(source, target, held, in_sample, ridge, rank_r2)


def cross_model_scores(a: torch.Tensor, b: torch.Tensor, *, names: tuple[str, str] = ("a", "b"), groups=None,
                       test: float = 0.3, seed: int = 0, ranks: Sequence[int] = DEFAULT_RANKS) -> CrossModelScores:
    """Fit affine, scaled-orthogonal and low-rank maps ``a → b`` and ``b → a`` on one split of the rows.

    Rows of ``a`` and ``b`` are two models' vectors for the same inputs; ``groups`` keeps related inputs
    (e.g. statements about one subject) on one side of the split.
    """
    a64, b64 = paired(a, b, min_rows=4)
    if groups is not None and len(groups) != len(a64):
        raise ShapeError(f"{len(groups)} group keys for {len(a64)} rows")
    train, held = split_rows(len(a64), test, seed=seed, groups=groups)
    forward = _one_direction(a64.float(), b64.float(), train, held, names[0], names[1], ranks, seed, groups)
    backward = _one_direction(b64.float(), a64.float(), train, held, names[1], names[0], ranks, seed, groups)
    return CrossModelScores(forward, backward, len(train), len(held))
