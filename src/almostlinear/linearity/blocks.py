"""Per-block linearity: affine maps from a sublayer's input to its output, for many layers at once.

:class:`PairMoments` is :class:`~almostlinear.core.stats.RunningMoments` with a leading layer axis
that keeps, per layer, what an affine least-squares fit and its score need and nothing more: means,
``sum (x - mx)(x - mx)^T``, ``sum (x - mx)(y - my)^T`` and the total ``sum ||y - my||^2`` (the full
output covariance is never needed for R² and would cost a third more per token).

The score is held-out R^2 = 1 - SSE / SST summed over output features, the "linear
recoverability" of arXiv 2606.19379 (there for MLPs; here for attention too).

Angular distance between layers (arXiv 2403.17887): ``arccos(cos(h_l, h_{l+n})) / pi``,
averaged over texts at their last token.
"""

from __future__ import annotations

import math

import torch

from ..core.errors import EmptyDataError, ShapeError
from ..core.linalg import spd_solve
from ..core.stats import RunningMoments
from .affine import AffineFit

RIDGES = (1e-4, 1e-2, 1.0)  # relative to the mean input variance, as in the inter-layer section


class PairMoments(RunningMoments):
    """Moments of pairs ``(x, y)`` for ``layers`` maps at once; ``update(x, y)`` with ``[layers, n, d]``.

    ``syy_`` holds the per-layer total ``sum ||y - my||^2``; ``merge`` and ``copy`` keep the class.
    """

    def __init__(self, layers: int, dim_x: int, dim_y: int, batch_dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__(dim_x, dim_y, batch_dtype=batch_dtype, maps=layers, y_trace_only=True, device=device)

    @property
    def layers(self) -> int:
        return self.maps

    def fit(self, ridge: float | torch.Tensor = 0.0) -> list[AffineFit]:
        """Least-squares maps per layer, ridge relative to each layer's mean input variance."""
        if self.n < 2:
            raise EmptyDataError(f"need at least 2 samples to fit a map, have {self.n}")
        scale = self.sxx_.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-300)  # per layer
        device = self.sxx_.device
        ridges = torch.as_tensor(ridge, dtype=torch.float64).to(device).reshape(-1).expand(self.layers)
        shift = torch.clamp(ridges, min=1e-9)[:, None, None] * torch.eye(self.dim_x, dtype=torch.float64, device=device)
        A = spd_solve(self.sxx_ / scale[:, None, None] + shift, self.sxy_ / scale[:, None, None], 0.0)
        lam = (ridges.clamp(min=1e-9) * scale / self.n).tolist()
        return [AffineFit(A[i], self.mean_x[i].clone(), self.mean_y[i].clone(), lam[i]) for i in range(self.layers)]

    def r2(self, fits: list[AffineFit]) -> torch.Tensor:
        """Per layer, the share of the total variance of ``y`` that ``fits`` explain on these data."""
        if self.n < 1:
            raise EmptyDataError("no samples to score on")
        A = torch.stack([f.A for f in fits])
        shift = (self.mean_y - torch.stack([f.y_mean for f in fits])) \
            - ((self.mean_x - torch.stack([f.x_mean for f in fits]))[:, None, :] @ A)[:, 0]
        sse = self.syy_ - 2 * (A * self.sxy_).sum((1, 2)) + (A * (self.sxx_ @ A)).sum((1, 2)) \
            + self.n * shift.square().sum(1)
        if bool((self.syy_ <= 0).any()):
            raise EmptyDataError("an output has no variance on these data; R² is undefined")
        return 1 - sse.clamp_min(0) / self.syy_


def held_out_r2(train: PairMoments, val: PairMoments, test: PairMoments, ridges=RIDGES
                ) -> tuple[torch.Tensor, list[AffineFit]]:
    """Pick the ridge per layer on ``val``, refit on train+val, score on ``test``.

    Returns R^2 per layer on ``test`` and the refitted maps.
    """
    scores = torch.stack([val.r2(train.fit(r)) for r in ridges])  # [ridges, layers]
    best = torch.tensor(ridges, dtype=torch.float64, device=scores.device)[scores.argmax(0)]
    fits = train.merge(val).fit(best)
    return test.r2(fits), fits


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``arccos(cos(a, b)) / pi`` along the last dimension: 0 for parallel, 1 for opposite vectors.

    Computed as ``2 atan2(|u - v|, |u + v|)`` of the unit vectors, which is exact at 0 and pi,
    where ``arccos`` of a rounded cosine is not.
    """
    u = a.double() / a.double().norm(dim=-1, keepdim=True).clamp_min(1e-300)
    v = b.double() / b.double().norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return 2 * torch.atan2((u - v).norm(dim=-1), (u + v).norm(dim=-1)) / math.pi


def angular_distance_profile(states: torch.Tensor) -> torch.Tensor:
    """Mean angular distance between states ``l`` and ``l + n`` for all ``n``, ``l``.

    ``states`` is ``[S, texts, d]`` (e.g. the embeddings and each block's output at each text's
    last token). Returns ``[S - 1, S - 1]``: row ``n - 1``, column ``l``; NaN where ``l + n >= S``.
    """
    if states.dim() != 3 or states.shape[0] < 2:
        raise ShapeError(f"states must be [S >= 2, texts, d], got {tuple(states.shape)}")
    count = states.shape[0]
    out = torch.full((count - 1, count - 1), float("nan"), dtype=torch.float64)
    for shift in range(1, count):
        out[shift - 1, : count - shift] = angular_distance(states[:-shift], states[shift:]).mean(-1)
    return out
