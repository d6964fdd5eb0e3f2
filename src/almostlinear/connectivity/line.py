"""Loss and accuracy along the straight line between two networks, and the barrier on it.

``theta(alpha) = (1 - alpha) theta_A + alpha theta_B``. The *barrier* (arXiv 1912.05671, there called
instability; arXiv 2209.04836 for the loss) is the worst value on the path minus the mean of the two
endpoints: error for accuracy, loss for losses. ``barrier_linear`` measures the bump above the
straight line joining the endpoint values instead, which matters when the endpoints differ.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import EmptyDataError, NonFiniteError, ShapeError, check_choice
from ..core.lever import as_model


def model_state(model: Any) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name (tied tensors once), detached; no copy."""
    model = as_model(model).module
    named = {k: v.detach() for k, v in model.named_parameters()}
    named.update({k: v.detach() for k, v in model.named_buffers()})
    return named


def _as_state(other) -> dict[str, torch.Tensor]:
    """A state dict as it is; a module or a ``LoadedModel`` as its parameters and buffers."""
    return dict(other) if isinstance(other, Mapping) else model_state(other)


def lerp_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) a + alpha b`` for every floating tensor; integer buffers (step counters) come from ``a``."""
    missing = sorted(set(a) ^ set(b))
    if missing:
        raise ShapeError(f"the two networks differ in their tensors: {missing[:6]}")
    out = {}
    for name, ta in a.items():
        tb = b[name]
        if ta.shape != tb.shape:
            raise ShapeError(f"{name!r} has shape {tuple(ta.shape)} in A and {tuple(tb.shape)} in B")
        out[name] = torch.lerp(ta, tb.to(ta.dtype), alpha) if ta.is_floating_point() else ta
    return out


class _Line:
    """A model whose weights can be set anywhere on the line to ``other``; one saved copy, restored exactly."""

    def __init__(self, model: nn.Module, other) -> None:
        self.own = model_state(model)
        target = _as_state(other)
        missing = [k for k in self.own if k not in target]
        if missing:
            raise ShapeError(f"the other network lacks {missing[:6]}")
        for name, tensor in self.own.items():
            if target[name].shape != tensor.shape:
                raise ShapeError(f"{name!r} has shape {tuple(tensor.shape)} here and {tuple(target[name].shape)} "
                                 "in the other network")
        self.target = {k: target[k].to(v.device, v.dtype) for k, v in self.own.items() if v.is_floating_point()}
        self.saved = {k: v.clone() for k, v in self.own.items()}

    @torch.no_grad()
    def set(self, alpha: float) -> None:
        for name, tensor in self.own.items():
            if name in self.target:
                torch.lerp(self.saved[name], self.target[name], alpha, out=tensor)
            else:
                tensor.copy_(self.saved[name])

    @torch.no_grad()
    def restore(self) -> None:
        for name, tensor in self.own.items():
            tensor.copy_(self.saved[name])


@contextlib.contextmanager
def interpolated(model: Any, other, alpha: float) -> Iterator[nn.Module]:
    """Set ``model`` to ``(1 - alpha) model + alpha other`` for the body; restore it bit for bit after."""
    model = as_model(model).module
    line = _Line(model, other)
    try:
        line.set(alpha)
        yield model
    finally:
        line.restore()


def _higher_is_better(metric: str) -> bool:
    return "acc" in metric.lower()


@dataclass(frozen=True)
class InterpolationCurve:
    """Metric values at each ``alpha`` of the path (``alpha = 0`` is A, ``1`` is B)."""

    alphas: tuple[float, ...]
    values: dict[str, tuple[float, ...]]

    def _cost(self, metric: str) -> torch.Tensor:
        check_choice(metric, sorted(self.values), "metric (one the curve measured)")
        v = torch.tensor(self.values[metric], dtype=torch.float64)
        return 1.0 - v if _higher_is_better(metric) else v  # accuracy -> error

    def barrier(self, metric: str = "loss") -> float:
        """Worst cost on the path minus the mean cost of the endpoints (error for accuracies)."""
        c = self._cost(metric)
        return float(c.max() - (c[0] + c[-1]) / 2)

    def barrier_linear(self, metric: str = "loss") -> float:
        """Largest excess of the cost over the straight line between the endpoint costs."""
        c = self._cost(metric)
        a = torch.tensor(self.alphas, dtype=torch.float64)
        return float((c - ((1 - a) * c[0] + a * c[-1])).max())

    def midpoint(self, metric: str = "loss") -> float:
        i = min(range(len(self.alphas)), key=lambda k: abs(self.alphas[k] - 0.5))
        return self.values[metric][i]

    def to_json(self) -> dict:
        return {"alphas": list(self.alphas), "values": {k: list(v) for k, v in self.values.items()}}


def _alphas(alphas) -> tuple[float, ...]:
    if isinstance(alphas, int):
        if alphas < 2:
            raise EmptyDataError("an interpolation needs at least the two endpoints (alphas >= 2)")
        return tuple(i / (alphas - 1) for i in range(alphas))
    values = tuple(float(a) for a in alphas)
    if len(values) < 2:
        raise EmptyDataError("an interpolation needs at least two values of alpha")
    return values


def interpolate(model_a: Any, model_b, evaluate: Callable[[nn.Module], float | dict[str, float]],
                alphas: int | Sequence[float] = 11, *,
                after: Callable[[nn.Module, float], None] | None = None,
                progress: bool = False) -> InterpolationCurve:
    """Evaluate the networks on the segment from ``model_a`` to ``model_b`` (a module or state dict).

    ``evaluate(model)`` returns a number (stored as ``"loss"``) or a dict of named numbers, e.g.
    ``{"loss": ..., "accuracy": ...}``. ``after(model, alpha)`` runs on each interpolated network
    before evaluation (REPAIR, batch-norm statistics). ``model_a`` itself is used as the workspace
    and is restored bit for bit afterwards.
    """
    grid = _alphas(alphas)
    model_a = as_model(model_a).module
    values: dict[str, list[float]] = {}
    iterator = grid
    if progress:
        from tqdm import tqdm

        iterator = tqdm(grid, desc="interpolating", leave=False)
    line = _Line(model_a, model_b)
    try:
        for alpha in iterator:
            line.set(alpha)
            if after is not None:
                after(model_a, alpha)
            found = evaluate(model_a)
            found = found if isinstance(found, dict) else {"loss": found}
            for name, value in found.items():
                value = float(value)
                if not math.isfinite(value):  # a barrier over an infinite value means nothing
                    raise NonFiniteError(f"{name} is {value} at alpha={alpha}")
                values.setdefault(name, []).append(value)
    finally:
        line.restore()
    return InterpolationCurve(grid, {k: tuple(v) for k, v in values.items()})
