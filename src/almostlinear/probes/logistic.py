"""L2-penalised logistic regression on many layers at once, by preconditioned subspace optimisation.

The objective per layer, on standardised features ``z`` and 0/1 labels ``t``, is

    mean_i [softplus(u_i) - t_i u_i] + l2 / 2 * ||w||^2,   u = z w + b,

which is scikit-learn's ``LogisticRegression(C=1 / (n * l2))`` on standardised data.

Why not a generic optimiser: the cost is reading ``z``, and each L-BFGS iteration with a line search
reads it three times or more. Here every iteration reads it exactly twice (the gradient ``z^T r``
and the image ``z g`` of the new direction), then minimises the objective exactly, by Newton's
method, over a small subspace: the new direction and the last few steps, whose images are
differences of ``u`` and cost nothing (the SESOP scheme of Narkiss and Zibulevsky, 2005). The new
direction is the gradient preconditioned by the top principal subspace of ``z`` (found once, by a
randomised range finder): activations are strongly correlated, and the few directions of large
variance are what make plain gradient methods take a hundred iterations on early layers.

With fewer examples than features (and at most ``DUAL_MAX_EXAMPLES``), the fitter solves the dual
instead: damped Newton on the ``n + 1`` representer coefficients, a handful of ``n x n`` solves.
"""

from __future__ import annotations

import warnings

import torch

from ..core.errors import ShapeError
from ._data import as_layers, standardize, to_raw_units

HISTORY = 4  # past steps kept in the subspace besides the new direction
DUAL_MAX_EXAMPLES = 256  # below this, and below d, Newton's method on the n x n kernel is cheaper
NEWTON_STEPS = 3  # an inexact subspace minimum is enough: backtracking keeps every step a descent
PRECONDITIONER_RANK = 32


def _subspace_newton(u: torch.Tensor, t: torch.Tensor, images: torch.Tensor, gram: torch.Tensor,
                     cross: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """Coefficients ``a`` [L, k] minimising the objective along ``w + V a``.

    ``images`` [L, k, n] are ``z V`` plus the bias parts, ``gram`` [L, k, k] is ``V_w^T V_w`` and
    ``cross`` [L, k] is ``V_w^T w``: the penalty along the subspace needs nothing else.
    """
    layers, k, n = images.shape
    a = torch.zeros(layers, k, dtype=u.dtype, device=u.device)
    ridge = 1e-12 * torch.eye(k, dtype=u.dtype, device=u.device)
    lam = l2[:, None]
    images_t = images.transpose(1, 2)

    def value(coef):
        v = u + torch.einsum("lk,lkn->ln", coef, images)
        loss = (torch.nn.functional.softplus(v) - t * v).mean(1)
        quad = ((coef[:, None, :] @ gram)[:, 0] * coef).sum(1)
        return loss + lam[:, 0] * ((coef * cross).sum(1) + 0.5 * quad), v

    current, v = value(a)
    for _ in range(NEWTON_STEPS):
        p = torch.sigmoid(v)
        grad = (images * (p - t)[:, None, :]).sum(-1) / n + lam * (cross + (gram @ a[..., None])[..., 0])
        hess = (images * (p * (1 - p) / n)[:, None, :]) @ images_t + lam[..., None] * gram
        hess = hess + ridge * hess.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30)[:, None, None]
        step = -torch.linalg.solve(hess, grad[..., None])[..., 0]
        decrement = -(grad * step).sum(1)  # Newton decrement squared; > 0 for a descent step
        # Below the rounding of the objective a decrease cannot be checked: there the full Newton step
        # is taken unchecked (the quadratic model is exact to rounding), and the solve ends.
        unmeasurable = decrement <= 1e-12 * current.abs().clamp_min(1e-12)
        scale = torch.ones(layers, dtype=u.dtype, device=u.device)
        for _ in range(30):  # backtracking, per layer, until every layer decreases enough
            trial, v_trial = value(a + scale[:, None] * step)
            ok = (trial <= current - 0.25 * scale * decrement) | unmeasurable
            if bool(ok.all()):
                break
            scale = torch.where(ok, scale, scale * 0.5)
        a, current, v = a + scale[:, None] * step, trial, v_trial
        if bool(unmeasurable.all()):
            break
    return a


class _Preconditioner:
    """Approximate inverse Hessian ``(c V diag(s) V^T + c' (I - V V^T))^-1`` from the top principal
    directions ``V`` of the standardised features and the current mean curvature ``p (1 - p)``."""

    def __init__(self, z: torch.Tensor, zt: torch.Tensor, rank: int, seed: int = 0) -> None:
        layers, n, d = z.shape
        generator = torch.Generator().manual_seed(seed)
        probe = torch.randn(layers, d, rank + 8, generator=generator, dtype=z.dtype).to(z.device)
        basis, _ = torch.linalg.qr(zt @ (z @ probe))
        basis, _ = torch.linalg.qr(zt @ (z @ basis))  # one power iteration sharpens the top directions
        image = z @ basis
        values, vectors = torch.linalg.eigh((image.transpose(1, 2) @ image).double() / n)
        self.vectors = (basis.double() @ vectors)[:, :, -rank:]  # [L, d, rank]
        self.values = values[:, -rank:].clamp_min(0)  # eigenvalues of the correlation matrix
        self.rest = ((d - self.values.sum(1)) / max(d - rank, 1)).clamp_min(1e-6)  # trace(corr) = d

    def __call__(self, g_w: torch.Tensor, g_b: torch.Tensor, u: torch.Tensor, l2: torch.Tensor):
        p = torch.sigmoid(u)
        curvature = (p * (1 - p)).mean(1).clamp_min(1e-8)  # [L]
        off = curvature * self.rest + l2
        coords = (g_w[:, None, :] @ self.vectors)[:, 0]  # [L, rank]
        scale = 1 / (curvature[:, None] * self.values + l2[:, None]) - 1 / off[:, None]
        g_w = (self.vectors @ (scale * coords)[..., None])[..., 0] + g_w / off[:, None]
        return g_w, g_b / curvature


def fit_logistic(x: torch.Tensor, y, *, l2: float | torch.Tensor = 1e-3, max_iter: int = 300,
                 tol: float = 1e-6, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[.., d]`` and biases ``[..]`` of L2-penalised logistic regression, per layer.

    ``x`` is ``[n, d]`` or ``[layers, n, d]``; ``l2`` a number or one per layer. A layer stops when
    its gradient (max-abs over weights and bias) is below ``tol``, scikit-learn's criterion, and
    then stops moving. ``dtype`` is that of the passes over the data (float32 halves the
    memory read); the subspace solves and the returned weights are float64. Everything runs on
    ``x``'s device.
    """
    x, t, squeeze = as_layers(x, y, dtype=dtype)
    t = t.double().to(x.device)  # labels may come on the CPU with activations on a GPU
    z, mean, std = standardize(x)
    layers, n, d = z.shape
    lam = torch.as_tensor(l2, dtype=torch.float64).to(x.device).reshape(-1).expand(layers).clone()
    if bool((lam <= 0).any()):
        raise ShapeError(f"l2 must be positive, got {l2!r}")
    if n < d and n <= DUAL_MAX_EXAMPLES:
        w, b = _solve_dual(z, t, lam, max_iter, tol)
    else:
        w, b = _solve(z.contiguous(), t, lam, max_iter, tol)
    weight, bias = to_raw_units(w, b, mean, std)
    return (weight[0], bias[0]) if squeeze else (weight, bias)


def _not_converged(count: int, max_iter: int, tol: float) -> None:
    warnings.warn(f"fit_logistic: {count} layer(s) did not reach the gradient tolerance {tol:g} in {max_iter} "
                  "iterations; raise max_iter or l2", RuntimeWarning, stacklevel=3)


def _solve(z, t, lam, max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The primal path: preconditioned subspace iterations on all layers at once."""
    layers, n, d = z.shape
    w = torch.zeros(layers, d, dtype=torch.float64, device=z.device)
    b = torch.zeros(layers, dtype=torch.float64, device=z.device)
    zt = z.transpose(1, 2).contiguous()  # both layouts: each product then reads rows contiguously
    rank = min(PRECONDITIONER_RANK, min(n, d) // 4)
    precondition = _Preconditioner(z, zt, rank) if rank >= 4 else None
    u = torch.zeros(layers, n, dtype=torch.float64, device=z.device)
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s_w, s_b, z s_w + s_b)
    live = torch.ones(layers, dtype=torch.bool, device=z.device)  # layers still iterating
    for _ in range(max_iter):
        r = torch.sigmoid(u) - t
        g_w = torch.bmm(r.to(z.dtype)[:, None, :], z)[:, 0].double() / n + lam[:, None] * w
        g_b = r.mean(1)
        live &= torch.maximum(g_w.abs().amax(1), g_b.abs()) > tol
        if not bool(live.any()):
            return w, b
        # converged layers stay in the batch (copying z to drop them costs more than it saves) but stop
        g_w, g_b = g_w * live[:, None], g_b * live
        d_w, d_b = precondition(g_w, g_b, u, lam) if precondition is not None else (g_w, g_b)
        d_img = torch.bmm(d_w.to(z.dtype)[:, None, :], zt)[:, 0].double() + d_b[:, None]
        basis_w = torch.stack([d_w, *(s[0] for s in steps)], 1)  # [L, k, d]
        basis_b = torch.stack([d_b, *(s[1] for s in steps)], 1)  # [L, k]
        images = torch.stack([d_img, *(s[2] for s in steps)], 1)  # [L, k, n]
        # unit-length directions keep the k x k Newton systems well scaled
        norms = (basis_w.square().sum(-1) + basis_b.square()).sqrt().clamp_min(1e-30)
        basis_w, basis_b, images = basis_w / norms[..., None], basis_b / norms, images / norms[..., None]
        a = _subspace_newton(u, t, images, basis_w @ basis_w.transpose(1, 2),
                             (basis_w @ w[..., None])[..., 0], lam) * live[:, None]
        s_w = (a[:, None, :] @ basis_w)[:, 0]
        s_b = (a * basis_b).sum(1)
        s_img = (a[:, None, :] @ images)[:, 0]
        w, b, u = w + s_w, b + s_b, u + s_img
        steps = [(s_w, s_b, s_img), *steps][:HISTORY]
    _not_converged(int(live.sum()), max_iter, tol)
    return w, b


def _solve_each(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``system[i]^-1 rhs[i]`` one matrix at a time.

    Batched LU in torch 2.13 on CPU with more than one thread returned wrong solutions or failed
    inside MKL (DLASWP) for matrices above about 128 x 128 (measured here); single solves are exact.
    """
    out = torch.empty_like(rhs)
    for i in range(system.shape[0]):
        solution, info = torch.linalg.solve_ex(system[i], rhs[i])
        if int(info) != 0 or not bool(torch.isfinite(solution).all()):
            solution = torch.linalg.lstsq(system[i], rhs[i][:, None]).solution[:, 0]
        out[i] = solution
    return out


def _solve_dual(z, t, lam, max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Damped Newton on the representer coefficients: ``w = z^T c``, ``u = K c + b`` with ``K = z z^T``.

    With fewer examples than features the optimum lies in the span of the examples, so the problem
    has ``n + 1`` unknowns. Each Newton step solves the kernel system with ``K`` factored out of the
    weight equations, ``(D K / n + l2 I) dc + D 1 db / n = -(r / n + l2 c)``, which stays well posed
    when ``K`` is singular. The stopping rule is the primal one (max-abs gradient), as in the primal path.
    """
    layers, n, d = z.shape
    zd = z.double()
    kernel = zd @ zd.transpose(1, 2)  # [L, n, n]
    c = torch.zeros(layers, n, dtype=torch.float64, device=z.device)
    b = torch.zeros(layers, dtype=torch.float64, device=z.device)
    eye = torch.eye(n, dtype=torch.float64, device=z.device)
    lam_ = lam[:, None]

    def objective(c_, b_):
        u_ = (kernel @ c_[..., None])[..., 0] + b_[:, None]
        loss = (torch.nn.functional.softplus(u_) - t * u_).mean(1)
        return loss + 0.5 * lam * (c_ * (u_ - b_[:, None])).sum(1), u_

    current, u = objective(c, b)
    for step_count in range(max_iter + 1):
        p = torch.sigmoid(u)
        r = p - t
        g_w = (zd.transpose(1, 2) @ (r / n + lam_ * c)[..., None])[..., 0]
        gradient = torch.maximum(g_w.abs().amax(1), r.mean(1).abs())
        if float(gradient.max()) <= tol:
            break
        if step_count == max_iter:
            _not_converged(int((gradient > tol).sum()), max_iter, tol)
            break
        weight = p * (1 - p) / n  # [L, n]
        system = torch.zeros(layers, n + 1, n + 1, dtype=torch.float64, device=z.device)
        system[:, :n, :n] = weight[..., None] * kernel + lam[:, None, None] * eye
        system[:, :n, n] = weight
        system[:, n, :n] = (weight[:, None, :] @ kernel)[:, 0]
        system[:, n, n] = weight.sum(1)
        rhs = torch.cat([-(r / n + lam_ * c), -r.mean(1, keepdim=True)], 1)
        step = _solve_each(system, rhs)
        dc, db = step[:, :n], step[:, n]
        scale = torch.ones(layers, dtype=torch.float64, device=z.device)
        for _ in range(30):  # backtracking per layer: damped Newton always descends on a convex objective
            trial, u_trial = objective(c + scale[:, None] * dc, b + scale * db)
            ok = trial <= current + 1e-12 * current.abs()
            if bool(ok.all()):
                break
            scale = torch.where(ok, scale, scale * 0.5)
        c, b, current, u = c + scale[:, None] * dc, b + scale * db, trial, u_trial
    return (zd.transpose(1, 2) @ c[..., None])[..., 0], b
