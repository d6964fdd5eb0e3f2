"""Interference in a stack of levers applied together: does the joint change equal the sum of the
single changes, and do the levers write or read overlapping subspaces?

Measured: on neutral text, ``Δ_i`` is the change lever ``i`` alone makes to the next-token
log-probabilities (the whole vocabulary, at every predicted token but each text's first, as
:mod:`~almostlinear.steering.cost` scores them), and ``Δ_joint`` the change all of them make
together. If levers composed linearly, ``Δ_joint`` would equal ``ΣΔ_i``. The report gives the
relative gap ``‖Δ_joint − ΣΔ_i‖ / ‖ΣΔ_i‖`` (0: perfectly additive; norms over tokens × vocabulary),
the cosine between ``Δ_joint`` and ``ΣΔ_i`` (1: same direction, perhaps another size), the same for
every pair of levers, and KL divergences of the joint distribution from the base and from each
lever alone. With a behaviour, the predicted joint effect (the sum of single effects) is set
beside the measured one.

Geometric: levers that offer ``footprint()`` (see :mod:`.footprint`) are compared by the
principal-angle cosines between the subspaces they write or read, for every pair that lives in the
same space; levers without one are listed as having no footprint.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import EmptyDataError, LeverError, NonFiniteError, ShapeError
from ._levers import Behaviour, finite_or_none, labelled, module_and_tokenizer, units_of
from .footprint import Overlap, footprints_of, overlaps


@dataclass(frozen=True)
class InterferenceReport:
    """How far a stack of levers is from composing additively (see the module docstring).

    ``gap`` and ``cosine`` compare ``Δ_joint`` with ``ΣΔ_i``; ``pair_gap[i, j]`` and
    ``pair_cosine[i, j]`` compare levers ``i`` and ``j`` applied together with the sum of their single
    changes (diagonal NaN). RMS values are ``‖Δ‖`` per predicted token, in nats. ``kl_joint`` is
    ``KL(base || joint)``, ``kl_alone[i]`` is ``KL(base || lever i)`` and ``kl_joint_from_alone[i]``
    is ``KL(lever i || joint)``: what the other levers add on top of ``i``; all nats per token.
    """

    labels: tuple[str, ...]
    strengths: tuple[float, ...]
    n_tokens: int
    gap: float
    cosine: float
    joint_rms: float
    sum_rms: float
    alone_rms: tuple[float, ...]
    pair_gap: torch.Tensor
    pair_cosine: torch.Tensor
    kl_joint: float
    kl_alone: tuple[float, ...]
    kl_joint_from_alone: tuple[float, ...]
    effects_alone: tuple[float, ...] | None = None  # mean behaviour change per lever alone
    effect_predicted: float | None = None  # the sum of the single effects
    effect_measured: float | None = None  # the mean change with every lever applied
    overlaps: tuple[Overlap, ...] = ()
    no_footprint: tuple[str, ...] = ()
    prompts: int = 0
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def effect_gap(self) -> float | None:
        """Measured minus predicted joint effect."""
        if self.effect_measured is None or self.effect_predicted is None:
            return None
        return self.effect_measured - self.effect_predicted

    def as_dict(self) -> dict:
        def matrix(values: torch.Tensor) -> list[list[float | None]]:
            return [[finite_or_none(float(v)) for v in row] for row in values]

        return {"labels": list(self.labels), "strengths": list(self.strengths), "n_tokens": self.n_tokens,
                "gap": finite_or_none(self.gap), "cosine": finite_or_none(self.cosine),
                "joint_rms": self.joint_rms, "sum_rms": self.sum_rms, "alone_rms": list(self.alone_rms),
                "pair_gap": matrix(self.pair_gap), "pair_cosine": matrix(self.pair_cosine),
                "kl_joint": self.kl_joint, "kl_alone": list(self.kl_alone),
                "kl_joint_from_alone": list(self.kl_joint_from_alone),
                "effects_alone": None if self.effects_alone is None else list(self.effects_alone),
                "effect_predicted": self.effect_predicted, "effect_measured": self.effect_measured,
                "effect_gap": self.effect_gap, "prompts": self.prompts,
                "overlaps": [o.as_dict() for o in self.overlaps], "no_footprint": list(self.no_footprint)}

    def __str__(self) -> str:
        width = max(8, *(len(label) for label in self.labels))
        lines = [f"interference of {len(self.labels)} levers over {self.n_tokens} predicted tokens",
                 f"joint vs sum of single changes: relative gap {self.gap:.4g}, cosine {self.cosine:.4f}; "
                 f"KL(base||joint) {self.kl_joint:.4g} nats/token",
                 f"{'lever':<{width}}  {'strength':>8}  {'rms change':>10}  {'KL(base||i)':>11}  "
                 f"{'KL(i||joint)':>12}" + ("  effect" if self.effects_alone is not None else "")]
        for i, label in enumerate(self.labels):
            row = (f"{label:<{width}}  {self.strengths[i]:>8.4g}  {self.alone_rms[i]:>10.4g}  "
                   f"{self.kl_alone[i]:>11.4g}  {self.kl_joint_from_alone[i]:>12.4g}")
            if self.effects_alone is not None:
                row += f"  {self.effects_alone[i]:+.4g}"
            lines.append(row)
        if len(self.labels) > 2:
            lines.append("pairs: relative gap (cosine)")
            lines.append(" " * width + "".join(f"  {label:>{width + 10}}" for label in self.labels))
            for i, label in enumerate(self.labels):
                cells = ["-" if i == j else f"{float(self.pair_gap[i, j]):.3g} ({float(self.pair_cosine[i, j]):.3f})"
                         for j in range(len(self.labels))]
                lines.append(f"{label:<{width}}" + "".join(f"  {cell:>{width + 10}}" for cell in cells))
        if self.effect_measured is not None:
            lines.append(f"behaviour over {self.prompts} prompts: predicted {self.effect_predicted:+.4g} "
                         f"(sum of single effects), measured {self.effect_measured:+.4g}")
        if self.overlaps:
            lines.append("subspace overlaps (principal-angle cosines, largest first):")
            for o in self.overlaps:
                cosines = ", ".join(f"{c:.3f}" for c in o.cosines[:4]) + (" ..." if len(o.cosines) > 4 else "")
                lines.append(f"  {o.first} {o.first_footprint.role} {o.first_footprint.where} vs {o.second} "
                             f"{o.second_footprint.role} {o.second_footprint.where}: {cosines}")
        if self.no_footprint:
            lines.append("no footprint: " + ", ".join(self.no_footprint))
        return "\n".join(lines)


def _strengths(strengths, stack: Mapping[str, Any]) -> list[float]:
    from ..core.lever import check_strength

    labels = list(stack)
    if strengths is None:
        values = [1.0] * len(labels)
    elif isinstance(strengths, (numbers.Real, torch.Tensor)) and not isinstance(strengths, bool):
        values = [strengths] * len(labels)
    elif isinstance(strengths, Mapping):
        missing = [label for label in labels if label not in strengths]
        if missing:
            raise LeverError(f"no strength given for {missing}; the levers are {labels}")
        values = [strengths[label] for label in labels]
    else:
        values = list(strengths)
        if len(values) != len(labels):
            raise ShapeError(f"{len(labels)} levers but {len(values)} strengths")
    return [check_strength(value, units_of(stack[label])) for label, value in zip(labels, values)]


@dataclass
class _Sums:
    """Running sums over batches (float64), from which the norms and cosines follow."""

    n: int
    tokens: int = 0
    gap_sq: float = 0.0
    sum_sq: float = 0.0
    joint_sq: float = 0.0
    joint_dot_sum: float = 0.0
    kl_joint: float = 0.0
    alone_sq: list[float] = field(default_factory=list)
    kl_alone: list[float] = field(default_factory=list)
    kl_from_alone: list[float] = field(default_factory=list)
    pair: dict[tuple[int, int], list[float]] = field(default_factory=dict)  # gap², sum², joint², dot

    def __post_init__(self) -> None:
        self.alone_sq, self.kl_alone, self.kl_from_alone = [0.0] * self.n, [0.0] * self.n, [0.0] * self.n


def _sq(x: torch.Tensor) -> float:
    return float(x.double().square().sum())


def _dot(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() * y.double()).sum())


def _relative(gap_sq: float, sum_sq: float, joint_sq: float, dot: float) -> tuple[float, float]:
    """Relative gap and cosine; a zero predicted change gives gap 0 (nothing changed) or inf."""
    if sum_sq == 0.0:
        gap = 0.0 if joint_sq == 0.0 else math.inf
    else:
        gap = math.sqrt(gap_sq / sum_sq)
    cosine = dot / math.sqrt(sum_sq * joint_sq) if sum_sq > 0 and joint_sq > 0 else math.nan
    return gap, cosine


def interference(levers, model, tokenizer, texts: Sequence[str], *, strengths=None,
                 behaviour: Behaviour | None = None, prompts: Sequence[str] | None = None, max_length: int = 64,
                 batch_size: int = 8) -> InterferenceReport:
    """Measure how a stack of levers interferes (see the module docstring).

    ``levers`` is a mapping label -> lever or a list of levers (applied in that order, each as
    ``lever.apply(model, strength=s)``); ``strengths`` is ``None`` (1 each), one number for all, a
    list or a mapping by label. ``behaviour(module, tokenizer, prompts)`` returns one score per
    prompt; its mean change is compared with the sum of the single changes.
    """
    from ..steering.cost import log_probs, scored_batches, token_kl

    stack = labelled(levers, "lever")
    if len(stack) < 2:
        raise EmptyDataError("interference needs a stack of at least two levers")
    values = _strengths(strengths, stack)
    module, tokenizer = module_and_tokenizer(model, tokenizer)
    texts = list(texts)
    if not texts or any(not isinstance(t, str) or not t for t in texts):
        raise EmptyDataError("pass at least one text, every one a non-empty string")
    if batch_size < 1 or max_length < 2:
        raise ShapeError("batch_size must be >= 1 and max_length >= 2")
    if (behaviour is None) != (prompts is None):
        raise EmptyDataError("pass behaviour and prompts together (or neither)")
    labels, chosen = list(stack), list(stack.values())
    n = len(labels)

    @contextlib.contextmanager
    def applied(indices: Sequence[int]):
        with contextlib.ExitStack() as contexts:
            for i in indices:
                levered = contexts.enter_context(chosen[i].apply(model, strength=values[i]))
            yield levered

    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    sums = _Sums(n, pair={pair: [0.0, 0.0, 0.0, 0.0] for pair in pairs})
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for inputs, valid in scored_batches(module, tokenizer, texts, batch_size=batch_size,
                                                max_length=max_length):
                if not valid.any():
                    continue
                base = log_probs(module, inputs, valid)
                alone = []
                for i in range(n):
                    with applied([i]):
                        alone.append(log_probs(module, inputs, valid))
                with applied(range(n)):
                    joint = log_probs(module, inputs, valid)
                deltas = [log_q - base for log_q in alone]
                delta_joint, predicted = joint - base, torch.stack(deltas).sum(0)
                sums.tokens += int(valid.sum())
                sums.gap_sq += _sq(delta_joint - predicted)
                sums.sum_sq += _sq(predicted)
                sums.joint_sq += _sq(delta_joint)
                sums.joint_dot_sum += _dot(delta_joint, predicted)
                sums.kl_joint += float(token_kl(base, joint).clamp_min(0.0).double().sum())
                for i in range(n):
                    sums.alone_sq[i] += _sq(deltas[i])
                    sums.kl_alone[i] += float(token_kl(base, alone[i]).clamp_min(0.0).double().sum())
                    sums.kl_from_alone[i] += float(token_kl(alone[i], joint).clamp_min(0.0).double().sum())
                for i, j in pairs:
                    if n == 2:
                        together = delta_joint
                    else:
                        with applied([i, j]):
                            together = log_probs(module, inputs, valid) - base
                    both = deltas[i] + deltas[j]
                    acc = sums.pair[(i, j)]
                    acc[0] += _sq(together - both)
                    acc[1] += _sq(both)
                    acc[2] += _sq(together)
                    acc[3] += _dot(together, both)
        effects = _effects(behaviour, prompts, module, tokenizer, applied, n) if behaviour is not None else None
    finally:
        module.train(was_training)
    if sums.tokens == 0:
        raise EmptyDataError("the texts are too short to score any next-token prediction (each needs 3 tokens)")
    gap, cosine = _relative(sums.gap_sq, sums.sum_sq, sums.joint_sq, sums.joint_dot_sum)
    pair_gap = torch.full((n, n), math.nan, dtype=torch.float64)
    pair_cosine = torch.full((n, n), math.nan, dtype=torch.float64)
    for (i, j), acc in sums.pair.items():
        gap_ij, cosine_ij = _relative(*acc)
        pair_gap[i, j] = pair_gap[j, i] = gap_ij
        pair_cosine[i, j] = pair_cosine[j, i] = cosine_ij
    tokens = sums.tokens
    found = {str(label): footprints_of(lever) for label, lever in stack.items()}
    report = dict(
        labels=tuple(str(label) for label in labels), strengths=tuple(values), n_tokens=tokens, gap=gap, cosine=cosine,
        joint_rms=math.sqrt(sums.joint_sq / tokens), sum_rms=math.sqrt(sums.sum_sq / tokens),
        alone_rms=tuple(math.sqrt(v / tokens) for v in sums.alone_sq), pair_gap=pair_gap, pair_cosine=pair_cosine,
        kl_joint=sums.kl_joint / tokens, kl_alone=tuple(v / tokens for v in sums.kl_alone),
        kl_joint_from_alone=tuple(v / tokens for v in sums.kl_from_alone),
        overlaps=tuple(overlaps(found)), no_footprint=tuple(label for label, fp in found.items() if not fp))
    if effects is not None:
        single, measured, count = effects
        report.update(effects_alone=tuple(single), effect_predicted=float(sum(single)), effect_measured=measured,
                      prompts=count)
    return InterferenceReport(**report)


def _effects(behaviour: Behaviour, prompts: Sequence[str], module, tokenizer, applied, n: int):
    """Mean behaviour change per lever alone and of all together, and the number of prompts."""
    prompts = list(prompts)
    if not prompts:
        raise EmptyDataError("no prompts to score the behaviour on")
    base = torch.as_tensor(behaviour(module, tokenizer, prompts)).double()

    def mean_change(indices) -> float:
        with applied(indices) as levered:
            scores = torch.as_tensor(behaviour(levered, tokenizer, prompts)).double()
        if scores.shape != base.shape:
            raise ShapeError(f"the behaviour gave {tuple(scores.shape)} scores with levers and {tuple(base.shape)} "
                             "without: it must give one score per prompt")
        value = float((scores - base).mean())
        if not math.isfinite(value):
            raise NonFiniteError("the behaviour gave NaN or infinite scores")
        return value

    return [mean_change([i]) for i in range(n)], mean_change(range(n)), len(prompts)
