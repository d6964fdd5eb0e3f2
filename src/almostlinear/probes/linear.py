"""Binary linear probes, fitted on many layers at once.

Every fitter accepts ``x`` as ``[n, d]`` or ``[layers, n, d]`` and returns weights ``[.., d]`` and
biases ``[..]`` in the units of the raw activations, so a probe's weight is a direction that the
write levers can use directly. Multi-class probing is not offered: one binary probe per class
serves the read levers here.

* Logistic regression with an L2 penalty (:mod:`.logistic`), on standardised features (activations
  of language models have a few huge dimensions; standardising makes one penalty fit every layer).
  The penalty is ``l2 * ||w||^2 / 2`` on the mean log-loss, i.e. scikit-learn's ``C = 1 / (n * l2)``.
* Ridge regression on +-1 targets, closed form: the minimiser of half the mean squared error plus
  ``l2 * ||w||^2 / 2``, i.e. scikit-learn's ``RidgeClassifier(alpha=n * l2)``. Solved in the primal
  (``d x d``) or, with fewer examples than features, in the dual (``n x n``).
* Mass-mean (arXiv 2310.06824): the direction between class means, thresholded half-way; with
  ``whiten=True`` the direction is premultiplied by the inverse pooled within-class covariance
  (Fisher's linear discriminant), which the paper uses for in-distribution evaluation.
"""

from __future__ import annotations

import torch

from ..core.errors import ShapeError, check_choice
from ..core.linalg import spd_solve
from ._data import as_layers, standardize, to_raw_units
from .logistic import fit_logistic

METHODS = ("logistic", "ridge", "mass_mean", "mass_mean_whitened")


def penalised(method: str) -> bool:
    """Whether ``method`` takes an L2 penalty."""
    return method in ("logistic", "ridge")


def fit_linear(x: torch.Tensor, y, *, method: str = "logistic", l2: float | torch.Tensor = 1e-2
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to the fitter named ``method``; ``l2`` is ignored by the mass-mean methods."""
    check_choice(method, METHODS, "probe method")
    if method == "logistic":
        return fit_logistic(x, y, l2=l2)
    if method == "ridge":
        return fit_ridge(x, y, l2=l2)
    if method == "mass_mean":
        return fit_mass_mean(x, y)
    return fit_mass_mean(x, y, whiten=True)


def fit_ridge(x: torch.Tensor, y, *, l2: float | torch.Tensor = 1e-2, standardize_features: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge classifier per layer (targets +-1, intercept unpenalised)."""
    x, t, squeeze = as_layers(x, y)
    layers, n, d = x.shape
    if standardize_features:
        z, mean, std = standardize(x)
    else:
        mean = x.mean(1, keepdim=True)
        z, std = x - mean, torch.ones_like(mean)
    target = 2 * t - 1
    t_mean = target.mean().expand(layers)
    tc = (target - target.mean()).expand(layers, n)[..., None]
    lam = torch.as_tensor(l2, dtype=torch.float64).reshape(-1).expand(layers)
    if bool((lam < 0).any()):
        raise ShapeError(f"l2 must be non-negative, got {l2!r}")
    # Each layer has its own l2: fold it into the matrix so one batched solve serves all layers.
    eye = torch.eye(min(n, d), dtype=torch.float64)
    if n >= d:  # primal: (Z^T Z / n + l2 I) w = Z^T t / n
        matrix = z.transpose(1, 2) @ z / n + lam[:, None, None] * eye
        w = spd_solve(matrix, z.transpose(1, 2) @ tc / n, 0.0)[..., 0]
    else:  # dual: w = Z^T (Z Z^T / n + l2 I)^-1 t / n
        matrix = z @ z.transpose(1, 2) / n + lam[:, None, None] * eye
        w = (z.transpose(1, 2) @ spd_solve(matrix, tc, 0.0))[..., 0] / n
    weight, bias = to_raw_units(w, t_mean, mean, std)
    return (weight[0], bias[0]) if squeeze else (weight, bias)


def fit_mass_mean(x: torch.Tensor, y, *, whiten: bool = False,
                  shrinkage: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Difference of class means (optionally Fisher-whitened), thresholded half-way between them."""
    x, t, squeeze = as_layers(x, y)
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


def accuracy(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y) -> torch.Tensor:
    """Accuracy per layer of probes ``[.., d]`` on ``x`` (``[n, d]`` or ``[layers, n, d]``).

    ``y`` holds booleans or 0/1; unlike the fitters, a test set may hold a single class.
    """
    x = torch.as_tensor(x)
    squeeze = x.dim() == 2
    x3 = x[None] if squeeze else x
    if x3.dim() != 3:
        raise ShapeError(f"x must be [n, d] or [layers, n, d], got {tuple(x.shape)}")
    y = torch.as_tensor(y).reshape(-1)
    if y.shape[0] != x3.shape[1]:
        raise ShapeError(f"x has {x3.shape[1]} examples but y has {y.shape[0]} labels")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ShapeError("accuracy needs labels that are booleans or 0/1")
    weight = weight.double().reshape(-1, x3.shape[-1])
    bias = bias.double().reshape(-1)
    if weight.shape[0] != x3.shape[0]:
        raise ShapeError(f"{weight.shape[0]} probes for {x3.shape[0]} layers of activations")
    truth = y.bool()
    acc = torch.stack([((x3[i].double() @ weight[i] + bias[i] > 0) == truth).double().mean()
                       for i in range(x3.shape[0])])
    return acc[0] if squeeze else acc
