"""L-BFGS over many independent small problems at once, each with its own history and line search.

``torch.optim.LBFGS`` minimises one objective; summing independent problems into one couples them
through the shared step size and curvature history, so a layer's result would depend on which
other layers were fitted with it. Here every row of ``x`` is its own problem: the two-loop
recursion, the Armijo backtracking and the stopping test are all done per row, in batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Objective = Callable[[torch.Tensor], torch.Tensor]  # x [P, k] -> losses [P], rows independent


def _value_and_grad(fn: Objective, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        values = fn(x)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad


def _direction(grad: torch.Tensor, s_hist: torch.Tensor, y_hist: torch.Tensor, rho: torch.Tensor,
               order: list[int], gamma: torch.Tensor) -> torch.Tensor:
    """Two-loop recursion; history slots with ``rho == 0`` are skipped (no update stored).

    ``gamma`` is each row's initial inverse-Hessian scale, ``s.y / y.y`` of its latest stored pair.
    """
    q = grad.clone()
    alphas = []
    for j in reversed(order):
        alpha = rho[:, j] * (s_hist[:, j] * q).sum(-1)
        q -= alpha[:, None] * y_hist[:, j]
        alphas.append((j, alpha))
    r = q * gamma[:, None]
    for j, alpha in reversed(alphas):
        beta = rho[:, j] * (y_hist[:, j] * r).sum(-1)
        r += (alpha - beta)[:, None] * s_hist[:, j]
    return -r


def minimise_rows(fn: Objective, x0: torch.Tensor, *, max_iter: int = 300, history: int = 10,
                  tol_grad: float = 1e-7, tol_change: float = 1e-12, max_halvings: int = 30) -> torch.Tensor:
    """Minimise ``fn`` row by row from ``x0`` ``[P, k]``; returns the final ``[P, k]``."""
    x = x0.detach().clone()
    rows, width = x.shape
    f, g = _value_and_grad(fn, x)
    s_hist = x.new_zeros(rows, history, width)
    y_hist = x.new_zeros(rows, history, width)
    rho = x.new_zeros(rows, history)
    order: list[int] = []
    gamma = 1 / g.norm(dim=-1).clamp_min(1.0)
    active = g.abs().amax(-1) > tol_grad
    for step in range(max_iter):
        if not bool(active.any()):
            break
        d = _direction(g, s_hist, y_hist, rho, order, gamma)
        slope = (g * d).sum(-1)
        uphill = slope >= 0
        d[uphill] = -g[uphill]
        slope = torch.where(uphill, -(g * g).sum(-1), slope)
        d[~active] = 0
        t = torch.ones(rows, dtype=x.dtype)
        pending = active.clone()
        f_new, g_new, x_new = f.clone(), g.clone(), x.clone()
        for _ in range(max_halvings):
            trial = x + t[:, None] * d
            f_try, g_try = _value_and_grad(fn, trial)
            ok = pending & torch.isfinite(f_try) & (f_try <= f + 1e-4 * t * slope)
            x_new[ok], f_new[ok], g_new[ok] = trial[ok], f_try[ok], g_try[ok]
            pending &= ~ok
            if not bool(pending.any()):
                break
            t = torch.where(pending, t * 0.5, t)
        moved = active & ~pending
        s, y = x_new - x, g_new - g
        sy = (s * y).sum(-1)
        slot = step % history
        keep = moved & (sy > 1e-10 * (y * y).sum(-1).clamp_min(1e-300))
        s_hist[:, slot] = torch.where(keep[:, None], s, 0)
        y_hist[:, slot] = torch.where(keep[:, None], y, 0)
        rho[:, slot] = torch.where(keep, 1 / sy.where(keep, torch.ones_like(sy)), 0)
        gamma = torch.where(keep, sy / (y * y).sum(-1).clamp_min(1e-300), gamma)
        if slot in order:
            order.remove(slot)
        order.append(slot)
        change = (f - f_new).abs() <= tol_change * f.abs().clamp_min(1.0)
        x, f, g = x_new, f_new, g_new
        active = moved & ~change & (g.abs().amax(-1) > tol_grad)
    return x
