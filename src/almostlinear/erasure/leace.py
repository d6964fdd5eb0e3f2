"""LEACE, least-squares concept erasure (Belrose et al., arXiv 2306.03819), as tensor maths.

Given features ``x`` ``[n, d]`` and a concept ``z`` ``[n, k]`` (one-hot classes or any numeric
labels), LEACE is the affine map ``r(x) = x - L R (x - mean)`` with

* ``W = Cov(x)^(-1/2)`` (pseudo-inverse square root, so rank-deficient covariances are fine),
* ``U`` the left singular vectors of ``W Cov(x, z)`` with singular values above ``svd_tol``,
* ``L = W^+ U`` ``[d, r]`` and ``R = U^T W`` ``[r, d]``, so ``r <= k``.

After erasure ``Cov(r(x), z) = 0``: no linear classifier does better than a constant one (the
paper's guardedness theorem), and among the maps with that property it moves ``x`` least in mean
squared distance. ``I - L R`` is a projection (oblique in general), so erasing twice equals erasing
once. ``method="orth"`` takes ``W = I``: the orthogonal projection out of the span of
``Cov(x, z)``, which also guards but moves ``x`` more.

The covariance may be shrunk toward a multiple of the identity with the linear shrinkage of
arXiv 1308.2608 (useful when ``n`` is not much larger than ``d``).

Nothing here imports transformers; :mod:`.eraser` puts this on a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..core.errors import AlmostLinearError, EmptyDataError, NonFiniteError, ShapeError, check_choice
from ..core.stats import RunningMoments

Method = Literal["leace", "orth"]
METHODS: tuple[str, ...] = ("leace", "orth")
DEFAULT_SVD_TOL = 0.01


def as_concept(z, n: int, n_columns: int | None = None) -> torch.Tensor:
    """Labels as a float64 ``[n, k]`` matrix.

    ``[n]`` booleans or 0/1 give one column (binary concept), ``[n]`` floats a numeric concept;
    ``[n]`` integers with ``n_columns > 1`` classes are one-hot encoded (other integers are refused
    without it); ``[n, k]`` is taken as given.
    """
    z = torch.as_tensor(z).detach()
    if z.shape[0] != n:
        raise ShapeError(f"x has {n} rows but the labels have {z.shape[0]}")
    if z.dim() == 1:
        if n_columns is not None and n_columns > 1:
            if z.is_floating_point():
                raise ShapeError("class labels for one-hot encoding must be integers")
            if n and (z.min() < 0 or z.max() >= n_columns):
                raise ShapeError(f"class labels must lie in 0..{n_columns - 1}")
            return torch.nn.functional.one_hot(z.long(), n_columns).double()
        if not z.is_floating_point() and n and (z.min() < 0 or z.max() > 1):
            # integer class ids taken as one number would erase only their linear order, not the classes
            raise ShapeError("integer labels beyond 0/1 are class ids: pass the number of classes (n_classes), "
                             "or float labels for a numeric concept")
        z = z[:, None]
    if z.dim() != 2:
        raise ShapeError(f"labels must be [n] or [n, k], got shape {tuple(z.shape)}")
    z = z.double()
    if not torch.isfinite(z).all():
        raise NonFiniteError("the labels contain NaN or infinite values")
    return z


def shrink_covariance(cov: torch.Tensor, n: int) -> torch.Tensor:
    """Linear shrinkage of a sample covariance toward ``trace/d * I`` (arXiv 1308.2608).

    The weight on the sample covariance, ``1 - (tr S)^2 / (n (||S||_F^2 - (tr S)^2 / d))``,
    is clamped to ``[0, 1]``.
    """
    d = cov.shape[-1]
    trace = torch.trace(cov)
    excess = (cov * cov).sum() - trace * trace / d  # ||S - trace/d I||_F^2, zero for isotropic S
    if excess <= 0:
        return cov.clone()
    keep = (1 - trace * trace / (n * excess)).clamp(0.0, 1.0)
    return keep * cov + (1 - keep) * (trace / d) * torch.eye(d, dtype=cov.dtype, device=cov.device)


def _eigen(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(vectors, root, inv_root)``: ``Cov^(1/2) = V diag(root) V^T``, ``Cov^(-1/2)`` likewise, on the range."""
    values, vectors = torch.linalg.eigh((cov + cov.T) / 2)
    cutoff = values[-1].clamp_min(0) * cov.shape[-1] * torch.finfo(values.dtype).eps
    kept = values > cutoff  # the threshold torch.linalg.pinv uses
    root = values.clamp_min(0).sqrt()
    inv_root = torch.where(kept, 1.0 / torch.where(kept, root, 1.0), 0.0)
    return vectors, torch.where(kept, root, 0.0), inv_root


def whitening(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Cov^(-1/2), Cov^(1/2))`` on the covariance's range (pseudo-inverse), from one ``eigh``."""
    vectors, root, inv_root = _eigen(cov)
    return (vectors * inv_root) @ vectors.T, (vectors * root) @ vectors.T


def leace_factors(cov_xx: torch.Tensor | None, cov_xz: torch.Tensor, *, method: Method = "leace",
                  svd_tol: float = DEFAULT_SVD_TOL) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L [d, r], R [r, d])`` such that the eraser is ``x - (x - mean) @ R.T @ L.T``.

    Directions whose singular value in ``W Cov(x, z)`` is at most ``svd_tol`` are dropped, so
    ``r`` may be below ``k`` (and is 0 when ``x`` does not covary with ``z`` at all). The whitening
    matrices are never formed: every product goes through the eigenvectors, ``O(d^2 k)`` after the
    ``eigh``.
    """
    check_choice(method, METHODS, "erasure method")
    if not svd_tol > 0:
        raise AlmostLinearError(f"svd_tol must be positive, got {svd_tol}")
    if method == "leace":
        if cov_xx is None:
            raise ShapeError("LEACE needs the covariance of x")
        vectors, root, inv_root = _eigen(cov_xx)
        whiten = lambda m, scale: vectors @ (scale[:, None] * (vectors.T @ m))  # noqa: E731
        u, s, _ = torch.linalg.svd(whiten(cov_xz, inv_root), full_matrices=False)
        u = u[:, s > svd_tol]
        return whiten(u, root), whiten(u, inv_root).T.contiguous()  # W is symmetric: U^T W = (W U)^T
    u, s, _ = torch.linalg.svd(cov_xz, full_matrices=False)
    u = u[:, s > svd_tol]
    return u, u.T.clone()


def erase(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Apply ``x - (x - mean) R^T L^T`` over the last dimension, in ``x``'s dtype (never in place)."""
    if x.shape[-1] != left.shape[0]:
        raise ShapeError(f"the eraser expects {left.shape[0]} features, got {x.shape[-1]}")
    dtype = x.dtype
    left, right, mean = (t.to(device=x.device, dtype=dtype) for t in (left, right, mean))
    return x - ((x - mean) @ right.T) @ left.T


@dataclass
class LeaceFitter:
    """Streaming LEACE statistics: ``update(x, z)`` batch by batch, then ``result()``.

    Moments accumulate in float64 and two fitters of the same shape ``merge`` (e.g. from two
    processes). ``n_classes`` > 1 makes integer labels one-hot; 1 (default) takes a binary or
    numeric concept as one column; ``[n, k]`` labels need ``n_classes=k``.

    ``batch_dtype`` is the precision of each batch's centred products before they are added to the
    float64 sums: float64 by default. ``torch.float32`` is about 1.6x faster on wide activations but
    loses the small eigenvalues of ill-conditioned covariances (measured on SmolLM2's residual stream:
    erased outputs differ by 2e-3 of the activations' scale); ``None`` follows the first batch's dtype.
    """

    dim: int
    n_classes: int = 1
    method: Method = "leace"
    shrinkage: bool = False
    svd_tol: float = DEFAULT_SVD_TOL
    batch_dtype: torch.dtype | None = torch.float64
    moments: RunningMoments = field(init=False)

    def __post_init__(self) -> None:
        check_choice(self.method, METHODS, "erasure method")
        if self.dim < 1 or self.n_classes < 1:
            raise ShapeError("dim and n_classes must be positive")
        self.moments = RunningMoments(self.dim, self.n_classes, batch_dtype=self.batch_dtype or torch.float64)

    @property
    def n(self) -> int:
        return self.moments.n

    def update(self, x: torch.Tensor, z) -> LeaceFitter:
        """Add a batch: ``x`` ``[n, d]`` (or ``[..., d]``, flattened) and its labels."""
        x = torch.as_tensor(x).detach()
        if x.shape[-1] != self.dim:
            raise ShapeError(f"this fitter takes {self.dim} features, got {x.shape[-1]}")
        leading = x.shape[:-1]
        x = x.reshape(-1, self.dim)
        z = torch.as_tensor(z).detach()
        if len(leading) > 1 and tuple(z.shape[:len(leading)]) == tuple(leading):
            z = z.reshape(x.shape[0], *z.shape[len(leading):])  # labels per token, like x
        concept = as_concept(z, x.shape[0], self.n_classes)
        if self.batch_dtype is None and self.moments.n == 0:
            self.moments.batch_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if concept.shape[1] != self.n_classes:
            raise ShapeError(f"labels have {concept.shape[1]} columns but the fitter expects {self.n_classes}")
        self.moments.update(x, concept)
        return self

    def merge(self, other: LeaceFitter) -> LeaceFitter:
        """A new fitter holding the statistics of both."""
        if (self.dim, self.n_classes) != (other.dim, other.n_classes):
            raise ShapeError("cannot merge fitters of different shapes")
        out = LeaceFitter(self.dim, self.n_classes, self.method, self.shrinkage, self.svd_tol, self.batch_dtype)
        out.moments = self.moments.merge(other.moments)
        return out

    def covariance(self) -> torch.Tensor:
        """``Cov(x)``: unbiased, or shrunk (from the biased estimate) when ``shrinkage``."""
        m = self.moments
        if self.shrinkage:
            return shrink_covariance(m.sxx_ / m.n, m.n)
        return m.cov_x()

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L, R, mean)`` in float64; raises for too little data or a concept with no variation."""
        m = self.moments
        if m.n < 2:
            raise EmptyDataError(f"LEACE needs at least 2 examples, got {m.n}")
        if not (m.syy_.diagonal() > 0).any():
            raise EmptyDataError(
                "the labels never vary (a single class): there is no concept to erase; "
                "give examples of at least two classes"
            )
        cov_xx = self.covariance() if self.method == "leace" else None
        left, right = leace_factors(cov_xx, m.cross_cov(), method=self.method, svd_tol=self.svd_tol)
        return left, right, m.mean_x.clone()
