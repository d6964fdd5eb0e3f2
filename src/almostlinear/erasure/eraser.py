"""The frozen LEACE eraser: one site or many (e.g. every layer), saved as one artifact.

``eraser(x)`` erases a tensor of activations; ``with eraser.apply(model): ...`` erases inside the
model at each of its sites through hooks and restores the model bit for bit on exit. Factors of
several sites are stacked (``[sites, d, r]``), zero-padded to the largest rank; zero columns
change nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.artifact import Artifact, Provenance, Where
from ..core.errors import ShapeError
from ..core.hooks import Positions, intervene
from ..core.locate import Structure, locate
from ..core.sites import Site, as_sites
from .leace import DEFAULT_SVD_TOL, LeaceFitter, erase

OPERATION = "leace-erase"


@dataclass(frozen=True)
class LeaceEraser(Artifact):
    """``x -> x - (x - mean) R^T L^T`` at each site; ``left [S, d, r]``, ``right [S, r, d]``, ``mean [S, d]``."""

    kind = "leace-eraser"
    left: torch.Tensor
    right: torch.Tensor
    mean: torch.Tensor
    sites: tuple[str, ...]
    ranks: tuple[int, ...]
    method: str = "leace"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(str(s) for s in self.sites))
        object.__setattr__(self, "ranks", tuple(int(r) for r in self.ranks))
        s = len(self.sites)
        if self.left.dim() != 3 or self.right.dim() != 3 or self.mean.dim() != 2:
            raise ShapeError("left, right and mean must be [sites, d, r], [sites, r, d] and [sites, d]")
        if not (self.left.shape[0] == self.right.shape[0] == self.mean.shape[0] == len(self.ranks) == s):
            raise ShapeError("the factors, sites and ranks disagree on the number of sites")
        if self.left.shape[1] != self.mean.shape[1] or self.right.shape[2] != self.mean.shape[1]:
            raise ShapeError("the factors disagree on the width d")

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def from_fitters(cls, fitters: dict, *, model_fingerprint: str | None = None,
                     data_hash: str | None = None, extra: dict | None = None) -> LeaceEraser:
        """One eraser from ``{site: LeaceFitter}`` (sites as ``Site`` or ``"name.layer"``)."""
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
        """From ``{site: (L [d, r], R [r, d], mean [d])}``; stored in float32."""
        sites = [str(s) for s in parts]
        widths = {p[0].shape[0] for p in parts.values()}
        if len(widths) != 1:
            raise ShapeError(f"all sites of one eraser must share a width, got {sorted(widths)}")
        d = widths.pop()
        ranks = [p[0].shape[1] for p in parts.values()]
        r = max(max(ranks), 1)
        left = torch.zeros(len(sites), d, r)
        right = torch.zeros(len(sites), r, d)
        mean = torch.zeros(len(sites), d)
        for i, (lf, rf, mu) in enumerate(parts.values()):
            left[i, :, :lf.shape[1]] = lf.float()
            right[i, :rf.shape[0]] = rf.float()
            mean[i] = mu.float()
        names = {Site.parse(s).name for s in sites}
        layers = [Site.parse(s).layer for s in sites]
        provenance = Provenance(
            model_fingerprint=model_fingerprint,
            where=Where.at(names.pop() if len(names) == 1 else None, layers[0] if len(layers) == 1 else None),
            method=method,
            data_hash=data_hash,
            units="raw activations; erased in place of the site's activation",
            extra={"operation": OPERATION, "sites": sites, "ranks": ranks, **(extra or {})},
        )
        return cls(left, right, mean, tuple(sites), tuple(ranks), method, provenance=provenance)

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

    def _index(self, site) -> int:
        if site is None:
            if len(self.sites) != 1:
                raise ShapeError(f"this eraser has {len(self.sites)} sites; say which: {list(self.sites)}")
            return 0
        key = str(site)
        if key not in self.sites:
            raise ShapeError(f"this eraser has no site {key}; it has {list(self.sites)}")
        return self.sites.index(key)

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
        return type(self)(self.left[i:i + 1, :, :r].clone(), self.right[i:i + 1, :r].clone(),
                          self.mean[i:i + 1].clone(), (self.sites[i],), (self.ranks[i],), self.method,
                          provenance=self.provenance)

    @contextlib.contextmanager
    def apply(self, model, *, positions: Positions = "all", structure: Structure | None = None,
              check_fingerprint: bool = True) -> Iterator[None]:
        """Erase at every site of this eraser while the context is open (``model`` may be a LoadedModel).

        Warns when the model is not the one the eraser was fitted on; raises ``ShapeError`` when
        the widths differ and ``LayerError`` when a layer is outside the model.
        """
        module: nn.Module = model.model if hasattr(model, "model") and not isinstance(model, nn.Module) else model
        structure = structure or getattr(model, "structure", None) or locate(module)
        if check_fingerprint and self.provenance.model_fingerprint is not None:
            from ..core.models import fingerprint

            self.check_model(getattr(model, "fingerprint", None) or fingerprint(module))
        edits = {}
        for i, name in enumerate(self.sites):
            (site,) = as_sites(structure, name)
            width = site.width(structure)
            if width != self.dim:
                raise ShapeError(f"the eraser takes {self.dim} features but {site} carries {width}")
            edits[site] = _edit(self.left[i], self.right[i], self.mean[i])
        with intervene(module, edits, positions=positions, structure=structure):
            yield


def _edit(left: torch.Tensor, right: torch.Tensor, mean: torch.Tensor):
    cache: dict = {}

    def edit(hidden: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        key = (hidden.dtype, hidden.device)
        if key not in cache:
            cache[key] = tuple(t.to(dtype=hidden.dtype, device=hidden.device) for t in (left, right, mean))
        lf, rf, mu = cache[key]
        removed = ((hidden - mu) @ rf.T) @ lf.T
        return hidden - chosen[..., None].to(hidden.dtype) * removed

    return edit


def stack(erasers: Sequence[LeaceEraser]) -> LeaceEraser:
    """Join erasers of different sites into one (provenance of the first, sites of all)."""
    parts = {}
    for e in erasers:
        for i, s in enumerate(e.sites):
            r = e.ranks[i]
            parts[s] = (e.left[i, :, :r], e.right[i, :r], e.mean[i])
    first = erasers[0].provenance
    return LeaceEraser.from_factors(parts, method=erasers[0].method, model_fingerprint=first.model_fingerprint,
                                    data_hash=first.data_hash)
