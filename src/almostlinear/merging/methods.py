"""Merge rules as plain tensor functions, one output tensor at a time.

Each function takes the tensors that share one name across the input models (already checked for
equal shapes) and returns the merged tensor in the dtype of the first input. Arithmetic happens in
float32 (float64 when the inputs are float64) so that half-precision inputs do not lose the small
task-vector differences.

References: linear averaging / soups arXiv 2203.05482; task arithmetic arXiv 2212.04089; TIES
arXiv 2306.01708 (trim, elect sign, disjoint mean); DARE arXiv 2311.03099 (drop and rescale).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.digest import PREFIX, digest
from ..core.errors import AlmostLinearError, EmptyDataError, ShapeError, check_choice

Tensor = torch.Tensor

SIGN_ELECTIONS = ("paper", "weighted")
DARE_RESCALES = ("inverse", "l1", "none")


def work_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def per_input(value: float | Sequence[float], n: int, what: str) -> list[float]:
    """One value per input model: a scalar is shared, a sequence must have one entry per model."""
    if isinstance(value, (int, float)):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ShapeError(f"{len(values)} values of {what} for {n} models")
    return values


def _check(tensors: Sequence[Tensor], weights: Sequence[float] | None = None) -> None:
    if not tensors:
        raise EmptyDataError("nothing to merge: no input tensors")
    shape = tensors[0].shape
    for i, t in enumerate(tensors):
        if t.shape != shape:
            raise ShapeError(f"input {i} has shape {tuple(t.shape)} but input 0 has {tuple(shape)}")
        if not t.is_floating_point():
            raise AlmostLinearError(f"input {i} has dtype {t.dtype}; merges need floating-point tensors")
    if weights is not None and len(weights) != len(tensors):
        raise ShapeError(f"{len(weights)} weights for {len(tensors)} tensors")


def linear(tensors: Sequence[Tensor], weights: Sequence[float], *, normalize: bool = True) -> Tensor:
    """Σ wᵢθᵢ, divided by Σ wᵢ when ``normalize`` (the model-soup average)."""
    _check(tensors, weights)
    dtype = work_dtype(tensors[0])
    total = float(sum(weights))
    if normalize and abs(total) < 1e-12:
        raise AlmostLinearError("weights sum to zero; pass normalize=False or other weights")
    out = torch.zeros(tensors[0].shape, dtype=dtype)
    for t, w in zip(tensors, weights):
        out.add_(t.to(dtype), alpha=float(w))
    if normalize:
        out.div_(total)
    return out.to(tensors[0].dtype)


def slerp(a: Tensor, b: Tensor, t: float, *, dot_threshold: float = 0.9995, eps: float = 1e-8) -> Tensor:
    """Spherical interpolation between two whole tensors (flattened), t=0 gives ``a``.

    The angle comes from the normalised tensors; the result interpolates the tensors themselves,
    so norms are interpolated along with the direction. Nearly parallel (or antiparallel) pairs,
    where the sine vanishes, fall back to linear interpolation.
    """
    _check([a, b])
    dtype = work_dtype(a)
    x, y = a.to(dtype).reshape(-1), b.to(dtype).reshape(-1)
    nx, ny = x.norm(), y.norm()
    if nx < eps or ny < eps:
        return ((1 - t) * x + t * y).reshape(a.shape).to(a.dtype)
    dot = float(torch.dot(x / nx, y / ny).clamp(-1, 1))
    if abs(dot) > dot_threshold:
        out = (1 - t) * x + t * y
    else:
        theta = torch.acos(torch.tensor(dot, dtype=torch.float64))
        s = torch.sin(theta)
        ca = float(torch.sin((1 - t) * theta) / s)
        cb = float(torch.sin(t * theta) / s)
        out = ca * x + cb * y
    return out.reshape(a.shape).to(a.dtype)


def task_arithmetic(base: Tensor, tensors: Sequence[Tensor], weights: Sequence[float], *,
                    lam: float = 1.0, normalize: bool = False) -> Tensor:
    """θ_base + λ Σ wᵢ(θᵢ − θ_base) (divided by Σ wᵢ when ``normalize``)."""
    _check([base, *tensors])
    dtype = work_dtype(base)
    b = base.to(dtype)
    deltas = [t.to(dtype) - b for t in tensors]
    mixed = linear(deltas, weights, normalize=normalize) if deltas else torch.zeros_like(b)
    return (b + lam * mixed).to(base.dtype)


def top_magnitude_mask(magnitude: Tensor, k: int, *, seen_equal: int = 0, threshold: float | None = None,
                       quota: int | None = None) -> tuple[Tensor, int]:
    """Mask of the ``k`` largest entries of a flat ``magnitude``; entries equal to the k-th largest are
    taken in index order, so the choice is exact and deterministic (also when applied chunk by chunk,
    passing the ``threshold``, the ``quota`` of equal entries and how many were ``seen_equal`` before)."""
    if threshold is None:
        threshold, quota = magnitude_threshold(magnitude, k)
    above = magnitude > threshold
    equal = magnitude == threshold
    rank = torch.cumsum(equal.to(torch.int64), 0) + seen_equal
    keep = above | (equal & (rank <= quota))
    return keep, seen_equal + int(equal.sum())


def magnitude_threshold(magnitude: Tensor, k: int) -> tuple[float, int]:
    """The k-th largest value of a flat tensor and how many entries equal to it fit among the top k."""
    if magnitude.numel() >= RADIX_MIN_ENTRIES and magnitude.dtype in _SAME_WIDTH_INT and magnitude.is_contiguous():
        threshold, above = kth_largest_nonnegative(magnitude.reshape(-1), k)
        if threshold >= 0:  # the bit patterns order like the values only when none is negative
            return threshold, k - above
    n = magnitude.numel()
    threshold = torch.kthvalue(magnitude.float(), n - k + 1).values
    above = int((magnitude > threshold).sum())
    return float(threshold), k - above


_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.float64: torch.int64}
RADIX_BITS = 16
# Below this the memory kthvalue needs is small, and its single call beats the radix select's
# fixed cost of two 65,536-bin histograms.
RADIX_MIN_ENTRIES = 1 << 22


def kth_largest_nonnegative(values: Tensor, k: int, *, chunk: int = 1 << 20) -> tuple[float, int]:
    """(k-th largest entry, how many entries are larger) of a flat float32/float64 tensor of values >= 0.

    For non-negative floats the bit patterns, read as integers, sort like the values, so a radix
    select on them (16 bits at a time, counted slice by slice) finds the k-th largest exactly, with
    memory for one slice: ``kthvalue`` copies the tensor and keeps an int64 index per entry (three
    times the tensor's size). Returns -1 as the value if an entry turns out to be negative.
    """
    n = values.numel()
    if not 1 <= k <= n:
        raise AlmostLinearError(f"k = {k} is outside 1..{n}")
    width_total = values.element_size() * 8
    bits = values.view(_SAME_WIDTH_INT[values.dtype])
    prefix, known, remaining, above = 0, 0, k, 0
    while known < width_total:
        width = min(RADIX_BITS, width_total - known)
        shift = width_total - known - width
        counts = torch.zeros(1 << width, dtype=torch.int64)
        for s in range(0, n, chunk):
            part = bits[s:s + chunk]
            if bool((part < 0).any()):  # a sign bit set: a negative value (or -0.0)
                return -1.0, 0
            if known:
                part = part[(part >> (shift + width)) == prefix]
            counts += torch.bincount(((part >> shift) & ((1 << width) - 1)).long(), minlength=1 << width)
        from_top = counts.flip(0).cumsum(0)
        index = int(torch.searchsorted(from_top, remaining))  # the first bin from the top that reaches k
        digit = (1 << width) - 1 - index
        larger = int(from_top[index] - counts[digit])
        above += larger
        remaining -= larger
        prefix = (prefix << width) | digit
        known += width
    value = torch.tensor([prefix], dtype=bits.dtype).view(values.dtype)
    return float(value), above


def keep_count(density: float, n: int) -> int:
    """How many entries TIES keeps: the top ``density`` fraction, at least one."""
    if not 0.0 <= density <= 1.0:
        raise AlmostLinearError(f"density must lie in [0, 1], got {density}")
    return n if density >= 1.0 else (0 if density == 0.0 else max(1, int(density * n)))


def trim_magnitude(delta: Tensor, density: float) -> Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude (at least one), zero the rest."""
    k = keep_count(density, delta.numel())
    if k >= delta.numel():
        return delta
    if k == 0:
        return torch.zeros_like(delta)
    flat = delta.reshape(-1)
    keep, _ = top_magnitude_mask(flat.abs().float(), k)
    return (flat * keep.to(flat.dtype)).reshape(delta.shape)


def dare_seed(seed: int, model: int, name: str) -> int:
    """The seed of the random drops of input ``model`` in tensor ``name``: a hash of all three.

    Hashing the tensor's name makes the drops independent of the order tensors are visited; hashing
    the pair (seed, model) rather than adding them keeps runs with adjacent seeds apart (with
    ``seed + model``, model 1 of seed s would drop exactly what model 0 of seed s + 1 drops).
    """
    return int(digest(f"dare:{int(seed)}:{int(model)}:{name}")[len(PREFIX):], 16) % (2**63 - 1)


def dare(delta: Tensor, density: float, *, generator: torch.Generator | None = None,
         rescale: str = "inverse") -> Tensor:
    """Drop each entry with probability 1 − density and rescale the survivors.

    ``rescale="inverse"`` divides by the keep probability (arXiv 2311.03099, unbiased in
    expectation); ``"l1"`` restores the tensor's L1 norm exactly (mergekit's choice); ``"none"``
    keeps the survivors as they are.
    """
    check_choice(rescale, DARE_RESCALES, "DARE rescale")
    if not 0.0 < density <= 1.0:
        raise AlmostLinearError(f"DARE density (keep probability) must lie in (0, 1], got {density}")
    if density >= 1.0:
        return delta
    keep = torch.rand(delta.shape, generator=generator, dtype=torch.float64) < density
    dropped = delta * keep.to(delta.dtype)
    if rescale == "inverse":
        return dropped / density
    if rescale == "l1":
        before, after = delta.abs().sum(), dropped.abs().sum()
        if before < 1e-7 or after < 1e-7:
            return dropped
        return dropped * (before / after)
    return dropped


def elect_signs(deltas: Tensor) -> Tensor:
    """Per coordinate, the sign (+1/−1) of the summed deltas [n, ...]: the one with more total mass."""
    return torch.where(deltas.sum(0) >= 0, 1.0, -1.0).to(deltas.dtype)


def consensus(base: Tensor, deltas: Sequence[Tensor], weights: Sequence[float], *, lam: float = 1.0,
              normalize: bool = True, election: str = "paper") -> Tensor:
    """TIES steps 2–3 on already sparsified deltas: elect a sign, then merge only agreeing entries.

    ``election="paper"`` elects on the unweighted trimmed task vectors, as Algorithm 1 of
    arXiv 2306.01708; ``"weighted"`` elects on weight-multiplied ones (mergekit's rule). With
    ``normalize`` the agreeing entries are averaged with their weights (the disjoint mean);
    without it they are summed with their weights.
    """
    check_choice(election, SIGN_ELECTIONS, "sign election")
    dtype = work_dtype(base)
    stack = torch.stack([d.to(dtype) for d in deltas])
    w = torch.tensor([float(x) for x in weights], dtype=dtype).reshape(-1, *([1] * base.dim()))
    weighted = stack * w
    sign = elect_signs(weighted if election == "weighted" else stack)
    agree = (torch.sign(stack) == sign).to(dtype)
    mixed = (weighted * agree).sum(0)
    if normalize:
        divisor = (w * agree).sum(0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
        mixed = mixed / divisor
    return (base.to(dtype) + lam * mixed).to(base.dtype)


def ties(base: Tensor, tensors: Sequence[Tensor], weights: Sequence[float], *,
         density: float | Sequence[float] = 0.2,
         lam: float = 1.0, normalize: bool = True, election: str = "paper") -> Tensor:
    """TIES merging (arXiv 2306.01708): trim each task vector to its top ``density``, elect signs, disjoint mean."""
    _check([base, *tensors], None)
    dtype = work_dtype(base)
    b = base.to(dtype)
    densities = per_input(density, len(tensors), "density")
    deltas = [trim_magnitude(t.to(dtype) - b, d) for t, d in zip(tensors, densities)]
    return consensus(base, deltas, weights, lam=lam, normalize=normalize, election=election)


def _dared(b: Tensor, tensors: Sequence[Tensor], density, rescale: str, seed: int, name: str) -> list[Tensor]:
    densities = per_input(density, len(tensors), "density")
    out = []
    for i, (t, d) in enumerate(zip(tensors, densities)):
        g = torch.Generator().manual_seed(dare_seed(seed, i, name))
        out.append(dare(t.to(b.dtype) - b, d, generator=g, rescale=rescale))
    return out


def dare_linear(base: Tensor, tensors: Sequence[Tensor], weights: Sequence[float], *, density: float | Sequence[float] = 0.5,
                lam: float = 1.0, normalize: bool = False, rescale: str = "inverse", seed: int = 0,
                name: str = "") -> Tensor:
    """DARE then task arithmetic: drop-and-rescale each task vector, then add them with their weights."""
    _check([base, *tensors], None)
    dtype = work_dtype(base)
    b = base.to(dtype)
    deltas = _dared(b, tensors, density, rescale, seed, name)
    mixed = linear(deltas, weights, normalize=normalize)
    return (b + lam * mixed).to(base.dtype)


def dare_ties(base: Tensor, tensors: Sequence[Tensor], weights: Sequence[float], *, density: float | Sequence[float] = 0.5,
              lam: float = 1.0, normalize: bool = False, rescale: str = "inverse", seed: int = 0,
              name: str = "", election: str = "paper") -> Tensor:
    """DARE in place of TIES's magnitude trim, then sign election and the agreeing-entry merge."""
    _check([base, *tensors], None)
    dtype = work_dtype(base)
    b = base.to(dtype)
    deltas = _dared(b, tensors, density, rescale, seed, name)
    return consensus(base, deltas, weights, lam=lam, normalize=normalize, election=election)
