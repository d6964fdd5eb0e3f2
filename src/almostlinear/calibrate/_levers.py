"""What both tools need from levers and models: labels, strength units, the module and tokenizer."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..core.errors import AlmostLinearError, EmptyDataError, LeverError

# ``behaviour(module, tokenizer, prompts)``: one score per prompt (a tensor [n]), as in steering.behaviour
Behaviour = Callable[[Any, Any, Sequence[str]], Any]


def is_lever(value: Any) -> bool:
    return callable(getattr(value, "apply", None)) and hasattr(value, "strength_units")


def labelled(levers: Any, what: str) -> dict[Any, Any]:
    """``{label: lever}`` from one lever (labelled by its kind), a mapping of them (its keys, e.g. layers,
    are the labels), or a sequence (labelled ``"position:kind"``)."""
    if is_lever(levers):
        return {str(getattr(levers, "kind", type(levers).__name__)): levers}
    if isinstance(levers, Mapping):
        out = dict(levers)
    else:
        try:
            items = list(levers)
        except TypeError:
            raise LeverError(f"{what} must be a lever, a mapping label -> lever or a list of levers; "
                             f"got {type(levers).__name__}") from None
        out = {f"{i}:{getattr(lever, 'kind', type(lever).__name__)}": lever for i, lever in enumerate(items)}
    if not out:
        raise EmptyDataError(f"no {what} given: pass at least one lever")
    for label, lever in out.items():
        if not is_lever(lever):
            raise LeverError(f"{what} {label!r} is a {type(lever).__name__}, not a lever (it needs apply() and "
                             "strength_units)")
    return out


def units_of(lever: Any) -> str:
    """The unit ``strength`` is given in: the artifact's stored unit, else the class's default."""
    provenance = getattr(lever, "provenance", None)
    stored = getattr(provenance, "units", None)
    if stored:
        return stored
    units = tuple(getattr(lever, "strength_units", ()) or ())
    if not units:
        raise LeverError(f"{type(lever).__name__} declares no strength_units")
    return units[0]


def module_and_tokenizer(model: Any, tokenizer: Any):
    """The ``nn.Module`` to run and the tokenizer (from a LoadedModel when none is given)."""
    from ..core.lever import as_model

    view = as_model(model)
    tokenizer = tokenizer if tokenizer is not None else view.tokenizer
    if tokenizer is None:
        raise EmptyDataError("no tokenizer: pass one, or a LoadedModel that carries one")
    return view.module, tokenizer


def check_held_out(held_out: float) -> float:
    value = float(held_out)
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise AlmostLinearError(f"held_out must lie strictly between 0 and 1 (a share of the texts), got {held_out!r}")
    return value


def finite_or_none(value: float | None) -> float | None:
    """``value``, or ``None`` where it is NaN or infinite (JSON has no such numbers)."""
    return None if value is None or not math.isfinite(value) else value
