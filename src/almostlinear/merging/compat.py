"""Checks that state dicts can be merged tensor by tensor (a leaf: every merge module may import it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from ..core.errors import EmptyDataError, ShapeError

StateDict = Mapping[str, Tensor]


def check_compatible(state_dicts: Sequence[StateDict], names: Sequence[str] | None = None) -> list[str]:
    """The shared tensor names, in the first dict's order; raises naming any missing or mismatched tensor."""
    if not state_dicts:
        raise EmptyDataError("no state dicts to merge")
    labels = list(names) if names is not None else [f"model {i}" for i in range(len(state_dicts))]
    first = state_dicts[0]
    keys = list(first)
    for label, sd in zip(labels[1:], state_dicts[1:]):
        missing = [k for k in keys if k not in sd]
        extra = [k for k in sd if k not in first]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{label} lacks tensor {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
            if extra:
                parts.append(f"{label} has tensor {extra[0]!r} that {labels[0]} lacks"
                             + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))
            raise ShapeError("; ".join(parts))
        for k in keys:
            if tuple(sd[k].shape) != tuple(first[k].shape):
                raise ShapeError(f"tensor {k!r} has shape {tuple(sd[k].shape)} in {label} "
                                 f"but {tuple(first[k].shape)} in {labels[0]}")
    return keys
