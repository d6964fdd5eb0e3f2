"""Streamed merges computed in slices of a tensor, so memory holds the inputs, the output and small
temporaries, never several full-size intermediate copies.

Linear, task arithmetic and TIES are element-wise once each task vector's magnitude threshold is
known (one selection per task vector, :func:`methods.magnitude_threshold`), so their kernels below
run chunk by chunk and give exactly the in-memory result. A method's record names its kernel
(``MergeMethod.chunked``); methods without one (SLERP: a global angle; DARE: one random stream per
tensor) use their in-memory function.

Every kernel takes the flat output, the flat inputs (``base`` flat or ``None``), one float weight per
model, the tensor's name (for error messages), the slice length and the method's resolved options.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.errors import AlmostLinearError, NonFiniteError
from . import methods

Tensor = torch.Tensor
CHUNK = 1 << 20


def _all_finite(values: Tensor) -> bool:
    """True when no entry is NaN or ±inf. One min/max pass (NaN propagates into both, an infinity
    shows as the min or the max) is over ten times faster than ``isfinite(x).all()``, which
    materialises a boolean tensor."""
    if values.numel() == 0:
        return True
    lo, hi = torch.aminmax(values)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def check_finite(values: Tensor, name: str) -> None:
    """Raise :class:`NonFiniteError` naming tensor ``name`` if ``values`` holds NaN or ±inf."""
    if not _all_finite(values):  # checked per slice, while it is in cache
        raise NonFiniteError(f"tensor {name!r}: the merge gives NaN or infinite values in {values.dtype}; "
                             "nothing was written")


def _store(dst: Tensor, s: int, values: Tensor, name: str) -> None:
    part = values.to(dst.dtype)
    check_finite(part, name)
    dst[s:s + part.numel()] = part


def linear_chunks(dst: Tensor, tensors: Sequence[Tensor], base: Tensor | None, weights: Sequence[float], *,
                  name: str, chunk: int, normalize: bool) -> None:
    """Σ wᵢθᵢ (divided by Σ wᵢ when ``normalize``), slice by slice."""
    dtype = methods.work_dtype(tensors[0])
    total = sum(weights)
    if normalize and abs(total) < 1e-12:
        raise AlmostLinearError("weights sum to zero; pass normalize=False or other weights")
    in_place = dst.dtype == dtype  # accumulate straight into the output: no temporary, no copy
    for s in range(0, dst.numel(), chunk):
        acc = torch.mul(tensors[0][s:s + chunk].to(dtype), weights[0], out=dst[s:s + chunk] if in_place else None)
        for t, wi in zip(tensors[1:], weights[1:]):
            acc.add_(t[s:s + chunk].to(dtype), alpha=wi)
        if normalize:
            acc.div_(total)
        if in_place:
            check_finite(acc, name)
        else:
            _store(dst, s, acc, name)


def task_arithmetic_chunks(dst: Tensor, tensors: Sequence[Tensor], base: Tensor, weights: Sequence[float], *,
                           name: str, chunk: int, lam: float, normalize: bool) -> None:
    """θ_base + λ Σ wᵢ(θᵢ − θ_base), slice by slice."""
    dtype = methods.work_dtype(tensors[0])
    total = sum(weights) if normalize else 1.0
    for s in range(0, dst.numel(), chunk):
        bc = base[s:s + chunk].to(dtype)
        acc = torch.zeros_like(bc)
        for t, wi in zip(tensors, weights):
            acc.add_(t[s:s + chunk].to(dtype) - bc, alpha=wi)
        _store(dst, s, bc + lam * acc / total, name)


def ties_chunks(dst: Tensor, tensors: Sequence[Tensor], base: Tensor, weights: Sequence[float], *,
                name: str, chunk: int, density, lam: float, normalize: bool, election: str) -> None:
    """TIES with one magnitude threshold per task vector, then everything element-wise."""
    dtype = methods.work_dtype(tensors[0])
    n = dst.numel()
    densities = methods.per_input(density, len(tensors), "density")
    plans = []
    # the output is not written yet: it holds the magnitudes while each threshold is found (unless
    # it shares memory with an input)
    storages = {x.untyped_storage().data_ptr() for x in [*tensors, base]}
    own = dst.dtype == dtype and dst.is_contiguous() and dst.untyped_storage().data_ptr() not in storages
    scratch = dst if own else None
    for t, d in zip(tensors, densities):
        k = methods.keep_count(d, n)
        if 0 < k < n:
            magnitude = torch.sub(t.to(dtype), base.to(dtype), out=scratch).abs_()
            plans.append([k, *methods.magnitude_threshold(magnitude, k), 0])
            del magnitude
        else:
            plans.append([k, None, None, 0])
    for s in range(0, n, chunk):
        bc = base[s:s + chunk].to(dtype)
        deltas = []
        for t, plan in zip(tensors, plans):
            delta = t[s:s + chunk].to(dtype) - bc
            k, threshold, quota, seen = plan
            if k == 0:
                delta = torch.zeros_like(delta)
            elif threshold is not None:
                keep, plan[3] = methods.top_magnitude_mask(delta.abs(), k, seen_equal=seen, threshold=threshold,
                                                           quota=quota)
                delta = delta * keep.to(dtype)
            deltas.append(delta)
        _store(dst, s, methods.consensus(bc, deltas, weights, lam=lam, normalize=normalize, election=election), name)
