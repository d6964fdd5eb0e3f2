"""Several steering vectors at once: their geometry, their cross effects, and whether effects add.

If steering is linear, adding ``v1 + v2`` moves a behaviour by the sum of what ``v1`` and ``v2``
move it by alone. :func:`additivity` measures the gap; :func:`cross_effects` shows how much each
vector moves behaviours it was not made for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, ShapeError
from ..core.lever import as_model, check_strength
from .artifact import SteeringVector, applied
from .behaviour import Behaviour
from .dose import evaluate

compose = applied  # ``with compose(model, [v1, v2], [s1, s2]): ...``


def cosine_matrix(vectors: Sequence[SteeringVector]) -> torch.Tensor:
    """Cosine similarity ``[k, k]`` between the vectors' directions (float64)."""
    if not vectors:
        raise EmptyDataError("no vectors")
    widths = {v.d for v in vectors}
    if len(widths) != 1:
        raise ShapeError(f"vectors of different widths {sorted(widths)}")
    d = torch.stack([v.direction.double() for v in vectors])
    d = d / d.norm(dim=1, keepdim=True)
    return d @ d.T


@dataclass(frozen=True)
class CrossEffects:
    """``matrix[i, j]``: mean change of behaviour ``j`` when vector ``i`` is added alone."""

    vectors: list[str]
    behaviours: list[str]
    matrix: torch.Tensor
    cosine: torch.Tensor


def cross_effects(model, tokenizer, vectors: Mapping[str, SteeringVector], behaviours: Mapping[str, Behaviour],
                  prompts: Sequence[str], strength: float | Sequence[float] = 1.0) -> CrossEffects:
    """Every vector against every behaviour, each vector at ``strength`` (one or one per vector)."""
    view = as_model(model)
    module, tokenizer = view.module, tokenizer or view.tokenizer
    names = list(vectors)
    strengths = [strength] * len(names) if isinstance(strength, (int, float)) else list(strength)
    if len(strengths) != len(names):
        raise ShapeError(f"{len(names)} vectors but {len(strengths)} strengths")
    base = {b: fn(module, tokenizer, prompts) for b, fn in behaviours.items()}
    matrix = torch.zeros(len(names), len(behaviours), dtype=torch.float64)
    for i, name in enumerate(names):
        s = check_strength(strengths[i])
        with applied(view, [vectors[name]], [s]):
            for j, (b, fn) in enumerate(behaviours.items()):
                matrix[i, j] = (fn(module, tokenizer, prompts) - base[b]).mean()
    return CrossEffects(names, list(behaviours), matrix, cosine_matrix([vectors[n] for n in names]))


@dataclass(frozen=True)
class Additivity:
    """Mean effects of each vector alone, of both together, and how far the joint one is from the sum."""

    effect_first: float
    effect_second: float
    effect_joint: float
    per_example_first: torch.Tensor
    per_example_second: torch.Tensor
    per_example_joint: torch.Tensor

    @property
    def sum_of_effects(self) -> float:
        return self.effect_first + self.effect_second

    @property
    def gap(self) -> float:
        """``joint - (first + second)``: 0 when the effects add exactly."""
        return self.effect_joint - self.sum_of_effects

    @property
    def ratio(self) -> float:
        """``joint / (first + second)``: 1 when the effects add exactly."""
        total = self.sum_of_effects
        return self.effect_joint / total if total != 0 else float("nan")

    @property
    def r2(self) -> float:
        """Share of the per-example variance of the joint effect explained by the summed effects."""
        summed = self.per_example_first + self.per_example_second
        residual = ((self.per_example_joint - summed) ** 2).sum()
        total = ((self.per_example_joint - self.per_example_joint.mean()) ** 2).sum()
        return float(1 - residual / total) if total > 0 else float("nan")


def additivity(model, tokenizer, first: SteeringVector, second: SteeringVector, behaviour: Behaviour,
               prompts: Sequence[str], strengths: tuple[float, float] = (1.0, 1.0)) -> Additivity:
    """Effect of ``first + second`` added together against the sum of their effects alone."""
    view = as_model(model)
    tokenizer = tokenizer or view.tokenizer
    s1, s2 = check_strength(strengths[0]), check_strength(strengths[1])
    base = behaviour(view.module, tokenizer, prompts)
    e1 = evaluate(view, tokenizer, [first], [s1], behaviour, prompts) - base
    e2 = evaluate(view, tokenizer, [second], [s2], behaviour, prompts) - base
    both = evaluate(view, tokenizer, [first, second], [s1, s2], behaviour, prompts) - base
    return Additivity(float(e1.mean()), float(e2.mean()), float(both.mean()), e1, e2, both)
