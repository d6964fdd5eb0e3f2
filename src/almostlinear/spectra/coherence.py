"""A number for "these tokens belong together": mean pairwise cosine of their input embeddings.

A raw cosine means little on its own (embeddings share a common direction, so even random tokens
have positive cosines: 0.44 on average for SmolLM2-135M), so each score is set against the same
statistic for random token sets of the same size, drawn uniformly from the vocabulary without
repeats: ``z = (score − mean) / std`` and ``ratio = score / mean``. ``center=True`` removes the mean
embedding first; the shared component then no longer swamps the cosines (measured on SmolLM2-135M,
eight colour words: z = 1.2 raw, 30 centred; random sets: mean cosine 0.44 raw, 0.0004 centred),
and the ratio loses its meaning (its denominator is ~0).

For unit rows ``eᵢ``, ``Σ_{i≠j} cos(eᵢ, eⱼ) = ‖Σᵢ eᵢ‖² − k``, so a set's score costs one sum of ``k``
rows; the 2,000 random sets of a baseline cost well under a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.errors import NonFiniteError, ShapeError


@dataclass(frozen=True)
class Coherence:
    score: float  # mean pairwise cosine of the token list
    baseline_mean: float  # the same for random token sets of the same size
    baseline_std: float
    size: int

    @property
    def z_score(self) -> float:
        return (self.score - self.baseline_mean) / self.baseline_std if self.baseline_std > 0 else float("nan")

    @property
    def ratio(self) -> float:
        return self.score / self.baseline_mean if self.baseline_mean != 0 else float("nan")


def mean_pairwise_cosine(embeddings: torch.Tensor, token_ids: torch.Tensor,
                         shift: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cosine over the ``k(k−1)/2`` pairs of each row of ``token_ids [.., k]``, in float64.

    ``shift`` (e.g. the mean embedding) is subtracted from every row first. Repeated ids count as
    separate tokens (a list of one token repeated scores 1). Rows of zero norm count as orthogonal
    to everything.
    """
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    if embeddings.dim() != 2:
        raise ShapeError(f"expected embeddings [vocab, d], got shape {tuple(embeddings.shape)}")
    if ids.dim() == 0 or ids.shape[-1] < 2:
        raise ShapeError("coherence needs at least two tokens per list")
    if ids.numel() and (ids.min() < 0 or ids.max() >= embeddings.shape[0]):
        raise ShapeError(f"token ids must lie in 0..{embeddings.shape[0] - 1}")
    rows = embeddings.detach()[ids.to(embeddings.device)].double()
    if shift is not None:
        rows = rows - shift.to(rows)
    if not torch.isfinite(rows).all():
        raise NonFiniteError("the embeddings of these tokens contain NaN or infinite values")
    norms = rows.norm(dim=-1, keepdim=True)
    unit = torch.where(norms > 0, rows / norms.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    k = ids.shape[-1]
    present = (norms[..., 0] > 0).double().sum(-1)  # a zero row contributes no self-similarity
    return ((unit.sum(-2).pow(2).sum(-1) - present) / (k * (k - 1))).cpu()


class CoherenceScorer:
    """Scores token lists against a cached random-set baseline per list size (seeded, reproducible)."""

    def __init__(self, embeddings: torch.Tensor, n_random_sets: int = 2000, seed: int = 0,
                 center: bool = False) -> None:
        if embeddings.dim() != 2 or embeddings.shape[0] < 2:
            raise ShapeError(f"expected embeddings [vocab ≥ 2, d], got shape {tuple(embeddings.shape)}")
        if n_random_sets < 2:
            raise ShapeError(f"the baseline needs at least two random sets, got n_random_sets={n_random_sets}")
        self.embeddings = embeddings.detach()
        # the mean embedding, removed before every cosine when ``center``; float64 sum, no copy of the matrix
        self.shift = self.embeddings.sum(0, dtype=torch.float64) / len(self.embeddings) if center else None
        self.n_random_sets = n_random_sets
        self.seed = seed
        self._baselines: dict[int, tuple[float, float]] = {}

    def random_sets(self, size: int) -> torch.Tensor:
        """``[n_random_sets, size]`` ids, uniform over the vocabulary and distinct within each set.

        Draws with replacement and redraws the rare sets with a repeat; for sizes close to the
        vocabulary, where repeats are common, falls back to the top ``size`` of random keys.
        """
        vocab = self.embeddings.shape[0]
        if not 2 <= size <= vocab:
            raise ShapeError(f"a token list must have between 2 and {vocab} tokens, got {size}")
        generator = torch.Generator().manual_seed(self.seed + size)
        sets = torch.randint(vocab, (self.n_random_sets, size), generator=generator)
        for _ in range(20):
            ordered = sets.sort(-1).values
            repeated = (ordered[:, 1:] == ordered[:, :-1]).any(-1)
            if not repeated.any():
                return sets
            sets[repeated] = torch.randint(vocab, (int(repeated.sum()), size), generator=generator)
        for row in repeated.nonzero()[:, 0].tolist():
            sets[row] = torch.randperm(vocab, generator=generator)[:size]
        return sets

    def baseline(self, size: int) -> tuple[float, float]:
        """Mean and standard deviation of the score of random token sets of ``size`` tokens."""
        if size not in self._baselines:
            scores = mean_pairwise_cosine(self.embeddings, self.random_sets(size), self.shift)
            self._baselines[size] = (float(scores.mean()), float(scores.std()))
        return self._baselines[size]

    def score_many(self, token_ids: torch.Tensor) -> list[Coherence]:
        """One :class:`Coherence` per row of ``token_ids [n, k]``."""
        ids = torch.as_tensor(token_ids, dtype=torch.long)
        if ids.dim() != 2:
            raise ShapeError(f"expected token ids [n, k], got shape {tuple(ids.shape)}")
        mean, std = self.baseline(ids.shape[1])
        scores = mean_pairwise_cosine(self.embeddings, ids, self.shift)
        return [Coherence(float(s), mean, std, ids.shape[1]) for s in scores]

    def score(self, token_ids) -> Coherence:
        """Coherence of one token list."""
        return self.score_many(torch.as_tensor(token_ids, dtype=torch.long)[None])[0]


def auc_greater(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(P(X > Y) + P(X = Y)/2, p)`` from two samples: the Mann–Whitney U over ``n_x·n_y`` (the ROC AUC).

    ``p`` is the one-sided p-value that ``X`` tends to exceed ``Y`` (normal approximation, no tie
    correction, so slightly conservative when there are many ties).
    """
    x, y = torch.as_tensor(x).double().flatten(), torch.as_tensor(y).double().flatten()
    if x.numel() == 0 or y.numel() == 0:
        raise ShapeError("both samples need at least one value")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise NonFiniteError("the samples contain NaN or infinite values")
    n_x, n_y = x.numel(), y.numel()
    ranks = _average_ranks(torch.cat([x, y]))
    u = float(ranks[:n_x].sum()) - n_x * (n_x + 1) / 2
    u_std = math.sqrt(n_x * n_y * (n_x + n_y + 1) / 12)  # under 'no difference'
    p_value = 0.5 * math.erfc((u - n_x * n_y / 2) / u_std / math.sqrt(2))
    return u / (n_x * n_y), p_value


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    order = values.argsort()
    ordered = values[order]
    ranks = torch.empty_like(values)
    _, inverse, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2  # average of the tied positions
    ranks[order] = mean_rank[inverse]
    return ranks
