"""Where a lever writes or reads, as a subspace, and how much two such subspaces overlap.

A lever may offer ``footprint()`` returning one :class:`Footprint` (or several: what it writes and
what it reads). Nothing in a lever has to import this module: any object with ``where``, ``basis``
and ``role`` attributes, or a mapping with those keys, is read the same way.

The overlap of two subspaces is given by the cosines of their principal angles: the singular values
of ``Q1ᵀ Q2`` for orthonormal bases ``Q1``, ``Q2``. A cosine of 1 means a direction both contain; 0
throughout means the subspaces are orthogonal, so edits in one cannot be seen through the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..core.artifact import Where
from ..core.errors import NonFiniteError, ShapeError, check_choice

ROLES = ("writes", "reads")
# Sites whose activations live in the residual stream's d_model-wide space, at every layer.
RESIDUAL_SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out")


@dataclass(frozen=True)
class Footprint:
    """A subspace a lever writes into or reads from: ``basis`` ``[k, d]`` spans it at ``where``."""

    where: Where
    basis: torch.Tensor
    role: str = "writes"

    def __post_init__(self) -> None:
        check_choice(self.role, ROLES, "footprint role")
        where = self.where
        if isinstance(where, str):
            where = Where.at(where)
        elif isinstance(where, Mapping):
            where = Where(**where)
        if not isinstance(where, Where):
            raise ShapeError(f"a footprint's where must be a Where or 'site.layer', got {where!r}")
        basis = torch.as_tensor(self.basis).detach()
        if basis.dim() == 1:
            basis = basis[None]
        if basis.dim() != 2 or basis.shape[0] == 0 or basis.shape[1] == 0:
            raise ShapeError(f"a footprint's basis must be [k, d] with k, d >= 1, got shape {tuple(basis.shape)}")
        if not torch.isfinite(basis).all():
            raise NonFiniteError("a footprint's basis contains NaN or infinite values")
        object.__setattr__(self, "where", where)
        object.__setattr__(self, "basis", basis)

    @property
    def width(self) -> int:
        return int(self.basis.shape[1])

    @property
    def space(self) -> str:
        """The space the basis lives in: ``residual`` for the d_model-wide residual-stream sites (at any
        layer, so a write at layer 3 and a read at layer 9 are compared), else the site's own name."""
        site = self.where.site or "model"
        return "residual" if site in RESIDUAL_SITES else site

    def as_dict(self) -> dict:
        return {"where": str(self.where), "role": self.role, "rank": int(self.basis.shape[0]), "width": self.width}


def as_footprint(value) -> Footprint:
    """A :class:`Footprint` from one, from any object with ``where``/``basis``/``role``, or from a mapping."""
    if isinstance(value, Footprint):
        return value
    if isinstance(value, Mapping):
        return Footprint(value["where"], value["basis"], value.get("role", "writes"))
    try:
        return Footprint(value.where, value.basis, getattr(value, "role", "writes"))
    except AttributeError as error:
        raise ShapeError(f"a footprint needs where, basis and role; got {type(value).__name__}") from error


def footprints_of(lever) -> tuple[Footprint, ...]:
    """What ``lever.footprint()`` returns, as a tuple of footprints; empty when it offers none."""
    method = getattr(lever, "footprint", None)
    if not callable(method):
        return ()
    try:
        found = method()
    except NotImplementedError:
        return ()
    if found is None:
        return ()
    if isinstance(found, (list, tuple)):
        return tuple(as_footprint(item) for item in found)
    return (as_footprint(found),)


def orthonormal(basis: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """Orthonormal columns ``[d, r]`` spanning the rows of ``basis`` ``[k, d]`` (rank-deficient rows dropped)."""
    u, s, _ = torch.linalg.svd(basis.double().T, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        raise ShapeError("a footprint's basis is all zeros: it spans no subspace")
    return u[:, s > rtol * s[0]]


def principal_cosines(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the row spaces of ``first`` ``[k1, d]`` and ``second``
    ``[k2, d]``, largest first (float64, ``min(rank1, rank2)`` of them)."""
    if first.shape[-1] != second.shape[-1]:
        raise ShapeError(f"subspaces of different widths {first.shape[-1]} and {second.shape[-1]}")
    q1, q2 = orthonormal(first), orthonormal(second)
    return torch.linalg.svdvals(q1.T @ q2).clamp(0.0, 1.0)


@dataclass(frozen=True)
class Overlap:
    """Principal-angle cosines between a footprint of lever ``first`` and one of lever ``second``."""

    first: str
    second: str
    first_footprint: Footprint
    second_footprint: Footprint
    cosines: tuple[float, ...]  # largest first: 1 = a shared direction, 0 = orthogonal

    @property
    def max_cosine(self) -> float:
        """The cosine of the smallest principal angle: how close the two come to sharing a direction."""
        return self.cosines[0] if self.cosines else 0.0

    def as_dict(self) -> dict:
        return {"first": self.first, "second": self.second,
                "first_footprint": self.first_footprint.as_dict(),
                "second_footprint": self.second_footprint.as_dict(),
                "space": self.first_footprint.space, "cosines": list(self.cosines), "max_cosine": self.max_cosine}


def overlaps(footprints: Mapping[str, tuple[Footprint, ...]]) -> list[Overlap]:
    """Every pair of footprints of different levers that lives in the same space (same width and
    site kind, :attr:`Footprint.space`)."""
    labels = list(footprints)
    out = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            for fa in footprints[a]:
                for fb in footprints[b]:
                    if fa.space == fb.space and fa.width == fb.width:
                        cosines = principal_cosines(fa.basis, fb.basis)
                        out.append(Overlap(a, b, fa, fb, tuple(float(c) for c in cosines)))
    return out
