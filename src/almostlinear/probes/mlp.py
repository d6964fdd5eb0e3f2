"""A one-hidden-layer MLP probe, trained on many layers at once: what a linear read misses.

Hewitt and Liang (arXiv 1909.03368) find MLP probes reach similar accuracy to linear ones but are
far less selective; the gap "MLP accuracy - linear accuracy" per layer says how much of a property
is present but not linearly readable. Each layer gets its own network (the layers are a batch
dimension of every matrix product), trained full-batch with AdamW and stopped early, per layer, on
the loss of a held-out validation part (grouped, when groups are given, like the test folds).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError
from ._data import as_layers, standardize
from .cv import grouped_folds


@dataclass(frozen=True)
class MLPProbe:
    """``decision(x) = relu(z W1 + b1) w2 + b2`` with ``z`` standardised per layer; > 0 means True."""

    w1: torch.Tensor  # [layers, d, hidden]
    b1: torch.Tensor  # [layers, hidden]
    w2: torch.Tensor  # [layers, hidden]
    b2: torch.Tensor  # [layers]
    mean: torch.Tensor  # [layers, d]
    std: torch.Tensor  # [layers, d]
    epochs: torch.Tensor  # [layers]: the epoch whose weights were kept

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        x = x[None] if x.dim() == 2 else x
        z = ((x.double() - self.mean[:, None]) / self.std[:, None]).to(self.w1.dtype)
        return _forward(z, self.w1, self.b1, self.w2, self.b2)

    def accuracy(self, x: torch.Tensor, y) -> torch.Tensor:
        """Accuracy per layer; ``y`` booleans or 0/1."""
        truth = torch.as_tensor(y).reshape(-1).bool()
        return ((self.decision(x) > 0) == truth).double().mean(-1)


def _forward(z, w1, b1, w2, b2):
    hidden = torch.relu(torch.baddbmm(b1[:, None, :], z, w1))
    return torch.einsum("lnh,lh->ln", hidden, w2) + b2[:, None]


def _split(n: int, groups, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(2, round(1 / val_fraction))
    val = grouped_folds(groups, k, n=n, seed=seed)[0]
    fit = torch.ones(n, dtype=torch.bool)
    fit[val] = False
    return fit.nonzero()[:, 0], val


def fit_mlp(x: torch.Tensor, y, *, hidden: int = 64, weight_decay: float = 1e-2, lr: float = 3e-3,
            max_epochs: int = 500, patience: int = 30, val_fraction: float = 0.2,
            groups: Sequence[Hashable] | None = None, seed: int = 0) -> MLPProbe:
    """Train one MLP probe per layer of ``x`` (``[n, d]`` or ``[layers, n, d]``).

    A ``val_fraction`` of the examples (whole groups) is held out for early stopping: each layer
    keeps the weights of its epoch with the lowest validation loss, and training ends once no layer
    has improved for ``patience`` epochs.
    """
    x, t, _ = as_layers(x, y)
    layers, n, d = x.shape
    if groups is not None and len(groups) != n:
        raise EmptyDataError(f"x has {n} examples but groups has {len(groups)} entries")
    fit_rows, val_rows = _split(n, groups, val_fraction, seed)
    if torch.unique(t[fit_rows]).numel() != 2:
        raise EmptyDataError("the training part of the MLP probe holds one class only")
    z_fit, mean, std = standardize(x[:, fit_rows])
    z_val = (x[:, val_rows] - mean) / std
    z_fit, z_val = z_fit.float(), z_val.float()
    t_fit, t_val = t[fit_rows].float(), t[val_rows].float()
    g = torch.Generator().manual_seed(seed)
    bound1, bound2 = 1 / math.sqrt(d), 1 / math.sqrt(hidden)
    params = [
        ((torch.rand(layers, d, hidden, generator=g) * 2 - 1) * bound1).requires_grad_(),
        torch.zeros(layers, hidden).requires_grad_(),
        ((torch.rand(layers, hidden, generator=g) * 2 - 1) * bound2).requires_grad_(),
        torch.zeros(layers).requires_grad_(),
    ]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    best = [p.detach().clone() for p in params]
    best_loss = torch.full((layers,), float("inf"))
    best_epoch = torch.zeros(layers, dtype=torch.long)
    loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
    with torch.enable_grad():
        for epoch in range(max_epochs):
            optimizer.zero_grad()
            loss = loss_fn(_forward(z_fit, *params), t_fit.expand(layers, -1), reduction="none").mean(1)
            loss.sum().backward()  # layers are independent: the sum trains each on its own loss
            optimizer.step()
            with torch.no_grad():
                val = loss_fn(_forward(z_val, *params), t_val.expand(layers, -1), reduction="none").mean(1)
                better = val < best_loss - 1e-6
                best_loss = torch.where(better, val, best_loss)
                best_epoch = torch.where(better, torch.tensor(epoch), best_epoch)
                for kept, current in zip(best, params):
                    shape = (layers,) + (1,) * (current.dim() - 1)
                    kept.copy_(torch.where(better.reshape(shape), current, kept))
            if bool((epoch - best_epoch >= patience).all()):
                break
    return MLPProbe(*best, mean[:, 0], std[:, 0], best_epoch)
