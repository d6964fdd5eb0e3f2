"""Representational similarity analysis (RSA): compare the geometry of examples, not features.

Each representation gives a representational dissimilarity matrix (RDM) over its ``n`` examples,
``1 - Pearson correlation`` between the examples' activation vectors or their Euclidean distance
(Kriegeskorte et al., 2008); two representations are compared by the rank (Spearman) or Pearson
correlation of their RDMs' upper triangles. Memory and time grow with ``n²``: RSA is meant for a
few hundred to a few thousand examples (stimuli, prompts), not for every token of a corpus.
"""

from __future__ import annotations

import torch

from ..core.errors import EmptyDataError, ShapeError, check_choice
from ._inputs import as_rows, check_mask

METRICS = ("correlation", "euclidean")
COMPARISONS = ("spearman", "pearson")


def rdm(x: torch.Tensor, *, metric: str = "correlation", mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[n, n]`` dissimilarities between the rows of ``x`` (float64, zero diagonal)."""
    check_choice(metric, METRICS, "RDM metric")
    x = as_rows(x, mask=mask)
    if metric == "euclidean":
        return torch.cdist(x, x).fill_diagonal_(0.0)
    rows = x - x.mean(1, keepdim=True)
    norms = torch.linalg.vector_norm(rows, dim=1)
    if bool((norms == 0).any()):
        raise EmptyDataError("an example's activations are constant across features: its correlation "
                             "with the others is undefined; use metric='euclidean'")
    rows = rows / norms[:, None]
    return (1.0 - rows @ rows.T).fill_diagonal_(0.0)


def upper_triangle(matrix: torch.Tensor) -> torch.Tensor:
    """Entries above the diagonal, row by row (SciPy's ``squareform`` order)."""
    n = matrix.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    return matrix[i, j]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks from 1, ties sharing their mean rank (as ``scipy.stats.rankdata``)."""
    unique, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    return (ends - (counts - 1) / 2.0)[inverse]


def standardised(values: torch.Tensor) -> torch.Tensor:
    """Unit-norm, zero-mean copy, so that a dot product of two is their Pearson correlation."""
    centred = values - values.mean()
    norm = torch.linalg.vector_norm(centred)
    if float(norm) == 0.0:
        raise EmptyDataError("the dissimilarities are all equal: their correlation is undefined")
    return centred / norm


def rdm_vector(x: torch.Tensor, metric: str, compare: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The standardised (and, for Spearman, ranked) upper triangle of ``x``'s RDM."""
    check_choice(compare, COMPARISONS, "RDM comparison")
    values = upper_triangle(rdm(x, metric=metric, mask=mask))
    if values.numel() < 2:
        raise EmptyDataError("RSA needs at least 3 examples (2 dissimilarities) to correlate")
    return standardised(average_ranks(values) if compare == "spearman" else values)


def rsa(x: torch.Tensor, y: torch.Tensor, *, metric: str = "correlation", compare: str = "spearman",
        mask: torch.Tensor | None = None) -> float:
    """Correlation between the RDMs of ``x`` ``[n, d_x]`` and ``y`` ``[n, d_y]``."""
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"x has {x.shape[0]} examples but y has {y.shape[0]}: both must describe the same examples")
    if mask is not None:
        check_mask(mask, x.shape[0])
    return float(rdm_vector(x, metric, compare, mask) @ rdm_vector(y, metric, compare, mask))
