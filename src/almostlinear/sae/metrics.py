"""The standard SAE scores, as plain functions of tensors.

- L0: mean number of non-zero latents per token.
- FVU (fraction of variance unexplained): ``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``; one
  minus it is the "variance explained" SAELens reports.
- CE loss recovered: ``(CE_ablated - CE_sae) / (CE_ablated - CE_clean)``: 1 when splicing the SAE
  in costs nothing, 0 when it is as bad as ablating the site (the ``ce_loss_score`` of SAELens).
"""

from __future__ import annotations

import torch

from ..core.errors import EmptyDataError, ShapeError


def l0(z: torch.Tensor) -> float:
    """Mean count of non-zero latents per row of ``z`` ``[n, width]``."""
    if z.numel() == 0:
        raise EmptyDataError("no latents to count")
    return float((z != 0).sum(-1).double().mean())


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained of ``x_hat`` as a reconstruction of ``x`` (both ``[n, d]``)."""
    if x.shape != x_hat.shape:
        raise ShapeError(f"x {tuple(x.shape)} and its reconstruction {tuple(x_hat.shape)} differ in shape")
    if x.shape[0] < 2:
        raise EmptyDataError("FVU needs at least two rows to have a variance")
    x, x_hat = x.double(), x_hat.double()
    total = (x - x.mean(0)).pow(2).sum()
    if total == 0:
        raise EmptyDataError("the activations have no variance: FVU is undefined")
    return float((x - x_hat).pow(2).sum() / total)


def ce_recovered(ce_clean: float, ce_sae: float, ce_ablated: float) -> float:
    """Share of the ablation's cross-entropy damage that splicing the SAE in avoids."""
    gap = ce_ablated - ce_clean
    if gap == 0:
        return float("nan")
    return (ce_ablated - ce_sae) / gap


def dead_fraction(frequency: torch.Tensor) -> float:
    """Share of latents that never fired (frequency 0)."""
    return float((frequency == 0).double().mean())
