"""Small closed-form linear algebra shared by the levers."""

from __future__ import annotations

import torch

from .errors import NonFiniteError


def spd_solve(matrix: torch.Tensor, rhs: torch.Tensor, lam: float) -> torch.Tensor:
    """Solve ``(matrix + lam I) X = rhs`` for a symmetric positive semi-definite ``matrix``.

    If rounding makes the shifted matrix indefinite, the shift grows tenfold until it is not.
    """
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    scale = float(matrix.diagonal(dim1=-2, dim2=-1).abs().mean()) or 1.0
    shift = lam if lam > 0 else 1e-12 * scale
    for _ in range(12):
        factor, info = torch.linalg.cholesky_ex(matrix + shift * eye)
        if not bool(info.any()):
            return torch.cholesky_solve(rhs, factor)
        shift *= 10
    raise NonFiniteError("the covariance is not positive semi-definite: the activations contain non-finite values?")
