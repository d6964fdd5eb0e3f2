"""Spectral maths on plain tensors: ranks of a spectrum, SVD of a thin product, SVD through a Gram.

No model code here. Conventions: singular values come back in descending order, batched over any
leading dimensions; singular vectors are returned as rows (``[.., k, dim]``) so that a direction is
``vectors[i]``.
"""

from __future__ import annotations

import torch

from ..core.errors import NonFiniteError, ShapeError, check_choice


def _check_spectrum(singular_values: torch.Tensor) -> torch.Tensor:
    if singular_values.dim() == 0 or singular_values.shape[-1] == 0:
        raise ShapeError("a spectrum needs at least one singular value")
    if not torch.isfinite(singular_values).all():
        raise NonFiniteError("the singular values contain NaN or infinite values")
    if (singular_values < 0).any():
        raise ShapeError("singular values must be non-negative")
    return singular_values.double()


def stable_rank(singular_values: torch.Tensor) -> torch.Tensor:
    """``‖W‖²_F / ‖W‖²₂ = Σσ² / σ_max²``: how many directions carry the energy (1 ≤ value ≤ rank).

    Unlike the rank it does not count tiny singular values, so it is robust to rounding noise.
    A zero matrix gets 0.
    """
    s = _check_spectrum(singular_values)
    top = s.amax(-1)
    energy = (s * s).sum(-1)
    return torch.where(top > 0, energy / (top * top).clamp_min(torch.finfo(s.dtype).tiny), 0.0)


def effective_rank(singular_values: torch.Tensor) -> torch.Tensor:
    """``exp(H(p))`` with ``p = σ / Σσ`` (Roy & Vetterli 2007, EUSIPCO): 1 for rank one, n for a flat spectrum.

    ``0·log 0`` counts as 0. A zero matrix gets 0.
    """
    s = _check_spectrum(singular_values)
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(s.dtype).tiny)
    entropy = -torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(s.dtype).tiny)), 0.0).sum(-1)
    return torch.where(total[..., 0] > 0, torch.exp(entropy), 0.0)


def product_svd(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``left @ right`` (``[.., m, r] @ [.., r, n]``, ``r`` small) without forming the product.

    With ``left = Q₁R₁`` and ``rightᵀ = Q₂R₂`` (thin QR), ``left @ right = Q₁ (R₁R₂ᵀ) Q₂ᵀ``; only the
    ``r × r`` core is decomposed, so the cost is ``O((m + n) r²)`` instead of ``O(m n min(m, n))``.
    Returns ``(U [.., k, m], S [.., k], V [.., k, n])``, ``k = min(m, n, r)``, with ``left @ right = Uᵀ diag(S) V``.
    """
    if left.dim() < 2 or right.dim() < 2 or left.shape[-1] != right.shape[-2]:
        raise ShapeError(f"cannot multiply factors of shapes {tuple(left.shape)} and {tuple(right.shape)}")
    if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
        raise NonFiniteError("the weight factors contain NaN or infinite values")
    q1, r1 = torch.linalg.qr(left)
    q2, r2 = torch.linalg.qr(right.transpose(-1, -2))
    core_u, s, core_vh = torch.linalg.svd(r1 @ r2.transpose(-1, -2), full_matrices=False)
    u = (q1 @ core_u).transpose(-1, -2)
    v = core_vh @ q2.transpose(-1, -2)
    return u, s, v


def top_eigenvectors(gram: torch.Tensor, n: int, oversample: int = 6, tol: float = 1e-6,
                     max_iterations: int = 300) -> torch.Tensor:
    """Top ``n`` eigenvectors ``[.., n, dim]`` of a symmetric PSD matrix by block subspace iteration.

    Much cheaper than a full ``eigh`` when ``n`` is small; iterates (with a seeded start) until every
    residual ``‖G x − λ x‖`` is below ``tol · λ_max`` (``tol`` raised to 100 ulps of the dtype), with
    Rayleigh–Ritz on the block.
    """
    dim = gram.shape[-1]
    if not 1 <= n <= dim:
        raise ShapeError(f"n must be between 1 and {dim}, got {n}")
    if max_iterations < 1:
        raise ShapeError(f"max_iterations must be at least 1, got {max_iterations}")
    block = n + oversample
    if block >= dim:
        return torch.linalg.eigh(gram)[1].flip(-1)[..., :n].transpose(-1, -2)
    start = torch.randn(dim, block, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.linalg.qr(start.to(gram).expand(*gram.shape[:-2], dim, block))[0]
    tol = max(tol, 100 * torch.finfo(gram.dtype).eps)
    for iteration in range(1, max_iterations + 1):
        x = torch.linalg.qr(gram @ x)[0]
        if iteration % 5 == 0 or iteration == max_iterations:
            values, ritz = torch.linalg.eigh(x.transpose(-1, -2) @ gram @ x)  # Rayleigh–Ritz
            vectors = x @ ritz.flip(-1)[..., :n]
            residual = (gram @ vectors - vectors * values.flip(-1)[..., None, :n]).norm(dim=-2)
            if bool((residual <= tol * values[..., -1:].clamp_min(torch.finfo(gram.dtype).tiny)).all()):
                break
    return vectors.transpose(-1, -2)


def gram_svd(weight: torch.Tensor, side: str, dtype: torch.dtype = torch.float64,
             n_vectors: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values and the singular vectors of one side of ``weight [.., out, in]``, via its Gram.

    ``side="in"`` decomposes ``WᵀW`` (right singular vectors, in input space); ``side="out"``
    decomposes ``WWᵀ`` (left singular vectors, in output space). When that side is the narrow one
    (an MLP weight seen from the residual stream) this is one ``d × d`` eigendecomposition instead
    of an SVD of the wide matrix. Squaring doubles the relative rounding of small singular values:
    in float64 they are exact to ~1e-8·σ_max, in float32 to ~3e-4·σ_max, ample for stable and
    effective rank. Returns ``(S [.., k], vectors [.., m, dim])``, ``k = dim`` of that side,
    descending; ``m = k``, or ``n_vectors`` (then found by :func:`top_eigenvectors`, which is cheaper).
    """
    if weight.dim() < 2:
        raise ShapeError(f"expected a matrix [.., out, in], got shape {tuple(weight.shape)}")
    check_choice(side, ("in", "out"), "side")
    if not torch.isfinite(weight).all():
        raise NonFiniteError("the weight contains NaN or infinite values")
    w = weight.to(dtype)
    gram = w.transpose(-1, -2) @ w if side == "in" else w @ w.transpose(-1, -2)
    if n_vectors is None:
        values, vectors = torch.linalg.eigh(gram)
        return values.flip(-1).clamp_min(0).sqrt(), vectors.flip(-1).transpose(-1, -2)
    values = torch.linalg.eigvalsh(gram).flip(-1)
    return values.clamp_min(0).sqrt(), top_eigenvectors(gram, n_vectors)
