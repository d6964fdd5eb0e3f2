"""Dose-response of a steering vector: effect against strength, its linearity, per-example
steerability, side effects, and the automatic choice of layer and strength under a KL budget.

Per-example steerability is the least-squares slope of an example's behaviour score against the
strength; examples whose slope has the wrong sign are anti-steerable (Tan et al., arXiv
2407.12404, find nearly half of the inputs anti-steerable on some datasets).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..core.errors import EmptyDataError, ShapeError
from ..core.lever import as_model, check_strength
from ..data.statements import split
from .artifact import SteeringVector, applied
from .behaviour import Behaviour
from .cost import SideEffects, side_effects
from .fit import fit_steering_layers


def linear_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares ``y ~ slope * x + intercept`` along dim 0 of ``y`` ``[S, ...]``; returns slope,
    intercept and R^2 (1 where ``y`` is constant and fitted exactly)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    if x.dim() != 1 or y.shape[0] != x.shape[0] or x.shape[0] < 2:
        raise ShapeError(f"need x [S] with S >= 2 and y [S, ...]; got {tuple(x.shape)} and {tuple(y.shape)}")
    shape = (-1,) + (1,) * (y.dim() - 1)
    xc = (x - x.mean()).reshape(shape)
    yc = y - y.mean(0)
    slope = (xc * yc).sum(0) / (xc**2).sum()
    intercept = y.mean(0) - slope * x.mean()
    residual = ((yc - slope * xc) ** 2).sum(0)
    total = (yc**2).sum(0)
    r2 = torch.where(total > 0, 1 - residual / total.clamp_min(1e-300), torch.ones_like(total))
    return slope, intercept, r2


def steerability(scores: torch.Tensor, strengths) -> torch.Tensor:
    """Per-example slope of the score ``[S, n]`` against the strengths ``[S]``."""
    slope, _, _ = linear_fit(torch.as_tensor(strengths, dtype=torch.float64), scores)
    return slope


def anti_steerable_fraction(slopes: torch.Tensor, sign: int = 1) -> float:
    """Share of examples whose slope points against the intended direction ``sign``."""
    slopes = torch.as_tensor(slopes)
    if slopes.numel() == 0:
        raise EmptyDataError("no examples")
    return float(((slopes * sign) < 0).double().mean())


@dataclass(frozen=True)
class DoseResponse:
    """Behaviour scores ``[S, n]`` at each strength, and side effects on neutral text per strength."""

    strengths: list[float]
    scores: torch.Tensor
    side: list[SideEffects | None] = field(default_factory=list)

    @property
    def baseline(self) -> torch.Tensor:
        """Scores at strength 0 (always measured)."""
        return self.scores[self.strengths.index(0.0)]

    @property
    def effects(self) -> torch.Tensor:
        """Scores minus the unsteered score, per strength and example."""
        return self.scores - self.baseline

    @property
    def mean_effect(self) -> list[float]:
        return self.effects.mean(1).tolist()

    @property
    def stderr(self) -> list[float]:
        n = self.scores.shape[1]
        return (self.effects.std(1) / math.sqrt(n)).tolist() if n > 1 else [0.0] * len(self.strengths)

    def linearity(self, within: float | None = None) -> dict:
        """Slope, intercept and R^2 of the mean score against strength (optionally for |s| <= within)."""
        keep = [i for i, s in enumerate(self.strengths) if within is None or abs(s) <= within + 1e-12]
        if len(keep) < 2:
            raise ShapeError("need at least two strengths for a linear fit")
        x = torch.tensor([self.strengths[i] for i in keep], dtype=torch.float64)
        slope, intercept, r2 = linear_fit(x, self.scores[keep].mean(1))
        return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2)}

    @property
    def slopes(self) -> torch.Tensor:
        return steerability(self.scores, self.strengths)

    def anti_steerable(self, sign: int = 1) -> float:
        return anti_steerable_fraction(self.slopes, sign)

    @property
    def kl(self) -> list[float | None]:
        return [s.kl if s is not None else None for s in self.side]

    @property
    def delta_ce(self) -> list[float | None]:
        return [s.delta_ce if s is not None else None for s in self.side]

    def as_dict(self) -> dict:
        return {"strengths": self.strengths, "mean_effect": self.mean_effect, "stderr": self.stderr,
                "linearity": self.linearity(), "anti_steerable": self.anti_steerable(),
                "kl": self.kl, "delta_ce": self.delta_ce}


def evaluate(model, tokenizer, vectors: Sequence[SteeringVector], strengths: Sequence[float],
             behaviour: Behaviour, prompts: Sequence[str], *, positions=None, units: str | None = None) -> torch.Tensor:
    """Behaviour scores with ``vectors`` added at ``strengths`` (nothing added when all are 0)."""
    view = as_model(model)
    tokenizer = tokenizer or view.tokenizer
    if all(float(s) == 0.0 for s in strengths):
        return behaviour(view.module, tokenizer, prompts)
    with applied(view, vectors, strengths, positions=positions, units=units) as module:
        return behaviour(module, tokenizer, prompts)


def dose_response(model, tokenizer, vector: SteeringVector, prompts: Sequence[str], strengths: Sequence[float],
                  behaviour: Behaviour, *, neutral: Sequence[str] | None = None, positions=None,
                  units: str | None = None, max_length: int = 64, batch_size: int = 8,
                  progress: bool = False) -> DoseResponse:
    """Score ``behaviour`` on ``prompts`` at each strength (0 is added when missing) and, when
    ``neutral`` texts are given, the KL and cross-entropy change there at each strength.

    ``model`` is an ``nn.Module`` or a ``LoadedModel``; a vector fitted on another model warns.
    """
    view = as_model(model)
    module, tokenizer = view.module, tokenizer or view.tokenizer
    prompts = list(prompts)
    if not prompts:
        raise EmptyDataError("no prompts to steer")
    values = sorted({check_strength(s) for s in strengths} | {0.0})
    rows, side = [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(values), desc="dose-response", unit="strength")
    try:
        for s in values:
            rows.append(evaluate(view, tokenizer, [vector], [s], behaviour, prompts, positions=positions,
                                 units=units))
            if neutral:
                # at strength 0 nothing is added: one pass gives the base cross-entropy and KL 0
                steer = None if s == 0.0 else (lambda s=s: vector.apply(view, s, positions=positions, units=units))
                side.append(side_effects(module, tokenizer, neutral, steer, max_length=max_length,
                                         batch_size=batch_size, skip_first=True))
            else:
                side.append(None)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return DoseResponse(values, torch.stack(rows), side)


@dataclass(frozen=True)
class Choice:
    """The layer and strength with the largest validation effect under the KL budget."""

    layer: int | None
    strength: float | None
    vector: SteeringVector | None
    kl_budget: float
    grid: list[dict]  # per (layer, strength): validation effect and KL
    test_effect: float | None
    test_kl: float | None
    validation_prompts: int
    test_prompts: int


def choose_layer_and_strength(model, tokenizer, pairs, prompts: Sequence[str], behaviour: Behaviour,
                              neutral: Sequence[str], *, layers: Sequence[int], strengths: Sequence[float],
                              kl_budget: float = 0.1, site: str = "resid_post", method: str = "mean_diff",
                              sign: int = 1, held_out: float = 0.5, seed: int = 0, max_length: int = 64,
                              batch_size: int = 8, progress: bool = False) -> Choice:
    """Fit a vector per layer on ``pairs``; pick the (layer, strength) whose mean effect (times
    ``sign``) on a validation part of ``prompts`` is largest while the KL on a validation part of
    ``neutral`` stays within ``kl_budget``; report its effect and KL on the held-out parts of both
    (``held_out`` of each), which played no part in the choice.

    The KL budget of 0.1 nats follows the filter of arXiv 2406.11717.
    """
    view = as_model(model)
    module, tokenizer = view.module, tokenizer or view.tokenizer
    prompts = list(prompts)
    if len(prompts) < 2:
        raise EmptyDataError("need at least two prompts to hold some out")
    val, test = split(prompts, 1 - held_out, seed=seed, key=lambda p: p)
    neutral_val, neutral_test = split(list(neutral), 1 - held_out, seed=seed, key=lambda t: t)
    if not val or not test or not neutral_val or not neutral_test:
        raise EmptyDataError("the held-out split left one side empty: pass more prompts and neutral texts")
    vectors = fit_steering_layers(view, tokenizer, pairs, layers=layers, site=site, method=method,
                                  batch_size=batch_size, max_length=max_length)
    grid: list[dict] = []
    best = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(vectors) * len(strengths), desc="layer x strength", unit="run")
    base_val = behaviour(module, tokenizer, val)
    try:
        for layer, vector in vectors.items():
            for s in strengths:
                s = check_strength(s)
                effect = float(((evaluate(view, tokenizer, [vector], [s], behaviour, val) - base_val) * sign).mean())
                kl = side_effects(module, tokenizer, neutral_val, lambda v=vector, s=s: v.apply(view, s),
                                  max_length=max_length, batch_size=batch_size, skip_first=True).kl
                row = {"layer": layer, "strength": s, "effect": effect, "kl": kl, "within_budget": kl <= kl_budget}
                grid.append(row)
                if row["within_budget"] and (best is None or effect > best["effect"]):
                    best = row
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if best is None:
        return Choice(None, None, None, kl_budget, grid, None, None, len(val), len(test))
    chosen = vectors[best["layer"]]
    base_test = behaviour(module, tokenizer, test)
    test_effect = float(((evaluate(view, tokenizer, [chosen], [best["strength"]], behaviour, test)
                          - base_test) * sign).mean())
    test_kl = side_effects(module, tokenizer, neutral_test, lambda: chosen.apply(view, best["strength"]),
                           max_length=max_length, batch_size=batch_size, skip_first=True).kl
    return Choice(best["layer"], best["strength"], chosen, kl_budget, grid, test_effect, test_kl, len(val), len(test))
