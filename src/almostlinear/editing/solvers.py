"""The closed-form weight updates of ROME, MEMIT and AlphaEdit as plain float64 tensor maths.

Conventions: a down projection maps keys ``k ∈ R^{d_in}`` to values ``W k ∈ R^{d_out}`` with
``W`` of shape ``[d_out, d_in]``; ``C = E[k kᵀ]`` is the keys' uncentred second moment. Every
update is returned in factored form ``ΔW = B @ A`` (``B`` ``[d_out, r]``, ``A`` ``[r, d_in]``) so an
edit stays small and the shift of any key ``k`` is exactly ``B (A k)``.
"""

from __future__ import annotations

import torch

from ..core.errors import AlmostLinearError, NonFiniteError, ShapeError


def ridge(c: torch.Tensor, relative: float) -> torch.Tensor:
    """``C + ε I`` with ``ε = relative · tr(C) / d``: a shift in the units of the average eigenvalue."""
    d = c.shape[-1]
    eps = relative * float(c.diagonal().sum()) / d
    return c + eps * torch.eye(d, dtype=c.dtype, device=c.device)


def whitened_key(c: torch.Tensor, key: torch.Tensor, *, relative_ridge: float = 0.0) -> torch.Tensor:
    """``C⁻¹ k`` (with an optional relative ridge), solved by Cholesky in float64."""
    c = c.double()
    key = key.double()
    if c.shape != (key.shape[-1], key.shape[-1]):
        raise ShapeError(f"C is {tuple(c.shape)} but the key has {key.shape[-1]} features")
    shifted = ridge(c, relative_ridge) if relative_ridge > 0 else c
    factor, info = torch.linalg.cholesky_ex(shifted)
    if int(info):
        raise NonFiniteError(
            "the key second moment is singular: collect statistics from more tokens or raise the ridge"
        )
    return torch.cholesky_solve(key.reshape(-1, 1), factor).reshape(key.shape)


def rank_one_update(c: torch.Tensor, key: torch.Tensor, residual: torch.Tensor, *,
                    relative_ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """ROME's update (arXiv 2202.05262, Eq. 2) as factors ``(v, u)`` with ``ΔW = v uᵀ``.

    Among all ``Ŵ`` with ``Ŵ k = W k + residual`` it is the one closest to ``W`` in the norm
    ``‖(Ŵ − W) C^{1/2}‖_F``: ``u = C⁻¹k / (kᵀC⁻¹k)`` and ``v = residual``, so ``uᵀk = 1`` and the
    edit moves any other key ``k_n`` by exactly ``(uᵀk_n) v``. Using the same (template-averaged)
    ``k`` in ``u`` and in the constraint is the fix of arXiv 2403.07175.
    """
    key = key.double()
    residual = residual.double()
    if not (torch.isfinite(key).all() and torch.isfinite(residual).all()):
        raise NonFiniteError("the key or the target value contains NaN or infinite values")
    whitened = whitened_key(c, key, relative_ridge=relative_ridge)
    denominator = float(whitened @ key)
    if not denominator > 0:
        raise NonFiniteError(f"kᵀC⁻¹k = {denominator:.3g} is not positive: the statistics are degenerate")
    return residual, whitened / denominator


def memit_update(c: torch.Tensor, keys: torch.Tensor, residuals: torch.Tensor, *, weight: float,
                 preserved: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MEMIT's batched least-squares update (arXiv 2210.07229, Eq. 14) as ``(B, A)``.

    ``ΔW = R Kᵀ (λ C + K Kᵀ + K_p K_pᵀ)⁻¹`` with keys ``K`` ``[n, d_in]`` (rows), residuals ``R``
    ``[n, d_out]`` and ``λ = weight``; ``preserved`` is an optional ``[d_in, d_in]`` Gram of
    keys from earlier edits to keep. Returns ``B = Rᵀ`` ``[d_out, n]`` and ``A`` ``[n, d_in]``.
    """
    keys = keys.double()
    residuals = residuals.double()
    if keys.dim() != 2 or residuals.dim() != 2 or keys.shape[0] != residuals.shape[0]:
        raise ShapeError(f"keys {tuple(keys.shape)} and residuals {tuple(residuals.shape)} do not pair up")
    system = weight * c.double() + keys.T @ keys
    if preserved is not None:
        system = system + preserved.double()
    a = torch.linalg.solve(system, keys.T).T  # system is symmetric, so (system⁻¹ Kᵀ)ᵀ = K system⁻¹
    return residuals.T.contiguous(), a.contiguous()


def null_space(c: torch.Tensor, *, energy: float) -> tuple[torch.Tensor, int]:
    """Projector onto the span of ``C``'s smallest eigenvectors holding ``energy`` of its trace.

    AlphaEdit (arXiv 2410.02355) keeps eigenvectors whose eigenvalue is below an absolute 2e-2;
    on another model or corpus that can select every direction or none (jianghoucheng/AlphaEdit#38).
    Here the threshold is relative: the smallest eigenvalues are taken while their running sum
    stays within ``energy · tr(C)``. Returns ``(P, dimension)``.
    """
    if not 0.0 <= energy < 1.0:
        raise AlmostLinearError(f"energy must be in [0, 1), got {energy}: it is the share of C's trace to keep free")
    values, vectors = torch.linalg.eigh(c.double())
    values = values.clamp_min(0.0)
    running = torch.cumsum(values, 0)  # eigh sorts ascending
    keep = running <= energy * float(values.sum())
    basis = vectors[:, keep]
    return basis @ basis.T, int(keep.sum())


def alphaedit_update(projector: torch.Tensor, keys: torch.Tensor, residuals: torch.Tensor, *,
                     l2: float, preserved: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """AlphaEdit's null-space constrained update (arXiv 2410.02355, Eq. 14) as ``(B, A)``.

    ``ΔW = R Kᵀ P (P (K Kᵀ + K_p K_pᵀ) + α I)⁻ᵀ``; the rows of ``A`` lie in the range of ``P``,
    so ``ΔW k0 = 0`` for every preserved key ``k0`` in ``P``'s null complement.
    """
    keys = keys.double()
    residuals = residuals.double()
    if keys.dim() != 2 or residuals.dim() != 2 or keys.shape[0] != residuals.shape[0]:
        raise ShapeError(f"keys {tuple(keys.shape)} and residuals {tuple(residuals.shape)} do not pair up")
    p = projector.double()
    d = p.shape[0]
    gram = keys.T @ keys
    if preserved is not None:
        gram = gram + preserved.double()
    system = p @ gram + l2 * torch.eye(d, dtype=torch.float64)
    a = torch.linalg.solve(system, p @ keys.T).T  # [n, d_in]; ΔWᵀ = system⁻¹ P Kᵀ R
    return residuals.T.contiguous(), a.contiguous()
