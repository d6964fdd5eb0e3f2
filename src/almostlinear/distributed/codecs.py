"""How each mergeable statistic travels: its state as a list of tensors, rebuilt from them, merged.

A codec has three functions: ``tensors(obj)`` lists every piece of state (counts as int64 tensors, so
the list alone is the state), ``rebuild(template, tensors)`` makes an object of the template's layout
that holds received tensors, and ``merge(a, b)`` combines two (``a`` from the lower ranks).

Classes of other packages are registered here by name and imported only when an object of that
kind is reduced, so importing this module imports none of the families. A class of one's own joins
without registration by offering ``state_tensors()``, ``from_state_tensors(tensors)`` and
``merge(other)``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.errors import DistributedError


@dataclass(frozen=True)
class Codec:
    tensors: Callable[[object], list[torch.Tensor]]
    rebuild: Callable[[object, list[torch.Tensor]], object]
    merge: Callable[[object, object], object]


def _count(n: int | float) -> torch.Tensor:
    return torch.tensor([n], dtype=torch.int64)


# -- RunningMoments (and PairMoments, its per-layer stack) -------------------------------------------

_MOMENT_FIELDS = ("mean_x", "sxx_", "mean_y", "syy_", "sxy_")


def _moments_tensors(m) -> list[torch.Tensor]:
    return [_count(m.n)] + [getattr(m, f) for f in _MOMENT_FIELDS if getattr(m, f) is not None]


def _moments_rebuild(template, tensors: list[torch.Tensor]):
    out = template.copy()
    out.n = int(tensors[0].item())
    present = [f for f in _MOMENT_FIELDS if getattr(template, f) is not None]
    for name, value in zip(present, tensors[1:], strict=True):
        setattr(out, name, value)
    return out


MOMENTS = Codec(_moments_tensors, _moments_rebuild, lambda a, b: a.merge(b))


# -- LeaceFitter ---------------------------------------------------------------------------------------

def _leace_rebuild(template, tensors):
    out = copy.copy(template)
    out.moments = _moments_rebuild(template.moments, tensors)
    return out


LEACE = Codec(lambda f: _moments_tensors(f.moments), _leace_rebuild, lambda a, b: a.merge(b))


# -- ROME / MEMIT key statistics -------------------------------------------------------------------------

def _second_rebuild(template, tensors):
    return type(template)(template.dim, int(tensors[0].item()), tensors[1])


SECOND_MOMENT = Codec(lambda s: [_count(s.count), s.total], _second_rebuild, lambda a, b: a.merge(b))


def _keys_rebuild(template, tensors):
    c, half_a, half_b, counts = tensors
    return dataclasses.replace(template, c=c, half_a=half_a, half_b=half_b, n_a=int(counts[0]), n_b=int(counts[1]))


KEY_STATISTICS = Codec(lambda k: [k.c, k.half_a, k.half_b, torch.tensor([k.n_a, k.n_b], dtype=torch.int64)],
                       _keys_rebuild, lambda a, b: a.merge(b))


# -- AffineLensFitter: per-state training and validation moments ----------------------------------------

def _lens_tensors(fitter) -> list[torch.Tensor]:
    return [t for m in (*fitter.train, *fitter.validation) for t in _moments_tensors(m)]


def _lens_rebuild(template, tensors):
    out = copy.copy(template)
    moments, at = [], 0
    for m in (*template.train, *template.validation):
        size = len(_moments_tensors(m))
        moments.append(_moments_rebuild(m, tensors[at:at + size]))
        at += size
    half = len(template.train)
    out.train, out.validation = moments[:half], moments[half:]
    return out


def _lens_merge(a, b):
    out = copy.copy(a)
    out.train = [x.merge(y) for x, y in zip(a.train, b.train, strict=True)]
    out.validation = [x.merge(y) for x, y in zip(a.validation, b.validation, strict=True)]
    return out


AFFINE_LENS = Codec(_lens_tensors, _lens_rebuild, _lens_merge)


# -- StreamingCKA: raw power sums around a shift --------------------------------------------------------

_CKA_SUMS = ("_xx", "_yy", "_xy", "_x_qy", "_y_qx", "_qxy")
_ROW_SUMS = ("s", "xq", "q", "qq")


def _cka_tensors(est) -> list[torch.Tensor]:
    dim_x, dim_y = est.moments.dim_x, est.moments.dim_y
    shift = est._shift or (torch.zeros(dim_x, dtype=torch.float64), torch.zeros(dim_y, dtype=torch.float64))
    sums = [getattr(side, f) for side in (est._x, est._y) for f in _ROW_SUMS]
    return (_moments_tensors(est.moments) + [_count(est._shift is not None), *shift, *sums]
            + [getattr(est, f) for f in _CKA_SUMS])


def _cka_rebuild(template, tensors):
    out = copy.copy(template)
    size = len(_moments_tensors(template.moments))
    out.moments = _moments_rebuild(template.moments, tensors[:size])
    flag, shift_x, shift_y, *rest = tensors[size:]
    out._shift = (shift_x, shift_y) if int(flag.item()) else None
    out._x, out._y = copy.copy(template._x), copy.copy(template._y)
    for side in (out._x, out._y):
        for f in _ROW_SUMS:
            setattr(side, f, rest.pop(0))
    for f in _CKA_SUMS:
        setattr(out, f, rest.pop(0))
    return out


def _reshifted(est, shift_x: torch.Tensor, shift_y: torch.Tensor) -> dict[str, torch.Tensor]:
    """``est``'s sums as if its rows had been centred on the new shift instead of its own.

    Rows were stored as ``x' = x - c``; around ``c₂`` they are ``x' + δ`` with ``δ = c - c₂``, and
    every power sum expands exactly in the old ones (up to fourth powers of the norms)."""
    n = est.moments.n
    dx, dy = est._shift[0] - shift_x, est._shift[1] - shift_y
    ex, ey = dx @ dx, dy @ dy
    x, y = est._x, est._y

    def side(r, xx, d, e):
        s, q = r.s + n * d, r.q + 2 * (d @ r.s) + n * e
        xx_new = xx + torch.outer(r.s, d) + torch.outer(d, r.s) + n * torch.outer(d, d)
        xq = r.xq + 2 * (xx @ d) + e * r.s + q * d
        qq = r.qq + 4 * (d @ r.xq) + 4 * (d @ xx @ d) + n * e * e + 2 * e * r.q + 4 * e * (d @ r.s)
        return {"s": s, "q": q, "xq": xq, "qq": qq, "xx": xx_new}

    new_x, new_y = side(x, est._xx, dx, ex), side(y, est._yy, dy, ey)
    xy = est._xy
    out = {"x": new_x, "y": new_y}
    out["_xy"] = xy + torch.outer(x.s, dy) + torch.outer(dx, y.s) + n * torch.outer(dx, dy)
    out["_x_qy"] = est._x_qy + 2 * (xy @ dy) + ey * x.s + new_y["q"] * dx
    out["_y_qx"] = est._y_qx + 2 * (xy.T @ dx) + ex * y.s + new_x["q"] * dy
    out["_qxy"] = (est._qxy + 2 * (dy @ est._y_qx) + ey * x.q + 2 * (dx @ est._x_qy) + 4 * (dx @ xy @ dy)
                   + 2 * ey * (dx @ x.s) + ex * y.q + 2 * ex * (dy @ y.s) + n * ex * ey)
    return out


def _cka_merge(a, b):
    if b.moments.n == 0:
        return _cka_rebuild(a, [t.clone() for t in _cka_tensors(a)])
    if a.moments.n == 0:
        return _cka_rebuild(a, [t.clone() for t in _cka_tensors(b)])
    out = _cka_rebuild(a, [t.clone() for t in _cka_tensors(a)])
    out.moments = a.moments.merge(b.moments)
    moved = _reshifted(b, *a._shift)
    for side, new in ((out._x, moved["x"]), (out._y, moved["y"])):
        for f in _ROW_SUMS:
            setattr(side, f, getattr(side, f) + new[f])
    out._xx, out._yy = out._xx + moved["x"]["xx"], out._yy + moved["y"]["xx"]
    for f in ("_xy", "_x_qy", "_y_qx", "_qxy"):
        setattr(out, f, getattr(out, f) + moved[f])
    return out


STREAMING_CKA = Codec(_cka_tensors, _cka_rebuild, _cka_merge)


# -- the registry ------------------------------------------------------------------------------------

# Qualified class names, looked up along an object's MRO, so subclasses (PairMoments) share a codec.
REGISTRY: dict[str, Codec] = {
    "almostlinear.core.stats.RunningMoments": MOMENTS,
    "almostlinear.erasure.leace.LeaceFitter": LEACE,
    "almostlinear.editing.moments.SecondMoment": SECOND_MOMENT,
    "almostlinear.editing.artifact.KeyStatistics": KEY_STATISTICS,
    "almostlinear.lens.affine.AffineLensFitter": AFFINE_LENS,
    "almostlinear.similarity.streaming.StreamingCKA": STREAMING_CKA,
}

_OWN = Codec(lambda o: list(o.state_tensors()), lambda t, ts: t.from_state_tensors(ts), lambda a, b: a.merge(b))


def codec_for(obj) -> Codec:
    """The codec of ``obj``'s class (or of a base class); a clear error for anything else."""
    for cls in type(obj).__mro__:
        codec = REGISTRY.get(f"{cls.__module__}.{cls.__qualname__}")
        if codec is not None:
            return codec
    if all(hasattr(obj, name) for name in ("state_tensors", "from_state_tensors", "merge")):
        return _OWN
    known = ", ".join(name.rpartition(".")[2] for name in REGISTRY)
    raise DistributedError(
        f"{type(obj).__name__} cannot be reduced across processes: reducible statistics are {known}, or "
        "any object with state_tensors(), from_state_tensors(tensors) and merge(other)"
    )


def payload_bytes(obj) -> int:
    """Bytes of state one process sends for ``obj`` (containers: the sum of their statistics)."""
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return sum(t.numel() * t.element_size() for t in codec_for(obj).tensors(obj))
