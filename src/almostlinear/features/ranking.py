"""Which single units carry a labelled concept? The "sentiment neuron" search of arXiv 1704.01444.

Given activations ``[n, d]`` (neurons, residual coordinates or SAE latents) and binary labels, every
unit is scored by its AUROC (how well thresholding that unit alone separates the classes; 0.5 is
chance, 0 or 1 perfect, below 0.5 the unit reads the concept with a minus sign) and by its
point-biserial correlation with the label. Ranked by ``|AUROC - 0.5|``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, NonFiniteError, ShapeError


def _check(x: torch.Tensor, labels) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x)
    y = torch.as_tensor(labels)
    if x.dim() != 2:
        raise ShapeError(f"activations must be [n, units], got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ShapeError(f"need one label per row: {x.shape[0]} rows, labels of shape {tuple(y.shape)}")
    y = y.bool() if y.dtype == torch.bool else y.long()
    if y.dtype != torch.bool and not bool(((y == 0) | (y == 1)).all()):
        raise ShapeError("labels must be 0/1 or booleans")
    y = y.bool()
    if int(y.sum()) == 0 or int((~y).sum()) == 0:
        raise EmptyDataError("both classes must be present to rank units")
    if not torch.isfinite(x).all():
        raise NonFiniteError("the activations contain NaN or infinite values")
    return x.double(), y


def auroc(x: torch.Tensor, labels) -> torch.Tensor:
    """AUROC of every column of ``x`` ``[n, units]`` as a score for ``labels`` (ties count one half).

    From the rank-sum (Mann-Whitney) identity with tied values given their average rank.
    """
    x, y = _check(x, labels)
    columns = x.T.contiguous()  # [units, n]
    ordered = columns.sort(-1).values
    below = torch.searchsorted(ordered, columns, right=False)
    upto = torch.searchsorted(ordered, columns, right=True)
    ranks = (below + upto + 1).double() / 2  # 1-based average ranks
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    rank_sum = ranks[:, y].sum(-1)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def point_biserial(x: torch.Tensor, labels) -> torch.Tensor:
    """Pearson correlation of each column with the 0/1 label (0 for a constant column)."""
    x, y = _check(x, labels)
    t = y.double()
    xc, tc = x - x.mean(0), t - t.mean()
    denominator = xc.norm(dim=0) * tc.norm()
    return torch.where(denominator > 0, (xc * tc[:, None]).sum(0) / denominator.clamp_min(1e-300), 0.0)


@dataclass(frozen=True)
class UnitRanking:
    """Units ordered by how well each alone carries the concept (strongest first)."""

    order: torch.Tensor  # [units], unit indices
    auroc: torch.Tensor  # [units], per unit (original order)
    correlation: torch.Tensor  # [units], per unit (original order)

    def top(self, k: int) -> torch.Tensor:
        return self.order[:k]

    @property
    def best(self) -> int:
        return int(self.order[0])

    def sign(self, unit: int) -> int:
        """+1 when the unit is larger for the positive class, -1 otherwise."""
        return 1 if float(self.auroc[unit]) >= 0.5 else -1

    def table(self, k: int = 10) -> list[dict]:
        return [{"unit": int(u), "auroc": float(self.auroc[u]), "correlation": float(self.correlation[u])}
                for u in self.order[:k]]


def rank_units(x: torch.Tensor, labels) -> UnitRanking:
    """Rank the columns of ``x`` by ``|AUROC - 0.5|`` (ties broken by ``|correlation|``)."""
    scores = auroc(x, labels)
    correlation = point_biserial(x, labels)
    # lexicographic: AUROC strength first, then |correlation|
    by_correlation = torch.argsort(correlation.abs(), descending=True, stable=True)
    by_auroc = torch.argsort((scores - 0.5).abs()[by_correlation], descending=True, stable=True)
    order = by_correlation[by_auroc]
    return UnitRanking(order=order, auroc=scores.float(), correlation=correlation.float())
