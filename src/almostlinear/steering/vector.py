"""The steering vector artifact and its reversible application to a model.

Strength is in natural units: by default a strength of 1 adds a vector as long as the median
residual norm at the vector's site (measured on the fitting texts, first token excluded because
it is an attention sink with an outlying norm), so one number means the same at every layer and
in every model. ``units="diff"`` counts in multiples of the fitted mean difference (CAA's
multiplier, arXiv 2312.06681) and ``units="raw"`` adds ``strength * direction`` as stored.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.artifact import Artifact, Provenance, Where
from ..core.errors import NonFiniteError, ShapeError
from ..core.hooks import add
from ..core.locate import Structure, locate
from ..core.models import LoadedModel, fingerprint
from ..core.sites import Site, as_sites
from . import positions as policies
from .choices import UNITS

UNIT_TEXT = "strength 1 = the median residual norm at the site (norms['residual_median'])"


def unpack(model) -> tuple[nn.Module, Any, Structure, str | None]:
    """``(module, tokenizer or None, structure, fingerprint or None)`` from a model or LoadedModel."""
    if isinstance(model, LoadedModel):
        return model.model, model.tokenizer, model.structure, model.fingerprint
    return model, None, locate(model), None


def check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (numbers.Real, torch.Tensor)):
        raise ShapeError(f"strength must be a number, got {strength!r}")
    value = float(strength)
    if not math.isfinite(value):
        raise NonFiniteError(f"strength must be finite, got {value}")
    return value


@dataclass(frozen=True)
class SteeringVector(Artifact):
    """A direction added at one site and layer, with the norm statistics that give it units.

    ``direction`` is a unit vector ``[d]`` (float32). ``norms`` holds ``residual_median`` and
    ``residual_rms`` (token norms at the site on the fitting texts), ``diff_norm`` (the norm of the
    mean pair difference, i.e. of the CAA vector), ``projection_std`` (spread of the activations along
    the direction) and ``n_pairs``. ``positions`` is the default position policy for :meth:`apply`.
    """

    kind = "steering-vector"
    direction: torch.Tensor
    site: str
    layer: int
    method: str
    positions: Any = "all"
    operation: str = "add"
    norms: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = torch.as_tensor(self.direction)
        if d.dim() != 1 or d.numel() == 0:
            raise ShapeError(f"a steering direction is a vector [d], got shape {tuple(d.shape)}")
        if not torch.isfinite(d).all():
            raise NonFiniteError("the steering direction contains NaN or infinite values")
        if not callable(self.positions):  # a function stays itself; headers hold its name only
            object.__setattr__(self, "positions", policies.from_header(self.positions))

    def _split(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, plain = super()._split()
        plain["positions"] = policies.describe(self.positions)
        return tensors, plain

    @classmethod
    def from_direction(cls, direction: torch.Tensor, *, site: str = "resid_post", layer: int, method: str,
                       norms: dict | None = None, positions="all", model_fingerprint: str | None = None,
                       data_hash: str | None = None, extra: dict | None = None) -> SteeringVector:
        """Wrap a direction (any norm; stored as a unit vector) with its provenance."""
        d = torch.as_tensor(direction).detach().double().reshape(-1)
        norm = float(d.norm())
        if not math.isfinite(norm):
            raise NonFiniteError("the steering direction contains NaN or infinite values")
        if norm == 0.0:
            raise ShapeError("the steering direction is zero: the contrast pairs define no direction")
        stats = dict(norms or {})
        stats.setdefault("diff_norm", norm)
        described = policies.describe(positions)
        provenance = Provenance(model_fingerprint=model_fingerprint, where=Where.at(site, int(layer)), method=method,
                                data_hash=data_hash, units=UNIT_TEXT,
                                extra={"operation": "add", "positions": described, **(extra or {})})
        return cls((d / norm).float(), site, int(layer), method, positions if callable(positions) else described,
                   "add", stats, provenance=provenance)

    @property
    def d(self) -> int:
        return int(self.direction.shape[0])

    def target(self) -> Site:
        return Site(self.site, self.layer)

    def scale(self, units: str = "residual") -> float:
        """How long a strength of 1 is, in activation units."""
        if units == "raw":
            return 1.0
        key = {"residual": "residual_median", "diff": "diff_norm"}.get(units)
        if key is None:
            raise ShapeError(f"unknown units {units!r}; choose one of {', '.join(UNITS)}")
        if key not in self.norms:
            raise ShapeError(f"this vector has no {key} statistic; use units='raw'")
        return float(self.norms[key])

    def added(self, strength: float = 1.0, units: str = "residual") -> torch.Tensor:
        """The vector ``[d]`` that :meth:`apply` adds at ``strength``."""
        return self.direction * (check_strength(strength) * self.scale(units))

    def cosine(self, other: SteeringVector) -> float:
        if other.d != self.d:
            raise ShapeError(f"cannot compare vectors of widths {self.d} and {other.d}")
        return float(self.direction.double() @ other.direction.double())

    @contextlib.contextmanager
    def apply(self, model, strength: float = 1.0, *, positions=None, units: str = "residual",
              prompt_lengths: Sequence[int] | torch.Tensor | None = None, check: bool = True,
              structure: Structure | None = None) -> Iterator[None]:
        """Add ``strength`` (in ``units``) times the direction at the vector's site while open.

        ``model`` is an ``nn.Module`` or a ``LoadedModel``. On exit the model is exactly as before,
        also when the body raises (only hooks are installed; no weight is touched). With
        ``check=True`` a model whose fingerprint differs from the one the vector was fitted on
        triggers a :class:`~almostlinear.core.artifact.FingerprintWarning`.
        """
        module, _, found, known = unpack(model)
        structure = structure or found
        value = self.added(strength, units)
        (site,) = as_sites(structure, self.target())  # LayerError when the layer is out of range
        if check and self.provenance.model_fingerprint is not None:
            self.check_model(known or fingerprint(module))
        policy = policies.resolve(self.positions if positions is None else positions, prompt_lengths)
        with add(module, site, value, positions=policy, structure=structure):
            yield


    def side_effects(self, model, texts: Sequence[str], strength: float = 1.0, *, tokenizer=None, positions=None,
                     units: str = "residual", max_length: int = 128, batch_size: int = 8):
        """KL(base || steered) and cross-entropy change on ``texts`` at ``strength`` (see :mod:`.cost`)."""
        from .cost import side_effects

        module, tok, _, known = unpack(model)
        if self.provenance.model_fingerprint is not None:
            self.check_model(known or fingerprint(module))
        return side_effects(module, tokenizer or tok, texts,
                            lambda: self.apply(module, strength, positions=positions, units=units, check=False),
                            max_length=max_length, batch_size=batch_size, skip_first=True)

    def bake_(self, model, strength: float = 1.0, *, units: str = "residual"):
        """Make the addition permanent as a bias (see :mod:`.bake`); returns a record with ``restore_()``."""
        from .bake import bake_steering_

        return bake_steering_(model, self, strength, units=units)


@contextlib.contextmanager
def applied(model, vectors: Sequence[SteeringVector], strengths: Sequence[float], *, positions=None,
            units: str = "residual", prompt_lengths=None, check: bool = True) -> Iterator[None]:
    """Several vectors at once (each at its own site), entered in order and all removed on exit."""
    if len(vectors) != len(strengths):
        raise ShapeError(f"{len(vectors)} vectors but {len(strengths)} strengths")
    with contextlib.ExitStack() as stack:
        for vector, strength in zip(vectors, strengths):
            stack.enter_context(vector.apply(model, strength, positions=positions, units=units,
                                             prompt_lengths=prompt_lengths, check=check))
        yield
