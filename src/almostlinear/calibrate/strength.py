"""Choose a lever's strength (and which of several candidate levers, e.g. one per layer) under a KL
budget on neutral text, for any lever that has a strength.

For every candidate and strength, the lever is applied and two things are measured on validation
parts of the data: the mean per-token ``KL(base || levered)`` on neutral text (the cost, from
:func:`~almostlinear.steering.cost.side_effects`, leaving out each text's first prediction), and,
when a behaviour is given, the mean change of its score on prompts (the effect). The choice is the
largest effect within the budget, or without a behaviour the largest ``|strength|`` within it.
Its effect and KL are then measured again on held-out parts that played no part in the choice, so
they are not inflated by the search. The KL budget of 0.1 nats follows the filter of arXiv
2406.11717.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import AlmostLinearError, EmptyDataError, LeverError, NonFiniteError, ShapeError, check_choice
from ._levers import Behaviour, check_held_out, labelled, module_and_tokenizer, units_of


@dataclass(frozen=True)
class StrengthChoice:
    """The chosen candidate and strength, and what every other one measured.

    ``effect`` and ``kl`` are the chosen point's validation numbers (those the choice was made on);
    ``test_effect`` and ``test_kl`` are measured on the held-out parts and are the numbers to report.
    Effects are mean ``(levered - base) * sign`` behaviour scores per prompt (``None`` without a
    behaviour); KL is mean ``KL(base || levered)`` in nats per predicted token. Every strength field
    is ``None`` when no point stayed within the budget.
    """

    label: Any  # the chosen candidate's key (its kind when one lever was given)
    strength: float | None
    units: str | None
    kl_budget: float
    effect: float | None
    kl: float | None
    test_effect: float | None
    test_kl: float | None
    test_delta_ce: float | None  # held-out cross-entropy change, nats per token
    grid: tuple[dict, ...]  # per (label, strength): validation effect, KL, delta CE, within_budget
    sign: int = 1
    validation_texts: int = 0
    test_texts: int = 0
    validation_prompts: int = 0
    test_prompts: int = 0
    lever: Any = field(default=None, repr=False, compare=False)  # the chosen lever itself

    @property
    def found(self) -> bool:
        """Whether some candidate and strength stayed within the budget."""
        return self.strength is not None

    def as_dict(self) -> dict:
        return {"label": self.label, "strength": self.strength, "units": self.units, "kl_budget": self.kl_budget,
                "sign": self.sign, "effect": self.effect, "kl": self.kl, "test_effect": self.test_effect,
                "test_kl": self.test_kl, "test_delta_ce": self.test_delta_ce, "grid": [dict(r) for r in self.grid],
                "validation_texts": self.validation_texts, "test_texts": self.test_texts,
                "validation_prompts": self.validation_prompts, "test_prompts": self.test_prompts}

    def __str__(self) -> str:
        if not self.found:
            return f"no candidate stayed within KL {self.kl_budget} nats/token ({len(self.grid)} points tried)"
        effect = "" if self.test_effect is None else f", held-out effect {self.test_effect:+.4f}"
        return (f"{self.label} at strength {self.strength:g} ({self.units}): held-out KL {self.test_kl:.4f} "
                f"nats/token{effect} (budget {self.kl_budget})")


def _strengths(strengths: Sequence[float], units: Mapping[Any, str]) -> list[float]:
    from ..core.lever import check_strength

    try:
        values = list(strengths)
    except TypeError:
        values = [strengths]
    if not values:
        raise EmptyDataError("no strengths to try: pass at least one")
    out: list[float] = []
    for value in values:
        for unit in set(units.values()):
            number = check_strength(value, unit)
        if number not in out:
            out.append(number)
    return out


def _split(items: Sequence[str], held_out: float, seed: int, what: str) -> tuple[list[str], list[str]]:
    from ..data.statements import split

    items = list(items)
    if any(not isinstance(t, str) or not t for t in items):
        raise EmptyDataError(f"every one of the {what} must be a non-empty string")
    validation, test = split(items, 1 - held_out, seed=seed, key=lambda t: t)
    if not validation or not test:
        raise EmptyDataError(f"holding out {held_out:g} of {len(items)} {what} left one side empty: pass more "
                             f"distinct {what}")
    return validation, test


def _mean_effect(scores: torch.Tensor, base: torch.Tensor, sign: int) -> float:
    scores, base = torch.as_tensor(scores).double(), torch.as_tensor(base).double()
    if scores.shape != base.shape:
        raise ShapeError(f"the behaviour gave {tuple(scores.shape)} scores with the lever and "
                             f"{tuple(base.shape)} without: it must give one score per prompt")
    value = float(((scores - base) * sign).mean())
    if not math.isfinite(value):
        raise NonFiniteError("the behaviour gave NaN or infinite scores")
    return value


def choose_strength(candidates, model, tokenizer, neutral: Sequence[str], *, strengths: Sequence[float],
                    kl_budget: float = 0.1, behaviour: Behaviour | None = None, prompts: Sequence[str] | None = None,
                    sign: int = 1, held_out: float = 0.5, seed: int = 0, max_length: int = 64,
                    batch_size: int = 8, options: Mapping[str, Any] | None = None,
                    progress: bool = False) -> StrengthChoice:
    """Pick the candidate and strength with the largest effect whose neutral-text KL stays within
    ``kl_budget`` (see the module docstring).

    ``candidates`` is one lever or a mapping label -> lever (e.g. one per layer); each is applied as
    ``lever.apply(model, strength=s, **options)`` for every ``s`` in ``strengths``, which are in the
    lever's own unit (``provenance.units``, else its first ``strength_units``); ``options`` go to every
    ``apply`` (e.g. a steering vector's ``units`` or ``positions``). ``behaviour(module,
    tokenizer, prompts)`` returns one score per prompt; ``sign=-1`` asks for the score to fall.
    ``held_out`` is the share of ``neutral`` (and of ``prompts``) kept for the final numbers, split
    reproducibly by ``seed``.
    """
    from ..steering.cost import side_effects, side_effects_many

    levers = labelled(candidates, "candidate")
    units = {label: units_of(lever) for label, lever in levers.items()}
    without = [label for label, unit in units.items() if unit == "none"]
    if without:
        raise LeverError(f"candidate(s) {without} have no strength (units 'none'): there is nothing to choose; "
                         "measure them with steering.cost.side_effects instead")
    values = _strengths(strengths, units)
    budget = float(kl_budget)
    if not math.isfinite(budget):
        raise NonFiniteError(f"kl_budget must be a finite number of nats per token, got {kl_budget!r}")
    if budget < 0:
        raise AlmostLinearError(f"kl_budget must be >= 0 (nats per token), got {kl_budget!r}")
    sign = check_choice(sign, (1, -1), "sign")
    held_out = check_held_out(held_out)
    if (behaviour is None) != (prompts is None):
        raise AlmostLinearError("pass behaviour and prompts together (or neither, to choose by strength alone)")
    module, tokenizer = module_and_tokenizer(model, tokenizer)
    neutral_val, neutral_test = _split(neutral, held_out, seed, "neutral texts")
    prompt_val, prompt_test = _split(prompts, held_out, seed, "prompts") if behaviour is not None else ([], [])
    options = dict(options or {})
    measure = dict(max_length=max_length, batch_size=batch_size, skip_first=True)

    def intervention(lever, s):
        return lambda: lever.apply(model, strength=s, **options)

    def effect_of(lever, s, texts, base) -> float:
        with lever.apply(model, strength=s, **options) as levered:
            return _mean_effect(behaviour(levered, tokenizer, texts), base, sign)

    base_val = behaviour(module, tokenizer, prompt_val) if behaviour is not None else None
    grid: list[dict] = []
    best: dict | None = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(levers) * len(values), desc="lever x strength", unit="run")
    try:
        for label, lever in levers.items():
            # one unlevered pass per batch serves every strength of this candidate
            side = side_effects_many(module, tokenizer, neutral_val,
                                     {str(i): intervention(lever, s) for i, s in enumerate(values)}, **measure)
            for i, s in enumerate(values):
                effect = effect_of(lever, s, prompt_val, base_val) if behaviour is not None else None
                kl = side[str(i)].kl
                row = {"label": label, "strength": s, "effect": effect, "kl": kl,
                       "delta_ce": side[str(i)].delta_ce, "within_budget": kl <= budget}
                grid.append(row)
                if row["within_budget"] and (best is None or _key(row) > _key(best)):
                    best = row
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    counts = dict(sign=sign, validation_texts=len(neutral_val), test_texts=len(neutral_test),
                  validation_prompts=len(prompt_val), test_prompts=len(prompt_test))
    if best is None:
        return StrengthChoice(None, None, None, budget, None, None, None, None, None, tuple(grid), **counts)
    lever, s = levers[best["label"]], best["strength"]
    test_side = side_effects(module, tokenizer, neutral_test, intervention(lever, s), **measure)
    test_effect = None
    if behaviour is not None:
        test_effect = effect_of(lever, s, prompt_test, behaviour(module, tokenizer, prompt_test))
    unit = options.get("units") or units[best["label"]]  # a lever that takes units= may be told another
    return StrengthChoice(best["label"], s, unit, budget, best["effect"], best["kl"], test_effect,
                          test_side.kl, test_side.delta_ce, tuple(grid), lever=lever, **counts)


def _key(row: dict) -> tuple[float, float]:
    """Larger is better: the effect (or ``|strength|`` without a behaviour), then the lower KL."""
    first = row["effect"] if row["effect"] is not None else abs(row["strength"])
    return first, -row["kl"]
