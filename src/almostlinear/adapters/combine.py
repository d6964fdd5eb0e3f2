"""Exact arithmetic on LoRA adapters: what adds is ΔW = scale·BA, so combine that.

* :func:`combine_exact` concatenates the factors along the rank: B_cat A_cat = Σ wᵢ sᵢ Bᵢ Aᵢ
  exactly, at rank Σ rᵢ.
* :func:`combine_svd` returns the best rank-k factors of the same sum (Eckart–Young) and states
  the relative Frobenius error of the truncation per module. The SVD runs on an R×R core
  (R = Σ rᵢ) after two thin QR factorisations, so no out×in matrix is decomposed.
* :func:`linear_factor_mix` reproduces the factor-wise mixing behind PEFT's ``linear``
  combination (√|w·s| on A and on B separately), whose product has cross terms BᵢAⱼ, and
  :func:`relative_error` measures any adapter against the exact sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.errors import AlmostLinearError, EmptyDataError
from .lora import LoraAdapter, LoraFactors

Tensor = torch.Tensor


def _prepare(adapters: Sequence[LoraAdapter], weights: Sequence[float] | None) -> tuple[list[str], list[float]]:
    if not adapters:
        raise EmptyDataError("no adapters to combine")
    w = [1.0] * len(adapters) if weights is None else [float(x) for x in weights]
    if len(w) != len(adapters):
        raise AlmostLinearError(f"{len(w)} weights for {len(adapters)} adapters")
    names: list[str] = []
    for a in adapters:
        names += [n for n in a.modules if n not in names]
    for n in names:
        present = [a.modules[n] for a in adapters if n in a.modules]
        shapes = {(f.B.shape[0], f.A.shape[1]) for f in present}
        if len(shapes) > 1:
            raise AlmostLinearError(f"module {n!r}: adapters disagree on its shape {sorted(shapes)}")
        if len({f.fan_in_fan_out for f in present}) > 1:
            raise AlmostLinearError(f"module {n!r}: adapters disagree on fan_in_fan_out")
    return names, w


def exact_sum(adapters: Sequence[LoraAdapter], weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """Σ wᵢ ΔWᵢ per module, float64 (modules missing from an adapter contribute nothing there)."""
    names, w = _prepare(adapters, weights)
    out = {}
    for n in names:
        out[n] = sum(wi * a.modules[n].delta() for a, wi in zip(adapters, w) if n in a.modules)
    return out


def _concat(adapters: Sequence[LoraAdapter], w: Sequence[float], name: str) -> tuple[Tensor, Tensor, bool]:
    As, Bs, fan = [], [], False
    for a, wi in zip(adapters, w):
        if name in a.modules and wi != 0:
            f = a.modules[name]
            As.append(f.A.double() * (wi * f.scale))
            Bs.append(f.B.double())
            fan = f.fan_in_fan_out
    if not As:
        f = next(a.modules[name] for a in adapters if name in a.modules)
        return torch.zeros(1, f.A.shape[1], dtype=torch.float64), torch.zeros(f.B.shape[0], 1, dtype=torch.float64), \
            f.fan_in_fan_out
    return torch.cat(As, 0), torch.cat(Bs, 1), fan


def combine_exact(adapters: Sequence[LoraAdapter], weights: Sequence[float] | None = None) -> LoraAdapter:
    """The weighted sum of adapters as one adapter of rank Σ rᵢ, exact (factors concatenated, float64)."""
    names, w = _prepare(adapters, weights)
    modules = {}
    for n in names:
        A, B, fan = _concat(adapters, w, n)
        modules[n] = LoraFactors(A, B, 1.0, fan)
    return LoraAdapter(modules, dict(adapters[0].config))


@dataclass(frozen=True)
class SvdCombination:
    """Rank-truncated combination; ``errors[module]`` = ‖ΔW − ΔW_k‖_F / ‖ΔW‖_F, ``total_error`` over all modules."""

    adapter: LoraAdapter
    errors: dict[str, float]
    total_error: float


def combine_svd(adapters: Sequence[LoraAdapter], weights: Sequence[float] | None = None, *,
                rank: int | None = None) -> SvdCombination:
    """The best rank-``rank`` adapter for Σ wᵢ ΔWᵢ (default: the largest input rank), with its error stated."""
    names, w = _prepare(adapters, weights)
    k_default = max(f.rank for a in adapters for f in a.modules.values())
    k = int(rank or k_default)
    if k < 1:
        raise AlmostLinearError(f"rank must be at least 1, got {rank}")
    modules, errors = {}, {}
    lost_total = kept_total = 0.0
    for n in names:
        A, B, fan = _concat(adapters, w, n)
        qb, rb = torch.linalg.qr(B)        # B = Qb Rb
        qa, ra = torch.linalg.qr(A.T)      # A = Ra^T Qa^T
        u, s, vh = torch.linalg.svd(rb @ ra.T)
        kk = min(k, s.numel())
        new_b = qb @ (u[:, :kk] * s[:kk])
        new_a = vh[:kk] @ qa.T
        total = float(s.pow(2).sum())
        lost = float(s[kk:].pow(2).sum())
        errors[n] = math.sqrt(lost / total) if total > 0 else 0.0
        lost_total += lost
        kept_total += total
        modules[n] = LoraFactors(new_a, new_b, 1.0, fan)
    total_error = math.sqrt(lost_total / kept_total) if kept_total > 0 else 0.0
    return SvdCombination(LoraAdapter(modules, dict(adapters[0].config)), errors, total_error)


def linear_factor_mix(adapters: Sequence[LoraAdapter], weights: Sequence[float] | None = None) -> LoraAdapter:
    """Factor-wise mixing as PEFT's ``linear`` combination does it: A = Σ sign(wᵢ)√|wᵢsᵢ| Aᵢ,
    B = Σ √|wᵢsᵢ| Bᵢ (equal ranks needed). Its product is not Σ wᵢ ΔWᵢ: it carries cross terms."""
    names, w = _prepare(adapters, weights)
    modules = {}
    for n in names:
        present = [(a.modules[n], wi) for a, wi in zip(adapters, w) if n in a.modules]
        if len({f.rank for f, _ in present}) > 1:
            raise AlmostLinearError(f"module {n!r}: factor-wise mixing needs equal ranks")
        A = sum(math.copysign(math.sqrt(abs(wi * f.scale)), wi * f.scale) * f.A.double() for f, wi in present)
        B = sum(math.sqrt(abs(wi * f.scale)) * f.B.double() for f, wi in present)
        modules[n] = LoraFactors(A, B, 1.0, present[0][0].fan_in_fan_out)
    return LoraAdapter(modules, dict(adapters[0].config))


def relative_error(candidate: LoraAdapter, adapters: Sequence[LoraAdapter],
                   weights: Sequence[float] | None = None) -> dict[str, float]:
    """Per module ‖ΔW_candidate − Σ wᵢ ΔWᵢ‖_F / ‖Σ wᵢ ΔWᵢ‖_F, plus ``"total"`` over all modules."""
    target = exact_sum(adapters, weights)
    out, num, den = {}, 0.0, 0.0
    for n, t in target.items():
        if n not in candidate.modules:
            raise AlmostLinearError(f"the candidate adapter lacks module {n!r}")
        diff = float((candidate.modules[n].delta() - t).pow(2).sum())
        ref = float(t.pow(2).sum())
        out[n] = math.sqrt(diff / ref) if ref > 0 else math.sqrt(diff)
        num, den = num + diff, den + ref
    out["total"] = math.sqrt(num / den) if den > 0 else math.sqrt(num)
    return out
