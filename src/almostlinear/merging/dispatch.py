"""One entry point per tensor for every merge method, shared by in-memory and streamed merges."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core.errors import AlmostLinearError
from . import methods

Tensor = torch.Tensor

# method -> (needs a base model, options it accepts with their defaults)
METHODS: dict[str, tuple[bool, dict[str, Any]]] = {
    "linear": (False, {"normalize": True}),
    "slerp": (False, {"t": 0.5}),
    "task_arithmetic": (True, {"lam": 1.0, "normalize": False}),
    "ties": (True, {"density": 0.2, "lam": 1.0, "normalize": True, "election": "paper"}),
    "dare_linear": (True, {"density": 0.5, "lam": 1.0, "normalize": False, "rescale": "inverse", "seed": 0}),
    "dare_ties": (True, {"density": 0.5, "lam": 1.0, "normalize": False, "rescale": "inverse", "seed": 0,
                         "election": "paper"}),
}


def resolve_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The method's defaults updated with ``options``; unknown methods or options raise, naming them."""
    if method not in METHODS:
        raise AlmostLinearError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    defaults = dict(METHODS[method][1])
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise AlmostLinearError(
            f"option(s) {', '.join(map(repr, unknown))} do not apply to {method!r}; it accepts "
            f"{', '.join(defaults) or 'none'}")
    defaults.update(options)
    return defaults


def needs_base(method: str) -> bool:
    resolve_options(method, {})
    return METHODS[method][0]


def merge_tensor(method: str, name: str, tensors: Sequence[Tensor], weights: Sequence[float],
                 base: Tensor | None, options: Mapping[str, Any]) -> Tensor:
    """Merge the tensors called ``name`` of every input model (``base`` apart) with ``method``."""
    o = resolve_options(method, options)
    if method == "linear":
        return methods.linear(tensors, weights, normalize=o["normalize"])
    if method == "slerp":
        pair = list(tensors) if base is None else [base, *tensors]
        if len(pair) != 2:
            raise AlmostLinearError(f"slerp merges exactly two models (base included), got {len(pair)}")
        t = o["t"]
        return methods.slerp(pair[0], pair[1], float(t))
    if base is None:
        raise AlmostLinearError(f"{method} needs a base model: task vectors are differences from it")
    if method == "task_arithmetic":
        return methods.task_arithmetic(base, tensors, weights, lam=o["lam"], normalize=o["normalize"])
    if method == "ties":
        return methods.ties(base, tensors, weights, density=o["density"], lam=o["lam"],
                            normalize=o["normalize"], election=o["election"])
    if method == "dare_linear":
        return methods.dare_linear(base, tensors, weights, density=o["density"], lam=o["lam"],
                                   normalize=o["normalize"], rescale=o["rescale"], seed=o["seed"], name=name)
    return methods.dare_ties(base, tensors, weights, density=o["density"], lam=o["lam"],
                             normalize=o["normalize"], rescale=o["rescale"], seed=o["seed"], name=name,
                             election=o["election"])
