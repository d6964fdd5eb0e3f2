"""One entry point per tensor for every merge method, shared by in-memory and streamed merges.

Both read the method's record (:mod:`.registry`): :func:`merge_tensor` calls its function,
:func:`merge_into` streams it in slices when the record has a kernel and writes the in-memory
result otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core.errors import AlmostLinearError
from . import methods
from .chunked import CHUNK, check_finite
from .registry import lookup

Tensor = torch.Tensor


def resolve_options(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The method's defaults updated with ``options``; unknown methods or options raise, naming them."""
    return lookup(method).resolve(options)


def needs_base(method: str) -> bool:
    return lookup(method).needs_base


def merge_tensor(method: str, name: str, tensors: Sequence[Tensor], weights: Sequence[float],
                 base: Tensor | None, options: Mapping[str, Any]) -> Tensor:
    """Merge the tensors called ``name`` of every input model (``base`` apart) with ``method``."""
    record = lookup(method)
    if record.in_memory_only:
        raise AlmostLinearError(f"{method} merges whole state dicts with statistics of each model; "
                                f"use merge_state_dicts({method!r}, ...)")
    resolved = record.resolve(options)
    if record.needs_base and base is None:
        raise AlmostLinearError(f"{method} needs a base model: task vectors are differences from it")
    return record.fn(base if record.uses_base else None, tensors, weights, name=name, **resolved)


def merge_into(method: str, name: str, tensors: Sequence[Tensor], weights: Sequence[float], base: Tensor | None,
               options: Mapping[str, Any], out: Tensor, *, chunk: int = CHUNK) -> Tensor:
    """Write the merge of ``tensors`` (and ``base``) into ``out`` (any float dtype, same shape);
    raises :class:`NonFiniteError` naming the tensor if a value is not finite in ``out``'s dtype."""
    record = lookup(method)
    resolved = record.resolve(options)
    if record.chunked is None or (record.needs_base and base is None):
        out.copy_(merge_tensor(method, name, tensors, weights, base, options))
        check_finite(out, name)
        return out
    methods._check(list(tensors) + ([base] if base is not None else []), None)
    record.chunked(out.view(-1), [t.reshape(-1) for t in tensors], base.reshape(-1) if base is not None else None,
                   [float(x) for x in weights], name=name, chunk=chunk, **resolved)
    return out
