"""Linear centred kernel alignment (CKA) and the HSIC it normalises.

Linear CKA (Kornblith et al., arXiv 1905.00414) compares two representations of the same ``n``
examples through their centred Gram matrices ``K = XXᵀ`` and ``L = YYᵀ``::

    CKA = <K, L>_F / (||K||_F ||L||_F) = ||XᵀY||²_F / (||XᵀX||_F ||YᵀY||_F)   (X, Y centred)

It is invariant to orthogonal transforms and isotropic scaling of either side, not to arbitrary
invertible maps, which is what lets it compare layers wider than the number of examples.

The plain estimate is biased upwards at small ``n`` (two independent representations score well
above 0). The *debiased* form replaces each HSIC by the unbiased estimator of Song et al. (JMLR
2012), as used for minibatch CKA by Nguyen, Raghu and Kornblith (arXiv 2010.15327, eq. 3)::

    HSIC_u = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1] / (n(n-3))

with ``K̃``, ``L̃`` the Gram matrices with zeroed diagonals. It needs ``n >= 4`` and can be negative.
For linear kernels HSIC_u does not change when a constant is added to every row, so it can be
computed from centred features; with centred ``X`` (so ``K1 = 0``) it reduces to
``<K, L> - n/(n-2)·Σ_i k_i l_i + Σk·Σl / ((n-1)(n-2))`` over ``n(n-3)``, where ``k_i = ||x_i||²``.

``<K, L>`` is taken either in feature space (``||XᵀY||²``, cost ``n·d_x·d_y``) or from the ``n x n``
Grams (cost ``n²(d_x + d_y)``), whichever is cheaper. :class:`StreamingCKA` accumulates the same
quantities from batches in float64 without keeping the examples.
"""

from __future__ import annotations

import torch

from ._inputs import centred, paired, require_variance


def linear_hsic(x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None,
                debiased: bool = False) -> float:
    """HSIC with linear kernels: biased ``tr(KHLH) / (n-1)²`` or Song et al.'s unbiased estimator."""
    x, y = paired(x, y, mask=mask, minimum=4 if debiased else 2)
    xc, yc = centred(x), centred(y)
    n = x.shape[0]
    inner = kernel_dots(xc, yc)[0]
    if debiased:
        return float(debiased_dot(inner, row_norms(xc), row_norms(yc), n) / (n * (n - 3)))
    return float(inner / (n - 1) ** 2)


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None,
               debiased: bool = False) -> float:
    """Linear CKA between ``x`` ``[n, d_x]`` and ``y`` ``[n, d_y]`` (rows are the same examples).

    ``debiased=True`` uses the unbiased HSIC estimator (needs ``n >= 4``); the ratio may then be
    slightly negative or above 1 by sampling noise, and is close to 0 for independent data.
    """
    x, y = paired(x, y, mask=mask, minimum=4 if debiased else 2)
    require_variance(x, "x")
    require_variance(y, "y")
    xc, yc = centred(x), centred(y)
    xy, xx, yy = kernel_dots(xc, yc)
    if not debiased:
        return float(xy / torch.sqrt(xx * yy))
    n = x.shape[0]
    kx, ky = row_norms(xc), row_norms(yc)
    return cka_from_dots(debiased_dot(xy, kx, ky, n), debiased_dot(xx, kx, kx, n), debiased_dot(yy, ky, ky, n))


def cka_from_dots(xy: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> float:
    """``xy / sqrt(xx·yy)``; NaN where a self-similarity is not positive (possible when debiased)."""
    denominator = xx * yy
    return float(xy / torch.sqrt(denominator)) if float(denominator) > 0 else float("nan")


def row_norms(xc: torch.Tensor) -> torch.Tensor:
    """Squared norms of the centred rows: the diagonal of the centred Gram matrix."""
    return torch.einsum("ij,ij->i", xc, xc)


def debiased_dot(inner: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, n: int) -> torch.Tensor:
    """``n(n-3)·HSIC_u`` from ``<K, L>`` of centred data and the Grams' diagonals ``kx``, ``ky``."""
    return inner - n / (n - 2) * (kx @ ky) + kx.sum() * ky.sum() / ((n - 1) * (n - 2))


def kernel_dots(xc: torch.Tensor, yc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``<K, L>``, ``<K, K>``, ``<L, L>`` for centred ``X``, ``Y`` (``K = XXᵀ``, ``L = YYᵀ``).

    In feature space (``||XᵀY||²``, cost ``n·(d_x + d_y)²``) or from the ``n x n`` Grams (cost
    ``n²(d_x + d_y)``), whichever is cheaper.
    """
    n, dx = xc.shape
    dy = yc.shape[1]
    if (dx + dy) ** 2 <= n * (dx + dy):
        return (xc.T @ yc).square().sum(), (xc.T @ xc).square().sum(), (yc.T @ yc).square().sum()
    gram_x, gram_y = xc @ xc.T, yc @ yc.T
    return (gram_x * gram_y).sum(), gram_x.square().sum(), gram_y.square().sum()
