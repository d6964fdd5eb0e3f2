"""Merges of whole state dicts held in memory (small models, tests, soups of reference nets)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..core.errors import AlmostLinearError, EmptyDataError, NonFiniteError, ShapeError
from .compat import check_compatible
from .dispatch import merge_tensor
from .registry import lookup

Tensor = torch.Tensor
StateDict = Mapping[str, Tensor]


def merge_state_dicts(method: str, state_dicts: Sequence[StateDict], *, weights: Sequence[float] | None = None,
                      base: StateDict | None = None, **options: Any) -> dict[str, Tensor]:
    """Merge state dicts with any registered method (:data:`.registry.METHODS`): ``linear``,
    ``slerp``, ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``, ``regmean``, ``fisher``.

    ``weights`` has one entry per dict in ``state_dicts`` (default: all 1, so ``linear`` is the
    uniform average). ``base`` is the model the task vectors are measured from; methods whose record
    says ``base="required"`` need it. Non-float tensors (integer buffers) must be equal in every
    input and are copied. Options are the method's parameters, e.g. ``density``, ``lam``,
    ``normalize``, ``t``, ``election``, ``rescale``, ``seed`` (``grams`` for RegMean, ``fishers`` for
    Fisher merging).
    """
    record = lookup(method)
    resolved = record.resolve(options)
    if not state_dicts:
        raise EmptyDataError("no state dicts to merge")
    if record.needs_base and base is None:
        raise AlmostLinearError(f"{method} needs base=: task vectors are differences from a base model")
    w = [1.0] * len(state_dicts) if weights is None else [float(x) for x in weights]
    if len(w) != len(state_dicts):
        raise ShapeError(f"{len(w)} weights for {len(state_dicts)} state dicts")
    if record.in_memory_only:
        return record.fn(state_dicts, w, **resolved)
    everything = ([base] if base is not None else []) + list(state_dicts)
    labels = (["base"] if base is not None else []) + [f"model {i}" for i in range(len(state_dicts))]
    keys = check_compatible(everything, labels)
    out: dict[str, Tensor] = {}
    for k in keys:
        tensors = [sd[k].detach() for sd in state_dicts]
        b = base[k].detach() if base is not None else None
        if not tensors[0].is_floating_point():
            ref = b if b is not None else tensors[0]
            if any(not torch.equal(t, ref) for t in tensors):
                raise AlmostLinearError(f"non-float tensor {k!r} differs between models and cannot be merged")
            out[k] = ref.clone()
            continue
        merged = merge_tensor(method, k, tensors, w, b, options)
        if not torch.isfinite(merged).all():
            raise NonFiniteError(f"merging tensor {k!r} with {method} gave NaN or infinite values")
        out[k] = merged
    return out


def uniform_soup(state_dicts: Sequence[StateDict]) -> dict[str, Tensor]:
    """The uniform model soup: the plain average of fine-tunes of one initialisation (arXiv 2203.05482)."""
    return merge_state_dicts("linear", state_dicts)


def greedy_soup(state_dicts: Sequence[StateDict], evaluate: Callable[[dict[str, Tensor]], float], *,
                sort: bool = True) -> tuple[dict[str, Tensor], list[int]]:
    """Greedy soup (arXiv 2203.05482, Recipe 1): visit the models best first by ``evaluate`` (higher is
    better) and keep each one whose addition to the running average does not lower the score.

    Returns the soup and the indices of the ingredients, in the order they were added.
    """
    if not state_dicts:
        raise EmptyDataError("no state dicts for a soup")
    scores = [float(evaluate(dict(sd))) for sd in state_dicts]
    order = sorted(range(len(state_dicts)), key=lambda i: -scores[i]) if sort else list(range(len(state_dicts)))
    chosen = [order[0]]
    soup = {k: v.detach().clone() for k, v in state_dicts[order[0]].items()}
    best = scores[order[0]]
    for i in order[1:]:
        candidate = uniform_soup([state_dicts[j] for j in chosen + [i]])
        score = float(evaluate(candidate))
        if score >= best:
            chosen.append(i)
            soup, best = candidate, score
    return soup, chosen
