"""Paths between two latent codes: straight lines and great-circle arcs."""

from __future__ import annotations

import torch

from ..core.errors import NonFiniteError, ShapeError, check_choice


def _endpoints(a: torch.Tensor, b: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ShapeError(
            f"a path needs at least 2 steps (its two endpoints), got {steps!r}: with one step there is no "
            "path between two codes, ask for steps >= 2"
        )
    if a.shape != b.shape or a.dim() < 1:
        raise ShapeError(f"the endpoints must have the same shape [..., d], got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise NonFiniteError("an endpoint contains NaN or infinite values")
    return a.to(torch.float64), b.to(torch.float64)


def fractions(steps: int) -> torch.Tensor:
    """``steps`` evenly spaced fractions from 0 to 1 inclusive."""
    return torch.linspace(0.0, 1.0, steps, dtype=torch.float64)


def lerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """``[steps, ..., d]``: ``(1 - t) a + t b`` for ``t`` from 0 to 1."""
    a64, b64 = _endpoints(a, b, steps)
    t = fractions(steps).reshape(-1, *([1] * a.dim()))
    return ((1 - t) * a64 + t * b64).to(a.dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int, *, eps: float = 1e-7) -> torch.Tensor:
    """``[steps, ..., d]``: spherical interpolation (arXiv 1609.04468) on the last dimension.

    The code moves along the great circle through ``a`` and ``b`` with the angle ``Ω`` between them
    while its norm changes linearly from ``|a|`` to ``|b|``, so intermediate codes keep a typical norm
    for a Gaussian prior instead of shrinking toward the origin as a straight line does between
    distant codes. Where ``a`` and ``b`` are (anti)parallel the arc is undefined and the straight line
    is used.
    """
    a64, b64 = _endpoints(a, b, steps)
    na, nb = a64.norm(dim=-1, keepdim=True), b64.norm(dim=-1, keepdim=True)
    ua, ub = a64 / na.clamp_min(eps), b64 / nb.clamp_min(eps)
    omega = torch.arccos((ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0))
    t = fractions(steps).reshape(-1, *([1] * a.dim()))
    sin = torch.sin(omega)
    arc = (torch.sin((1 - t) * omega) * ua + torch.sin(t * omega) * ub) / sin.clamp_min(eps)
    norm = (1 - t) * na + t * nb
    curved = arc * norm
    straight = (1 - t) * a64 + t * b64
    degenerate = (sin < 1e-6) | (na < eps) | (nb < eps)
    return torch.where(degenerate, straight, curved).to(a.dtype)


PATHS = {"lerp": lerp, "slerp": slerp}


def path(a: torch.Tensor, b: torch.Tensor, steps: int, kind: str = "lerp") -> torch.Tensor:
    check_choice(kind, PATHS, "path kind")
    return PATHS[kind](a, b, steps)
