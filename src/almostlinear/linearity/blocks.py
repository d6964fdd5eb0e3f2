"""Per-block linearity: affine maps from a sublayer's input to its output, for many layers at once.

:class:`PairMoments` keeps, for ``L`` layers at once, what an affine least-squares fit and its
score need and nothing more: means, ``sum (x - mx)(x - mx)^T``, ``sum (x - mx)(y - my)^T`` and the
total ``sum ||y - my||^2``. The full output covariance, which :class:`~almostlinear.core.stats.
RunningMoments` also keeps, is never needed for R^2 and would cost a third more per token.
Batches are merged with the parallel update of Chan, Golub and LeVeque in float64.

The score is held-out R^2 = 1 - SSE / SST summed over output features, the "linear
recoverability" of arXiv 2606.19379 (there for MLPs; here for attention too).

Angular distance between layers (arXiv 2403.17887): ``arccos(cos(h_l, h_{l+n})) / pi``,
averaged over texts at their last token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, NonFiniteError, ShapeError
from ..core.linalg import spd_solve
from .affine import AffineFit

RIDGES = (1e-4, 1e-2, 1.0)  # relative to the mean input variance, as in the inter-layer section


@dataclass
class PairMoments:
    """Moments of pairs ``(x, y)`` for ``layers`` maps at once; ``update(x, y)`` with ``[layers, n, d]``."""

    layers: int
    dim_x: int
    dim_y: int
    batch_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        self.n = 0
        self.mean_x = torch.zeros(self.layers, self.dim_x, dtype=torch.float64)
        self.mean_y = torch.zeros(self.layers, self.dim_y, dtype=torch.float64)
        self.sxx = torch.zeros(self.layers, self.dim_x, self.dim_x, dtype=torch.float64)
        self.sxy = torch.zeros(self.layers, self.dim_x, self.dim_y, dtype=torch.float64)
        self.syy_trace = torch.zeros(self.layers, dtype=torch.float64)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> PairMoments:
        if x.dim() != 3 or x.shape[0] != self.layers or x.shape[2] != self.dim_x:
            raise ShapeError(f"x must be [{self.layers}, n, {self.dim_x}], got {tuple(x.shape)}")
        if y.dim() != 3 or y.shape[:2] != x.shape[:2] or y.shape[2] != self.dim_y:
            raise ShapeError(f"y must be [{self.layers}, {x.shape[1]}, {self.dim_y}], got {tuple(y.shape)}")
        m = x.shape[1]
        if m == 0:
            return self
        x = x.detach().to("cpu", self.batch_dtype)
        y = y.detach().to("cpu", self.batch_dtype)
        if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
            raise NonFiniteError("NaN or infinite activations: check the model's dtype and weights")
        mx, my = x.double().mean(1), y.double().mean(1)
        xc, yc = x - mx[:, None].to(x.dtype), y - my[:, None].to(y.dtype)
        xct = xc.transpose(1, 2)
        sxx, sxy = (xct @ xc).double(), (xct @ yc).double()
        syy = yc.double().square().sum((1, 2))
        total = self.n + m
        dx, dy = mx - self.mean_x, my - self.mean_y
        w = self.n * m / total
        self.sxx += sxx + w * dx[:, :, None] * dx[:, None, :]
        self.sxy += sxy + w * dx[:, :, None] * dy[:, None, :]
        self.syy_trace += syy + w * dy.square().sum(1)
        self.mean_x += dx * (m / total)
        self.mean_y += dy * (m / total)
        self.n = total
        return self

    def merge(self, other: PairMoments) -> PairMoments:
        """A new object with the moments of both inputs' data."""
        if (self.layers, self.dim_x, self.dim_y) != (other.layers, other.dim_x, other.dim_y):
            raise ShapeError("cannot merge moments of different shapes")
        out = PairMoments(self.layers, self.dim_x, self.dim_y, self.batch_dtype)
        for part in (self, other):
            if part.n == 0:
                continue
            total = out.n + part.n
            dx, dy = part.mean_x - out.mean_x, part.mean_y - out.mean_y
            w = out.n * part.n / total
            out.sxx += part.sxx + w * dx[:, :, None] * dx[:, None, :]
            out.sxy += part.sxy + w * dx[:, :, None] * dy[:, None, :]
            out.syy_trace += part.syy_trace + w * dy.square().sum(1)
            out.mean_x += dx * (part.n / total)
            out.mean_y += dy * (part.n / total)
            out.n = total
        return out

    def fit(self, ridge: float | torch.Tensor = 0.0) -> list[AffineFit]:
        """Least-squares maps per layer, ridge relative to each layer's mean input variance."""
        if self.n < 2:
            raise EmptyDataError(f"need at least 2 samples to fit a map, have {self.n}")
        scale = self.sxx.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-300)  # per layer
        ridges = torch.as_tensor(ridge, dtype=torch.float64).reshape(-1).expand(self.layers)
        shift = torch.clamp(ridges, min=1e-9)[:, None, None] * torch.eye(self.dim_x, dtype=torch.float64)
        A = spd_solve(self.sxx / scale[:, None, None] + shift, self.sxy / scale[:, None, None], 0.0)
        lam = (ridges.clamp(min=1e-9) * scale / self.n).tolist()
        return [AffineFit(A[i], self.mean_x[i].clone(), self.mean_y[i].clone(), lam[i]) for i in range(self.layers)]

    def r2(self, fits: list[AffineFit]) -> torch.Tensor:
        """Per layer, the share of the total variance of ``y`` that ``fits`` explain on these data."""
        if self.n < 1:
            raise EmptyDataError("no samples to score on")
        A = torch.stack([f.A for f in fits])
        shift = (self.mean_y - torch.stack([f.y_mean for f in fits])) \
            - ((self.mean_x - torch.stack([f.x_mean for f in fits]))[:, None, :] @ A)[:, 0]
        sse = self.syy_trace - 2 * (A * self.sxy).sum((1, 2)) + (A * (self.sxx @ A)).sum((1, 2)) \
            + self.n * shift.square().sum(1)
        if bool((self.syy_trace <= 0).any()):
            raise EmptyDataError("an output has no variance on these data; R² is undefined")
        return 1 - sse.clamp_min(0) / self.syy_trace


def held_out_r2(train: PairMoments, val: PairMoments, test: PairMoments, ridges=RIDGES
                ) -> tuple[torch.Tensor, list[AffineFit]]:
    """Pick the ridge per layer on ``val``, refit on train+val, score on ``test``.

    Returns R^2 per layer on ``test`` and the refitted maps.
    """
    scores = torch.stack([val.r2(train.fit(r)) for r in ridges])  # [ridges, layers]
    best = torch.tensor(ridges, dtype=torch.float64)[scores.argmax(0)]
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
