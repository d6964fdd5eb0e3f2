"""Linear maps from one representation space to another, fitted on paired rows ``(x_i, y_i)``.

Three families, all closed form and in float64:

* affine (ridge): ``y ≈ x W + b``. The penalty is chosen on a validation part of the training rows
  from a grid of values relative to the mean eigenvalue of the centred ``xᵀx``; one eigendecomposition
  of that ``d × d`` Gram matrix serves every value on the grid.
* orthogonal (Procrustes): ``W`` has orthonormal rows or columns (a rotation when the widths
  agree), optionally times one scale. The best such ``W`` for centred data is ``U Vᵀ`` from the SVD
  ``xᵀy = U S Vᵀ``.
* low rank (reduced-rank ridge regression): the ridge solution projected onto the top ``r`` principal
  directions of its fitted values on the ridge-augmented data (``x`` stacked on ``√λ I``), which is the
  least-squares optimum of the penalised problem under a rank constraint (Mukherjee and Zhu 2011).

A map of LiMBeR's kind (arXiv 2209.15162: one linear layer from an image encoder into a language
model) is the affine family here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, NonFiniteError, ShapeError, check_choice
from ..core.linalg import spd_solve

DEFAULT_RIDGES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
METHODS = ("affine", "orthogonal", "low_rank")


@dataclass(frozen=True)
class Fitted:
    """``y ≈ x @ weight + bias`` and how it was chosen."""

    weight: torch.Tensor  # [dim_x, dim_y], float64
    bias: torch.Tensor  # [dim_y], float64
    method: str
    ridge: float | None = None  # relative penalty, for affine and low-rank maps
    rank: int | None = None
    scale: float | None = None  # for orthogonal maps
    validation_r2: dict[float, float] | None = None  # the ridge grid's scores on the validation rows


def paired(x: torch.Tensor, y: torch.Tensor, *, min_rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Check two ``[n, d]`` matrices of the same ``n`` with finite values; return float64 copies."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ShapeError("x and y must be torch tensors of shape [n_samples, width]")
    if x.dim() != 2 or y.dim() != 2:
        raise ShapeError(f"x and y must be 2-D [n_samples, width]; got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ShapeError(
            f"x has {x.shape[0]} samples but y has {y.shape[0]}: a map is fitted on paired rows, the "
            "representations of the same inputs in both spaces, so the sample counts must agree"
        )
    if x.shape[0] < min_rows:
        raise EmptyDataError(f"need at least {min_rows} paired samples, have {x.shape[0]}")
    x, y = x.detach().to(torch.float64), y.detach().to(torch.float64)
    for name, t in (("x", x), ("y", y)):
        if not torch.isfinite(t).all():
            raise NonFiniteError(f"{name} contains NaN or infinite values")
    return x, y


def r2_score(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``y``'s total variance (summed over columns) explained by ``pred``.

    Equal to scikit-learn's ``r2_score(..., multioutput="variance_weighted")``.
    """
    pred, y = paired(pred, y, min_rows=2)
    if pred.shape[1] != y.shape[1]:
        raise ShapeError(f"predictions are {pred.shape[1]} wide but targets {y.shape[1]}")
    sst = (y - y.mean(0)).square().sum()
    if sst <= 0:
        raise EmptyDataError("the targets have no variance, so R² is undefined")
    return float(1 - (y - pred).square().sum() / sst)


def retrieval_top1(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Share of rows whose prediction is closer (by cosine) to its own target than to any other row's.

    Chance is ``1 / n``. Both sides are centred on the targets' mean first, so a shared offset
    does not make every pair look alike.
    """
    pred, y = paired(pred, y, min_rows=2)
    centre = y.mean(0)
    p = torch.nn.functional.normalize(pred - centre, dim=1)
    t = torch.nn.functional.normalize(y - centre, dim=1)
    best = (p @ t.T).argmax(dim=1)
    return float((best == torch.arange(len(y))).double().mean())


def _centred(x: torch.Tensor, y: torch.Tensor):
    mx, my = x.mean(0), y.mean(0)
    return x - mx, y - my, mx, my


def _gram_eig(xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (clamped at 0) and eigenvectors of ``xcᵀ xc``: one ``d × d`` eigh serves every penalty.

    Cheaper than an SVD of the ``n × d`` matrix when ``n > d``, which is the usual case for maps
    fitted on tokens, and exact enough in float64.
    """
    e, v = torch.linalg.eigh(xc.T @ xc)
    return e.clamp_min(0), v


def _ridge_from_eig(e: torch.Tensor, v: torch.Tensor, xty: torch.Tensor, lam_abs: float) -> torch.Tensor:
    """``W = (xcᵀxc + λ I)⁻¹ xcᵀ yc``; with ``λ = 0`` the minimum-norm least-squares solution."""
    if lam_abs > 0:
        inverse = 1.0 / (e + lam_abs)
    else:
        keep = e > e.max() * 1e-12
        inverse = torch.where(keep, 1.0 / torch.where(keep, e, torch.ones_like(e)), torch.zeros_like(e))
    return v @ (inverse[:, None] * (v.T @ xty))


def _unit(e: torch.Tensor, n: int) -> float:
    """Mean eigenvalue of ``xcᵀxc`` over its possibly non-zero ones: the penalty unit, so that a relative
    ridge means the same for every scale and width (``n`` times the mean variance per direction)."""
    return float(e.sum() / max(min(n, len(e)), 1)) or 1.0


def _absolute_ridge(gram: torch.Tensor, ridge: float, n: int) -> float:
    """The penalty ``λ`` that a relative ``ridge`` means for this centred Gram matrix (see :func:`_unit`)."""
    if ridge <= 0:
        return 0.0
    return ridge * float(torch.trace(gram)) / max(min(n, gram.shape[0]), 1) or 1e-12


def fit_ridge(x: torch.Tensor, y: torch.Tensor, ridge: float) -> Fitted:
    """Ridge regression with intercept; ``ridge`` is relative to the mean eigenvalue of the centred ``xᵀx``
    over its ``min(n, d)`` possibly non-zero ones (so ``λ = ridge · trace / min(n, d)``)."""
    x, y = paired(x, y)
    if ridge < 0:
        raise ShapeError(f"ridge must be non-negative, got {ridge}")
    xc, yc, mx, my = _centred(x, y)
    gram, xty = xc.T @ xc, xc.T @ yc
    if ridge > 0:
        # one penalty: a Cholesky solve of the shifted Gram matrix is the cheapest exact route
        w = spd_solve(gram, xty, _absolute_ridge(gram, ridge, x.shape[0]))
    else:
        e, v = torch.linalg.eigh(gram)
        w = _ridge_from_eig(e.clamp_min(0), v, xty, 0.0)
    return Fitted(w, my - mx @ w, "affine", ridge=float(ridge))


def _split_rows(n: int, fraction: float, seed: int, groups=None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if groups is not None:
        if len(groups) != n:
            raise ShapeError(f"{len(groups)} group keys for {n} rows")
        keys = list(dict.fromkeys(groups))
        if len(keys) >= 2:
            order = torch.randperm(len(keys), generator=g).tolist()
            n_val = min(max(1, round(len(keys) * fraction)), len(keys) - 1)
            held = {keys[i] for i in order[:n_val]}
            is_val = torch.tensor([k in held for k in groups])
            if 2 <= int(is_val.sum()) <= n - 2:
                return (~is_val).nonzero()[:, 0], is_val.nonzero()[:, 0]
    order = torch.randperm(n, generator=g)
    n_val = min(max(2, round(n * fraction)), n - 2)  # an R² needs two validation rows, a fit two rows
    return order[n_val:], order[:n_val]


def choose_ridge(x: torch.Tensor, y: torch.Tensor, ridges=DEFAULT_RIDGES, *, validation: float = 0.2,
                 seed: int = 0, groups=None) -> tuple[float, dict[float, float]]:
    """The ridge (from ``ridges``) with the best R² on a random ``validation`` share of the rows.

    With ``groups`` (one key per row) the validation rows are whole groups, so that near-duplicate
    rows on both sides do not favour too weak a penalty.
    """
    x, y = paired(x, y, min_rows=4)
    if not ridges:
        raise EmptyDataError("give at least one ridge value to choose from")
    fit_rows, val_rows = _split_rows(x.shape[0], validation, seed, groups)
    xc, yc, mx, my = _centred(x[fit_rows], y[fit_rows])
    e, v = _gram_eig(xc)
    unit, xty = _unit(e, len(fit_rows)), xc.T @ yc
    scores = {}
    for r in ridges:
        w = _ridge_from_eig(e, v, xty, max(float(r), 1e-12) * unit)
        pred = (x[val_rows] - mx) @ w + my
        scores[float(r)] = r2_score(pred, y[val_rows])
    best = max(scores, key=lambda r: (scores[r], r))  # ties go to the stronger penalty
    return best, scores


def fit_affine(x: torch.Tensor, y: torch.Tensor, *, ridge: float | None = None, ridges=DEFAULT_RIDGES,
               validation: float = 0.2, seed: int = 0, groups=None) -> Fitted:
    """Ridge map with intercept; without ``ridge`` the penalty is chosen on held-back training rows."""
    scores = None
    if ridge is None:
        ridge, scores = choose_ridge(x, y, ridges, validation=validation, seed=seed, groups=groups)
    fitted = fit_ridge(x, y, ridge)
    return Fitted(fitted.weight, fitted.bias, "affine", ridge=ridge, validation_r2=scores)


def fit_orthogonal(x: torch.Tensor, y: torch.Tensor, *, scale: bool = False) -> Fitted:
    """Orthogonal Procrustes with intercept: ``W = U Vᵀ`` from ``xcᵀ yc = U S Vᵀ``.

    With ``scale`` one factor ``trace(S) / ||xc W||²`` multiplies ``W`` (the least-squares isotropic
    scale). When the widths differ, ``W`` is semi-orthogonal (orthonormal rows or columns); with
    orthonormal columns (a wider source) ``xc W`` is a projection, shorter than ``xc``.
    """
    x, y = paired(x, y)
    xc, yc, mx, my = _centred(x, y)
    u, s, vt = torch.linalg.svd(xc.T @ yc, full_matrices=False)
    w = u @ vt
    factor = float(s.sum() / (xc @ w).square().sum().clamp_min(1e-300)) if scale else 1.0
    w = w * factor
    return Fitted(w, my - mx @ w, "orthogonal", scale=factor)


def fit_low_rank(x: torch.Tensor, y: torch.Tensor, rank: int, *, ridge: float | None = None,
                 ridges=DEFAULT_RIDGES, validation: float = 0.2, seed: int = 0, groups=None) -> Fitted:
    """Reduced-rank ridge regression: the affine map's coefficients restricted to ``rank`` output directions."""
    x, y = paired(x, y)
    if not 1 <= rank <= min(x.shape[1], y.shape[1]):
        raise ShapeError(f"rank must be between 1 and min(widths) = {min(x.shape[1], y.shape[1])}, got {rank}")
    full = fit_affine(x, y, ridge=ridge, ridges=ridges, validation=validation, seed=seed, groups=groups)
    xc, _, mx, my = _centred(x, y)
    gram = xc.T @ xc
    # fitted values of the augmented data [xc; √λ I] W: their top right singular vectors are the
    # top eigenvectors of Wᵀ (xcᵀxc + λ I) W
    augmented = gram + _absolute_ridge(gram, full.ridge, x.shape[0]) * torch.eye(len(gram), dtype=gram.dtype)
    _, directions = torch.linalg.eigh(full.weight.T @ augmented @ full.weight)
    top = directions[:, -rank:]
    projector = top @ top.T
    w = full.weight @ projector
    return Fitted(w, my - mx @ w, "low_rank", ridge=full.ridge, rank=rank, validation_r2=full.validation_r2)


def fit_map(x: torch.Tensor, y: torch.Tensor, method: str = "affine", **options) -> Fitted:
    """Dispatch to :func:`fit_affine`, :func:`fit_orthogonal` or :func:`fit_low_rank`."""
    check_choice(method, METHODS, "map method")
    if method == "affine":
        return fit_affine(x, y, **options)
    if method == "orthogonal":
        return fit_orthogonal(x, y, **options)
    if "rank" not in options:
        raise ShapeError("a low-rank map needs rank=: pass e.g. rank=32")
    return fit_low_rank(x, y, **options)
