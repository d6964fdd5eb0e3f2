"""Linear encoding models: how much of ``y`` does a ridge map from ``x`` predict on held-out data?

Unlike CKA or CCA this is directional (``x`` predicts ``y``) and scored out of sample, which is the
honest way to ask whether one representation linearly contains another. The split is by group
(for tokens: by text), so neighbouring tokens of one text never sit on both sides. The fit and the
score come from float64 moments (:mod:`almostlinear.linearity.affine`), so ``n`` may be large.
The score is the share of ``y``'s total held-out variance explained, summed over its dimensions
(scikit-learn's ``r2_score(..., multioutput="variance_weighted")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, ShapeError
from ..core.stats import RunningMoments
from ..linearity.affine import affine_r2, fit_affine
from ._inputs import check_mask, paired


@dataclass(frozen=True)
class EncodingScore:
    """Held-out and in-sample R² of the ridge map ``x → y``, the ridge chosen, and the split sizes."""

    held_out_r2: float
    in_sample_r2: float
    ridge: float
    n_train: int
    n_test: int


def group_split(groups: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean train and test row masks; each group goes wholly to one side."""
    if not 0.0 < test_fraction < 1.0:
        raise ShapeError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    unique, inverse = torch.unique(groups, return_inverse=True)
    if unique.numel() < 2:
        raise EmptyDataError(f"a held-out split needs at least 2 groups, got {unique.numel()}")
    order = torch.randperm(unique.numel(), generator=torch.Generator().manual_seed(seed))
    n_test = min(max(1, round(test_fraction * unique.numel())), unique.numel() - 1)
    is_test_group = torch.zeros(unique.numel(), dtype=torch.bool)
    is_test_group[order[:n_test]] = True
    test = is_test_group[inverse]
    return ~test, test


def _moments(x: torch.Tensor, y: torch.Tensor) -> RunningMoments:
    return RunningMoments(x.shape[1], y.shape[1]).update(x, y)


def encoding_r2(x: torch.Tensor, y: torch.Tensor, *, groups: torch.Tensor | None = None,
                test_fraction: float = 0.25, ridge: float | Sequence[float] = 1e-2, seed: int = 0,
                mask: torch.Tensor | None = None) -> EncodingScore:
    """Fit ``y ≈ x A + b`` by ridge on a train split and score R² on the held-out split.

    ``groups`` ``[n]`` (e.g. each token's text index) keeps a group on one side of the split;
    without it rows are split one by one. ``ridge`` is relative to the mean variance of ``x``;
    given several, the best is chosen on a validation split of the training groups, then refitted
    on all training rows.
    """
    n = x.shape[0]
    groups = torch.arange(n) if groups is None else torch.as_tensor(groups).reshape(-1)
    if groups.shape[0] != n:
        raise ShapeError(f"groups must have one entry per example ({n}), got {groups.shape[0]}")
    if mask is not None:
        groups = groups[check_mask(mask, n)]
    x, y = paired(x, y, mask=mask, minimum=4)
    train, test = group_split(groups, test_fraction, seed)
    if int(train.sum()) < 2 or int(test.sum()) < 2:
        raise EmptyDataError(f"the split left {int(train.sum())} train and {int(test.sum())} test rows; need 2 each")
    ridges = [float(ridge)] if isinstance(ridge, (int, float)) else [float(r) for r in ridge]
    if not ridges or any(r < 0 for r in ridges):
        raise ShapeError(f"ridge must be a non-negative number or a non-empty list of them, got {ridge!r}")
    best = ridges[0]
    if len(ridges) > 1:
        fit_rows, val_rows = group_split(groups[train], test_fraction, seed + 1)
        xt, yt = x[train], y[train]
        fit_m, val_m = _moments(xt[fit_rows], yt[fit_rows]), _moments(xt[val_rows], yt[val_rows])
        best = max(ridges, key=lambda r: affine_r2(fit_affine(fit_m, ridge=r), val_m))
    train_m, test_m = _moments(x[train], y[train]), _moments(x[test], y[test])
    fit = fit_affine(train_m, ridge=best)
    return EncodingScore(affine_r2(fit, test_m), affine_r2(fit, train_m), best, int(train.sum()), int(test.sum()))
