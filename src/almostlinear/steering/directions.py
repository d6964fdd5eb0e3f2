"""Steering directions from contrast activations: plain tensor maths, no model code.

Every extractor receives the activations of the positive and negative member of each pair,
``pos`` and ``neg`` ``[n_pairs, d]``, and returns a direction ``[d]`` oriented so that the mean
difference ``pos - neg`` projects positively on it (a sign convention that makes PCA repeatable;
arXiv 2502.02716 and the repeng sign-vote both orient by the labelled data).

* ``mean_diff``: the mean of ``pos - neg`` (CAA, arXiv 2312.06681; with one pair, a one-position
  form of ActAdd, arXiv 2308.10248). Keeps its norm.
* ``pca``: first principal component of the differences *centred* on their mean: the main axis of
  how the differences vary around the mean difference, which is not the mean difference itself
  (the behaviour of PCA libraries that centre their input). Unit norm.
* ``pca_uncentred``: first right singular vector of the raw differences, the axis of largest
  ``E[(delta . v)^2]``; close to the mean difference when pairs agree. Unit norm.
* ``probe``: the weight of an L2-penalised logistic regression separating ``pos`` from ``neg``.
  Unit norm.

The PCA variants are solved exactly (``eigh`` of the smaller Gram matrix, float64) or, with
``solver="randomized"``, by a seeded randomized SVD, so two runs give the same vector.
"""

from __future__ import annotations

import torch

from ..core.errors import EmptyDataError, NonFiniteError, ShapeError, check_choice
from .choices import METHODS, SOLVERS


def check_pairs(pos: torch.Tensor, neg: torch.Tensor) -> None:
    """Shapes agree, at least one pair, finite values, and the two sides are not identical."""
    if pos.dim() != 2 or pos.shape != neg.shape:
        raise ShapeError(f"expected pos and neg as [n_pairs, d] of one shape, got {tuple(pos.shape)} and "
                         f"{tuple(neg.shape)}")
    if pos.shape[0] == 0:
        raise EmptyDataError("no contrast pairs: pass at least one (positive, negative) pair")
    if not (torch.isfinite(pos).all() and torch.isfinite(neg).all()):
        raise NonFiniteError("contrast activations contain NaN or infinite values")
    if bool((pos == neg).all()):
        raise EmptyDataError("every pair has identical positive and negative activations: the pair set is "
                             "one-sided and defines no direction")


def _orient(direction: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Flip ``direction`` so the mean difference projects non-negatively (ties: largest entry > 0)."""
    score = float(delta.mean(0) @ direction)
    if score == 0.0:
        score = float(direction[direction.abs().argmax()])
    return direction if score >= 0 else -direction


def _top_component(rows: torch.Tensor, solver: str, seed: int) -> torch.Tensor:
    """Unit top right singular vector of ``rows`` ``[n, d]`` (float64 in, float64 out)."""
    check_choice(solver, SOLVERS, "solver")
    if solver == "exact":
        n, d = rows.shape
        if n <= d:  # Gram trick: the top eigenvector u of R R^T gives v = R^T u
            _, vecs = torch.linalg.eigh(rows @ rows.T)
            v = rows.T @ vecs[:, -1]
        else:
            _, vecs = torch.linalg.eigh(rows.T @ rows)
            v = vecs[:, -1]
        return v / v.norm().clamp_min(1e-300)
    q = min(6, *rows.shape)  # randomized
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, _, v = torch.svd_lowrank(rows, q=q, niter=6, M=None)
    return v[:, 0] / v[:, 0].norm().clamp_min(1e-300)


def extract(pos: torch.Tensor, neg: torch.Tensor, method: str = "mean_diff", *, solver: str = "exact",
            seed: int = 0, l2: float = 1e-2) -> torch.Tensor:
    """The steering direction ``[d]`` (float32) of ``method`` from paired activations."""
    check_choice(method, METHODS, "method")
    pos, neg = torch.as_tensor(pos), torch.as_tensor(neg)
    check_pairs(pos, neg)
    delta = (pos.double() - neg.double())
    if method == "mean_diff":
        return delta.mean(0).float()
    if method in ("pca", "pca_uncentred"):
        rows = delta - delta.mean(0) if method == "pca" else delta
        if rows.shape[0] < 2 and method == "pca":
            raise EmptyDataError("centred PCA needs at least two pairs (one centred difference is zero)")
        if not bool(rows.abs().max() > 0):
            raise EmptyDataError("all pair differences are equal, so the centred differences are zero and PCA "
                                 "finds no direction; use method='mean_diff'")
        return _orient(_top_component(rows, solver, seed), delta).float()
    from ..probes.linear import fit_linear  # probe; the probe family owns logistic regression

    x = torch.cat([pos, neg]).float()
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    weight, _ = fit_linear(x, y, method="logistic", l2=l2)
    weight = weight.double()
    return _orient(weight / weight.norm().clamp_min(1e-300), delta).float()


def projection_spread(x: torch.Tensor, direction: torch.Tensor) -> float:
    """Standard deviation of ``x`` ``[n, d]`` along the unit ``direction`` (ITI's unit, arXiv 2306.03341)."""
    unit = direction.double() / direction.double().norm().clamp_min(1e-300)
    proj = x.double() @ unit
    return float(proj.std()) if proj.numel() > 1 else 0.0
