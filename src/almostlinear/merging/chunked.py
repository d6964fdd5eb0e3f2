"""Streamed merges computed in slices of a tensor, so memory holds the inputs, the output and small
temporaries, never several full-size intermediate copies.

Linear, task arithmetic and TIES are element-wise once each task vector's magnitude threshold is
known (one selection per task vector, :func:`methods.magnitude_threshold`), so they run chunk by
chunk and give exactly the in-memory result. SLERP (a global angle) and DARE (one random stream
per tensor) use the in-memory functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..core.errors import NonFiniteError
from . import methods
from .dispatch import merge_tensor, resolve_options

Tensor = torch.Tensor
CHUNK = 1 << 20
CHUNKED = ("linear", "task_arithmetic", "ties")


def _all_finite(values: Tensor) -> bool:
    """True when no entry is NaN or ±inf. One min/max pass (NaN propagates into both, an infinity
    shows as the min or the max) is over ten times faster than ``isfinite(x).all()``, which
    materialises a boolean tensor."""
    if values.numel() == 0:
        return True
    lo, hi = torch.aminmax(values)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def _check_finite(values: Tensor, name: str) -> None:
    if not _all_finite(values):  # checked per slice, while it is in cache
        raise NonFiniteError(f"tensor {name!r}: the merge gives NaN or infinite values in {values.dtype}; "
                             "nothing was written")


def _store(dst: Tensor, s: int, values: Tensor, name: str) -> None:
    part = values.to(dst.dtype)
    _check_finite(part, name)
    dst[s:s + part.numel()] = part


def merge_into(method: str, name: str, tensors: Sequence[Tensor], weights: Sequence[float], base: Tensor | None,
               options: Mapping[str, Any], out: Tensor, *, chunk: int = CHUNK) -> Tensor:
    """Write the merge of ``tensors`` (and ``base``) into ``out`` (any float dtype, same shape);
    raises :class:`NonFiniteError` naming the tensor if a value is not finite in ``out``'s dtype."""
    o = resolve_options(method, options)
    if method not in CHUNKED or (method != "linear" and base is None):
        out.copy_(merge_tensor(method, name, tensors, weights, base, options))
        _check_finite(out, name)
        return out
    methods._check(list(tensors) + ([base] if base is not None else []), None)
    flat = [t.reshape(-1) for t in tensors]
    b = base.reshape(-1) if base is not None else None
    dst = out.view(-1)
    n = dst.numel()
    dtype = methods.work_dtype(tensors[0])
    w = [float(x) for x in weights]
    if method == "linear":
        total = sum(w)
        if o["normalize"] and abs(total) < 1e-12:
            raise methods.AlmostLinearError("weights sum to zero; pass normalize=False or other weights")
        in_place = dst.dtype == dtype  # accumulate straight into the output: no temporary, no copy
        for s in range(0, n, chunk):
            acc = torch.mul(flat[0][s:s + chunk].to(dtype), w[0], out=dst[s:s + chunk] if in_place else None)
            for t, wi in zip(flat[1:], w[1:]):
                acc.add_(t[s:s + chunk].to(dtype), alpha=wi)
            if o["normalize"]:
                acc.div_(total)
            if in_place:
                _check_finite(acc, name)
            else:
                _store(dst, s, acc, name)
        return out
    if method == "task_arithmetic":
        total = sum(w) if o["normalize"] else 1.0
        for s in range(0, n, chunk):
            bc = b[s:s + chunk].to(dtype)
            acc = torch.zeros_like(bc)
            for t, wi in zip(flat, w):
                acc.add_(t[s:s + chunk].to(dtype) - bc, alpha=wi)
            _store(dst, s, bc + o["lam"] * acc / total, name)
        return out
    # TIES: one threshold per task vector, then everything is element-wise
    densities = methods.per_input(o["density"], len(flat), "density")
    plans = []
    for t, d in zip(flat, densities):
        k = methods.keep_count(d, n)
        if 0 < k < n:
            magnitude = (t.to(dtype) - b.to(dtype)).abs()
            plans.append([k, *methods.magnitude_threshold(magnitude, k), 0])
            del magnitude
        else:
            plans.append([k, None, None, 0])
    for s in range(0, n, chunk):
        bc = b[s:s + chunk].to(dtype)
        deltas = []
        for t, plan in zip(flat, plans):
            delta = t[s:s + chunk].to(dtype) - bc
            k, threshold, quota, seen = plan
            if k == 0:
                delta = torch.zeros_like(delta)
            elif threshold is not None:
                keep, plan[3] = methods.top_magnitude_mask(delta.abs(), k, seen_equal=seen, threshold=threshold,
                                                           quota=quota)
                delta = delta * keep.to(dtype)
            deltas.append(delta)
        _store(dst, s, methods.consensus(bc, deltas, w, lam=o["lam"], normalize=o["normalize"],
                                         election=o["election"]), name)
    return out
