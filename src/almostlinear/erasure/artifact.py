"""The frozen LEACE eraser: one site name at one layer or many (e.g. every layer), saved as one artifact.

``eraser(x)`` erases a tensor of activations; ``with eraser.apply(model): ...`` erases inside the
model at each of its layers through hooks and restores the model bit for bit on exit. Factors of
several layers are stacked (``[layers, d, r]``), zero-padded to the largest rank; zero columns
change nothing. Where it acts is ``provenance.where``: one site name and the layers, in order.

An eraser follows :mod:`almostlinear.core.lever` with a strength in ``fraction`` units (0 is the
identity, 1 the eraser, values between interpolate), but it cannot be baked: LEACE is an oblique
affine map applied at one site, and no weight of the model computes exactly that map.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.artifact import Artifact, Provenance, Where
from ..core.errors import LeverError, ShapeError, SiteError
from ..core.hooks import Positions, intervene
from ..core.lever import Baked, as_model, check_fingerprint, check_strength
from ..core.locate import Structure
from ..core.sites import Site, as_sites
from .leace import DEFAULT_SVD_TOL, LeaceFitter, erase


def where_of(sites: Sequence[str | Site]) -> Where:
    """One :class:`Where` for sites that share a name (``resid_post.3``, ``resid_post.7`` ...)."""
    parsed = [site if isinstance(site, Site) else Site.parse(str(site)) for site in sites]
    names = sorted({site.name for site in parsed})
    if len(names) != 1:
        raise SiteError(f"one eraser acts at one site name, got {', '.join(names) or 'none'}: fit one eraser "
                        "per site name")
    return Where(names[0], tuple(site.layer for site in parsed))


@dataclass(frozen=True)
class LeaceEraser(Artifact):
    """``x -> x - (x - mean) R^T L^T`` at each layer; ``left [S, d, r]``, ``right [S, r, d]``, ``mean [S, d]``."""

    kind = "erasure.leace"
    strength_units = ("fraction",)
    bakes = False
    left: torch.Tensor
    right: torch.Tensor
    mean: torch.Tensor
    ranks: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", tuple(int(r) for r in self.ranks))
        where = self.provenance.where
        if where is None or where.site is None:
            raise ShapeError("an eraser needs provenance.where with its site and layers (build it with "
                             "LeaceEraser.fit or LeaceEraser.from_factors)")
        s = len(where.layers)
        if self.left.dim() != 3 or self.right.dim() != 3 or self.mean.dim() != 2:
            raise ShapeError("left, right and mean must be [sites, d, r], [sites, r, d] and [sites, d]")
        if not (self.left.shape[0] == self.right.shape[0] == self.mean.shape[0] == len(self.ranks) == s):
            raise ShapeError("the factors, layers and ranks disagree on the number of sites")
        if self.left.shape[1] != self.mean.shape[1] or self.right.shape[2] != self.mean.shape[1]:
            raise ShapeError("the factors disagree on the width d")

    @classmethod
    def _join(cls, tensors: dict, fields: dict, provenance: Provenance) -> LeaceEraser:
        # Files of format 1 also held the method as a field (see ``_current``).
        fields = {k: v for k, v in fields.items() if k != "method"}
        return cls(**tensors, **fields, provenance=_current(provenance))

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_fitters(cls, fitters: dict, *, model_fingerprint: str | None = None,
                     data_hash: str | None = None, extra: dict | None = None) -> LeaceEraser:
        """One eraser from ``{site: LeaceFitter}`` (sites as ``Site`` or ``"name.layer"``, one name)."""
        if not fitters:
            raise ShapeError("no fitters given")
        parts = {str(site): fitter.factors() for site, fitter in fitters.items()}
        methods = {f.method for f in fitters.values()}
        shrink = {f.shrinkage for f in fitters.values()}
        tol = {f.svd_tol for f in fitters.values()}
        details = {"shrinkage": shrink.pop() if len(shrink) == 1 else None,
                   "svd_tol": tol.pop() if len(tol) == 1 else None,
                   "n_examples": {s: f.n for s, f in ((str(k), v) for k, v in fitters.items())}}
        return cls.from_factors(parts, method=methods.pop() if len(methods) == 1 else "mixed",
                                model_fingerprint=model_fingerprint, data_hash=data_hash,
                                extra={**details, **(extra or {})})

    @classmethod
    def from_factors(cls, parts: dict, *, method: str = "leace", model_fingerprint: str | None = None,
                     data_hash: str | None = None, extra: dict | None = None) -> LeaceEraser:
        """From ``{site: (L [d, r], R [r, d], mean [d])}`` (one site name); stored in float32."""
        where = where_of(list(parts))
        widths = {p[0].shape[0] for p in parts.values()}
        if len(widths) != 1:
            raise ShapeError(f"all sites of one eraser must share a width, got {sorted(widths)}")
        d = widths.pop()
        ranks = [p[0].shape[1] for p in parts.values()]
        r = max(max(ranks), 1)
        left = torch.zeros(len(parts), d, r)
        right = torch.zeros(len(parts), r, d)
        mean = torch.zeros(len(parts), d)
        for i, (lf, rf, mu) in enumerate(parts.values()):
            left[i, :, :lf.shape[1]] = lf.float()
            right[i, :rf.shape[0]] = rf.float()
            mean[i] = mu.float()
        provenance = Provenance(model_fingerprint=model_fingerprint, where=where, method=method, data_hash=data_hash,
                                units="fraction", extra=dict(extra or {}))
        return cls(left, right, mean, tuple(ranks), provenance=provenance)

    @classmethod
    def fit(cls, x: torch.Tensor, z, *, site: str | Site = "resid_post.0", n_classes: int = 1,
            method: str = "leace", shrinkage: bool = False, svd_tol: float = DEFAULT_SVD_TOL,
            model_fingerprint: str | None = None, data_hash: str | None = None) -> LeaceEraser:
        """Fit on activations ``x`` ``[n, d]`` with labels ``z`` at one site (for the record)."""
        x = torch.as_tensor(x)
        if x.dim() < 2:
            raise ShapeError(f"x must be [n, d], got shape {tuple(x.shape)}")
        fitter = LeaceFitter(x.shape[-1], n_classes, method, shrinkage, svd_tol).update(x, z)
        return cls.from_fitters({str(site): fitter}, model_fingerprint=model_fingerprint, data_hash=data_hash)

    # ---- use ----------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.mean.shape[1]

    @property
    def sites(self) -> tuple[str, ...]:
        """``"name.layer"`` of each layer the eraser acts at, in order (read from ``provenance.where``)."""
        where = self.provenance.where
        return tuple(f"{where.site}.{layer}" for layer in where.layers)

    def _index(self, site) -> int:
        sites = self.sites
        if site is None:
            if len(sites) != 1:
                raise SiteError(f"this eraser has {len(sites)} sites; say which: {list(sites)}")
            return 0
        key = str(site)
        if key not in sites:
            raise SiteError(f"this eraser has no site {key}; it has {list(sites)}")
        return sites.index(key)

    def __call__(self, x: torch.Tensor, site: str | Site | None = None) -> torch.Tensor:
        """Erase ``x`` ``[..., d]`` with the factors of ``site`` (the only one by default)."""
        i = self._index(site)
        return erase(x, self.left[i], self.right[i], self.mean[i])

    def projection(self, site: str | Site | None = None) -> torch.Tensor:
        """The linear part ``P = I - L R`` ``[d, d]`` (erasure is ``mean + P (x - mean)``)."""
        i = self._index(site)
        return torch.eye(self.dim) - self.left[i] @ self.right[i]

    def at(self, site: str | Site) -> LeaceEraser:
        """The eraser of one of the sites."""
        i = self._index(site)
        r = max(self.ranks[i], 1)
        where = dataclasses.replace(self.provenance.where, layers=(self.provenance.where.layers[i],))
        return type(self)(self.left[i:i + 1, :, :r].clone(), self.right[i:i + 1, :r].clone(),
                          self.mean[i:i + 1].clone(), (self.ranks[i],),
                          provenance=dataclasses.replace(self.provenance, where=where))

    @contextlib.contextmanager
    def apply(self, model, strength: float = 1.0, *, positions: Positions = "all",
              structure: Structure | None = None, strict: bool = False) -> Iterator[nn.Module]:
        """Erase at every site of this eraser while the context is open; yields the module.

        ``strength`` interpolates between the identity (0) and the eraser (1). ``model`` is an
        ``nn.Module`` or a ``LoadedModel``. Another model's eraser warns (raises when ``strict``);
        widths that differ raise ``ShapeError`` and a layer outside the model ``LayerError``.
        """
        fraction = check_strength(strength, "fraction")
        view = as_model(model, structure=structure)
        check_fingerprint(self, view, strict=strict)
        edits = {}
        for i, name in enumerate(self.sites):
            (site,) = as_sites(view.structure, name)
            width = site.width(view.structure)
            if width != self.dim:
                raise ShapeError(f"the eraser takes {self.dim} features but {site} carries {width}")
            edits[site] = _edit(self.left[i], self.right[i], self.mean[i], fraction)
        with intervene(view.module, edits, positions=positions, structure=view.structure):
            yield view.module

    def footprint(self) -> list[dict]:
        """Per site: the span the eraser reads (rows of ``right``) and writes (columns of ``left``)."""
        out = []
        for i, site in enumerate(self.sites):
            r = self.ranks[i]
            if r:
                where = Where.at(site)
                out.append({"where": where, "basis": self.right[i, :r], "role": "reads"})
                out.append({"where": where, "basis": self.left[i, :, :r].T, "role": "writes"})
        return out

    def bake_(self, model, strength: float = 1.0, **options) -> Baked:
        """Refused: LEACE has no exact form in the weights (see the module docstring). Changes nothing."""
        raise LeverError("a LEACE eraser cannot be baked: it is an oblique affine map applied at one site "
                         f"({self.provenance.where}), and no weight of the model computes exactly that map "
                         "(the same activations also feed other paths); use apply() instead")


def _current(provenance: Provenance) -> Provenance:
    """A loaded eraser's provenance in today's shape. Files of format 1 kept only a shared site name in
    ``where`` and the layers in ``extra["sites"]``, described the unit in prose, and copied the
    operation, sites and ranks into ``extra``."""
    extra = dict(provenance.extra)
    where = where_of(extra["sites"]) if "sites" in extra else provenance.where
    for key in ("operation", "sites", "ranks"):
        extra.pop(key, None)
    return dataclasses.replace(provenance, where=where, units="fraction", extra=extra)


def _edit(left: torch.Tensor, right: torch.Tensor, mean: torch.Tensor, fraction: float = 1.0):
    cache: dict = {}

    def edit(hidden: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        key = (hidden.dtype, hidden.device)
        if key not in cache:
            cache[key] = tuple(t.to(dtype=hidden.dtype, device=hidden.device) for t in (left, right, mean))
        lf, rf, mu = cache[key]
        removed = ((hidden - mu) @ rf.T) @ lf.T
        return hidden - (chosen[..., None].to(hidden.dtype) * fraction) * removed

    return edit


def stack(erasers: Sequence[LeaceEraser]) -> LeaceEraser:
    """Join erasers of different layers of one site name into one (provenance of the first, layers of all)."""
    parts = {}
    for e in erasers:
        for i, s in enumerate(e.sites):
            r = e.ranks[i]
            parts[s] = (e.left[i, :, :r], e.right[i, :r], e.mean[i])
    first = erasers[0].provenance
    return LeaceEraser.from_factors(parts, method=first.method, model_fingerprint=first.model_fingerprint,
                                    data_hash=first.data_hash)
