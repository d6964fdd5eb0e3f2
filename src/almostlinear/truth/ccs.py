"""Contrast-consistent search (CCS, Burns et al., arXiv 2212.03827), batched over layers and restarts.

A linear probe ``p(z) = sigmoid(z @ w + b)`` on each side's normalised activation is trained,
without labels, so that the two answers of a pair get complementary probabilities and are not
both near one half:

    loss = mean[(p(z_pos) - (1 - p(z_neg)))^2 + min(p(z_pos), p(z_neg))^2] + l2 * |w|^2 / 2

The paper trains several random initialisations and keeps the one with the lowest loss; here
every (layer, restart) pair is an independent L-BFGS problem solved in one batch, so a layer's
result does not depend on which other layers were fitted alongside it. The loss depends on ``w``
only through its projections on the training activations, so the problem is solved exactly in
their span (``2n`` coordinates instead of ``d`` when ``2n < d``). The L2 penalty replaces the
paper's implicit regularisation by a short AdamW run: without it, when pairs are fewer than
dimensions, almost any labelling can be made "consistent" by a large enough ``w``. The default 0.1
(on activations normalised to unit average spread) gave the lowest *held-out* CCS loss, a
label-free criterion, among 0.01, 0.1 and 1 on SmolLM2-135M with 120 training pairs; larger values
pull CCS towards the top principal direction of the pairs.

Prediction: ``(p(z_pos) + 1 - p(z_neg)) / 2 > 1/2``, which holds exactly when
``(z_pos - z_neg) @ w > 0`` (the shared bias cancels), so CCS returns the same
:class:`~.methods.ContrastDirections` as the other methods, with decision bias 0.
"""

from __future__ import annotations

import torch

from ..core.errors import ChoiceError, ShapeError
from ._lbfgs import minimise_rows
from .methods import ContrastDirections
from .normalise import PairNormaliser, check_pairs


def ccs_loss(p_pos: torch.Tensor, p_neg: torch.Tensor) -> torch.Tensor:
    """Consistency plus confidence, averaged over the last dimension (the pairs)."""
    consistency = (p_pos - (1 - p_neg)) ** 2
    confidence = torch.minimum(p_pos, p_neg) ** 2
    return (consistency + confidence).mean(-1)


def _span_basis(z_pos: torch.Tensor, z_neg: torch.Tensor) -> torch.Tensor:
    """``[layers, d, r]`` orthonormal columns spanning the training activations (or the identity)."""
    layers, n, d = z_pos.shape
    if 2 * n >= d:
        return torch.eye(d, dtype=z_pos.dtype).expand(layers, d, d)
    stacked = torch.cat([z_pos, z_neg], dim=1)  # [layers, 2n, d]
    values, vectors = torch.linalg.eigh(stacked @ stacked.transpose(1, 2))
    keep = values > values[:, -1:] * 1e-10
    scale = torch.where(keep, values.clamp_min(1e-300).rsqrt(), torch.zeros_like(values))
    return stacked.transpose(1, 2) @ (vectors * scale[:, None, :])


def fit_ccs(x_pos: torch.Tensor, x_neg: torch.Tensor, *, restarts: int = 10, seed: int = 0, l2: float = 0.1,
            max_iter: int = 200, per_dimension: bool = False) -> ContrastDirections:
    """CCS directions for pairs ``[n, d]`` or ``[layers, n, d]``; the lowest-loss restart per layer.

    Deterministic for a given ``seed``: restart ``k`` starts from the same random direction on
    every layer.
    """
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ShapeError(f"restarts must be a positive integer, got {restarts!r}")
    if l2 < 0:
        raise ShapeError(f"l2 must be non-negative, got {l2}")
    x_pos, x_neg, _ = check_pairs(x_pos, x_neg)
    normaliser = PairNormaliser.fit(x_pos, x_neg, per_dimension=per_dimension)
    z_pos, z_neg = normaliser(x_pos, x_neg)
    layers, n, d = z_pos.shape
    basis = _span_basis(z_pos, z_neg)
    f_pos, f_neg = z_pos @ basis, z_neg @ basis  # [layers, n, r]
    r = basis.shape[-1]
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(restarts, d, generator=generator, dtype=torch.float64) / d ** 0.5
    w0 = torch.einsum("kd,ldr->lkr", start, basis)
    x0 = torch.cat([w0, torch.zeros(layers, restarts, 1, dtype=torch.float64)], dim=-1).reshape(-1, r + 1)

    def objective(params: torch.Tensor) -> torch.Tensor:
        params = params.reshape(layers, restarts, r + 1)
        w, b = params[..., :r], params[..., r:]
        p_pos = torch.sigmoid(torch.einsum("lnr,lkr->lkn", f_pos, w) + b)
        p_neg = torch.sigmoid(torch.einsum("lnr,lkr->lkn", f_neg, w) + b)
        return (ccs_loss(p_pos, p_neg) + 0.5 * l2 * (w ** 2).sum(-1)).reshape(-1)

    solved = minimise_rows(objective, x0, max_iter=max_iter).reshape(layers, restarts, r + 1)
    with torch.no_grad():
        total = objective(solved).reshape(layers, restarts)
        best = total.argmin(-1)
        chosen = solved[torch.arange(layers), best]  # [layers, r + 1]
        w, b = chosen[:, :r], chosen[:, r]
        weight = torch.einsum("ldr,lr->ld", basis, w)
        p_pos = torch.sigmoid(torch.einsum("lnd,ld->ln", z_pos, weight) + b[:, None])
        p_neg = torch.sigmoid(torch.einsum("lnd,ld->ln", z_neg, weight) + b[:, None])
        loss = ccs_loss(p_pos, p_neg)
    return ContrastDirections("ccs", weight, torch.zeros(layers, dtype=torch.float64), normaliser,
                              oriented=False, probe_bias=b, loss=loss, restart_objectives=total)


def credence(fit: ContrastDirections, x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
    """CCS's probability that each statement is true, ``(p(z_pos) + 1 - p(z_neg)) / 2``, ``[layers, n]``."""
    if fit.probe_bias is None:
        raise ChoiceError(f"credence needs a CCS fit; this is a {fit.method} fit, which has no probe bias: "
                          "use fit_ccs, or read the direction with fit.predict")
    z_pos, z_neg = fit.normaliser(x_pos, x_neg)
    p_pos = torch.sigmoid(torch.einsum("lnd,ld->ln", z_pos, fit.weight) + fit.probe_bias[:, None])
    p_neg = torch.sigmoid(torch.einsum("lnd,ld->ln", z_neg, fit.weight) + fit.probe_bias[:, None])
    return 0.5 * (p_pos + 1 - p_neg)
