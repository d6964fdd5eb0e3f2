"""Binary linear probes, fitted on many layers at once.

Both fitters accept ``x`` as ``[n, d]`` or ``[layers, n, d]`` and return weights ``[.., d]`` and
biases ``[..]`` in the units of the raw activations, so a probe's weight is a direction that the
write levers can use directly.

* Logistic regression with an L2 penalty, solved by L-BFGS on standardised features (activations of
  language models have a few huge dimensions; standardising makes one penalty fit every layer).
  The penalty is ``l2 * ||w||^2 / 2`` on the mean log-loss, i.e. scikit-learn's ``C = 1 / (n * l2)``.
* Mass-mean (arXiv 2310.06824): the direction between class means, thresholded half-way; with
  ``whiten=True`` the direction is premultiplied by the inverse pooled within-class covariance
  (Fisher's linear discriminant), which the paper uses for in-distribution evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.artifact import Artifact
from ..core.errors import EmptyDataError, ShapeError
from ..core.linalg import spd_solve


@dataclass(frozen=True)
class LinearProbe(Artifact):
    """``predict(x) = x @ weight + bias > 0``. ``weight`` is ``[d]``, ``bias`` a 0-d tensor."""

    kind = "linear-probe"
    weight: torch.Tensor
    bias: torch.Tensor

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ShapeError(f"probe expects {self.weight.shape[0]} features, got {x.shape[-1]}")
        return x.to(self.weight.dtype) @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.decision(x) > 0

    def score(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(x) == y.bool()).double().mean())


def _prepare(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    squeeze = x.dim() == 2
    if squeeze:
        x = x[None]
    if x.dim() != 3:
        raise ShapeError(f"x must be [n, d] or [layers, n, d], got {tuple(x.shape)}")
    y = torch.as_tensor(y).reshape(-1)
    if y.shape[0] != x.shape[1]:
        raise ShapeError(f"x has {x.shape[1]} examples but y has {y.shape[0]} labels")
    if x.shape[1] == 0:
        raise EmptyDataError("no examples to fit a probe on")
    classes = torch.unique(y)
    if classes.numel() != 2:
        raise EmptyDataError(
            f"a binary probe needs examples of two classes, got {classes.numel()} ({classes.tolist()})"
        )
    return x.double(), (y == classes.max()).double(), squeeze


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3, max_iter: int = 500,
                 tol: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[.., d]`` and biases ``[..]`` of L2-penalised logistic regression, per layer."""
    x, t, squeeze = _prepare(x, y)
    mean = x.mean(1, keepdim=True)
    std = x.std(1, keepdim=True).clamp_min(1e-8)
    z = (x - mean) / std
    layers, n, d = z.shape
    # With fewer examples than features the optimum lies in the span of the examples (representer
    # theorem): optimise n coefficients per layer instead of d, the same solution at a fraction of the cost.
    dual = n < d
    basis = z if dual else None
    kernel = z @ z.transpose(1, 2) if dual else None
    width = n if dual else d
    params = torch.zeros(layers, width + 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], lr=1, max_iter=max_iter, tolerance_grad=tol,
                                  tolerance_change=tol * 1e-3, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        coef = params[:, :width]
        if dual:
            scores = torch.einsum("lnm,lm->ln", kernel, coef)
            penalty = torch.einsum("ln,ln->", coef, scores)
        else:
            scores = torch.einsum("lnd,ld->ln", z, coef)
            penalty = (coef ** 2).sum()
        logits = scores + params[:, width:]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, t.expand(layers, n), reduction="none")
        total = loss.mean(1).sum() + 0.5 * l2 * penalty
        total.backward()
        return total

    with torch.enable_grad():
        optimizer.step(closure)
    coef, b_std = params.detach()[:, :width], params.detach()[:, width]
    w_std = torch.einsum("lnd,ln->ld", basis, coef) if dual else coef
    weight = w_std / std[:, 0]
    bias = b_std - (weight * mean[:, 0]).sum(-1)
    return (weight[0], bias[0]) if squeeze else (weight, bias)


def fit_mass_mean(x: torch.Tensor, y: torch.Tensor, *, whiten: bool = False,
                  shrinkage: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Difference of class means (optionally Fisher-whitened), thresholded half-way between them."""
    x, t, squeeze = _prepare(x, y)
    pos, neg = t.bool(), ~t.bool()
    mu_pos, mu_neg = x[:, pos].mean(1), x[:, neg].mean(1)
    direction = mu_pos - mu_neg
    if whiten:
        centred = torch.cat([x[:, pos] - mu_pos[:, None], x[:, neg] - mu_neg[:, None]], dim=1)
        cov = centred.transpose(1, 2) @ centred / max(centred.shape[1] - 2, 1)
        scale = cov.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None]  # per layer, so one shrinkage fits all
        direction = spd_solve(cov / scale, direction[..., None], shrinkage)[..., 0] / scale[..., 0]
    midpoint = 0.5 * (mu_pos + mu_neg)
    bias = -(direction * midpoint).sum(-1)
    return (direction[0], bias[0]) if squeeze else (direction, bias)


def accuracy(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy per layer of probes ``[.., d]`` on ``x`` (``[n, d]`` or ``[layers, n, d]``)."""
    x, t, squeeze = _prepare(x, y)
    weight = weight.double().reshape(-1, x.shape[-1])
    bias = bias.double().reshape(-1)
    predicted = torch.einsum("lnd,ld->ln", x, weight) + bias[:, None] > 0
    acc = (predicted == t.bool()).double().mean(1)
    return acc[0] if squeeze else acc
