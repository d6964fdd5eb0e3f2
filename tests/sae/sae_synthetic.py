"""Planted sparse data for the SAE tests: activations that are sparse sums of known unit directions."""

from __future__ import annotations

import torch


def planted(n: int = 3000, d: int = 24, features: int = 48, active: int = 3, noise: float = 0.01,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [n, d], dictionary [features, d])`` with ``active`` features per row, coefficients in [0.5, 2.5]."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(features, d, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    index = torch.rand(n, features, generator=g).argsort(1)[:, :active]
    coef = torch.zeros(n, features).scatter(1, index, torch.rand(n, active, generator=g) * 2 + 0.5)
    x = coef @ dictionary + noise * torch.randn(n, d, generator=g) + 3.0  # an offset for b_dec to find
    return x, dictionary
