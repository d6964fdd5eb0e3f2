"""Synthetic contrast pairs with a planted truth direction and, optionally, a planted distractor.

For pair ``i`` with truth sign ``t_i`` and distractor sign ``w_i`` (both +-1):

    x_pos = base_i + offset_pos + a t_i u + c w_i v + noise
    x_neg = base_i + offset_neg - a t_i u - c w_i v + noise

``base`` is shared by both sides (it cancels in the differences), ``u`` and ``v`` are orthonormal.
Labels are exactly balanced and the distractor is exactly balanced within each truth class, so
``sum_i t_i w_i = 0``: in the differences, truth and distractor are uncorrelated and the
variance along ``v`` exceeds that along ``u`` whenever ``c > a``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Pairs:
    x_pos: torch.Tensor
    x_neg: torch.Tensor
    truth: torch.Tensor
    distractor: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor


def make_pairs(n: int = 400, d: int = 16, *, truth_scale: float = 3.0, distractor_scale: float = 0.0,
               noise: float = 0.3, seed: int = 0, blocks: int = 1) -> Pairs:
    """``blocks`` equal consecutive blocks, each exactly balanced (e.g. a train and a test half)."""
    size = n // blocks
    assert size * blocks == n and size % 4 == 0, "each block must hold a multiple of 4 pairs"
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))
    u, v = q[:, 0], q[:, 1]
    order = torch.cat([torch.randperm(size, generator=g) + k * size for k in range(blocks)])
    truth = (torch.arange(n) % 2 == 0)[order]
    distractor = ((torch.arange(n) // 2) % 2 == 0)[order]
    t, w = truth.double() * 2 - 1, distractor.double() * 2 - 1
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    planted = truth_scale * t[:, None] * u + distractor_scale * w[:, None] * v
    x_pos = base + 5.0 + planted + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    x_neg = base - 2.0 - planted + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return Pairs(x_pos, x_neg, truth, distractor, u, v)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))
