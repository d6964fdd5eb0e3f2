"""The saved form of one fitted probe: a direction and a threshold at one site.

A probe reads activations and never changes a model, so it is a read-only artifact with no strength
(``provenance.units`` is None) and no ``apply``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.artifact import Artifact, Provenance, Where
from ..core.errors import ShapeError
from ..core.sites import Site
from .linear import fit_linear, penalised


@dataclass(frozen=True)
class LinearProbe(Artifact):
    """``predict(x) = x @ weight + bias > 0`` (label True). ``weight`` is ``[d]``, ``bias`` a 0-d tensor,
    both in the units of the raw activations at the site recorded in ``provenance.where``."""

    kind = "probes.linear"
    weight: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, y, *, method: str = "logistic", l2: float = 1e-2, site=None,
            data_hash: str | None = None, model_fingerprint: str | None = None) -> LinearProbe:
        """Fit one probe on ``x`` ``[n, d]`` with ``method`` (one of :data:`~.linear.METHODS`) and record
        where it came from. ``site`` is a ``Site`` or ``"resid_post.5"``."""
        if torch.as_tensor(x).dim() != 2:
            raise ShapeError(f"LinearProbe.fit takes x as [n, d]; got {tuple(torch.as_tensor(x).shape)} "
                             "(use the fitters directly for many layers at once)")
        weight, bias = fit_linear(x, y, method=method, l2=l2)
        return cls.from_weights(weight, bias, method=method, site=site, data_hash=data_hash,
                                model_fingerprint=model_fingerprint, extra={"l2": l2} if penalised(method) else {})

    @classmethod
    def from_weights(cls, weight: torch.Tensor, bias: torch.Tensor, *, method: str, site=None,
                     data_hash: str | None = None, model_fingerprint: str | None = None,
                     extra: dict | None = None) -> LinearProbe:
        """Wrap fitted weights with their provenance (site, method, data hash, model)."""
        where = None if site is None else Where.at(str(Site.parse(site) if isinstance(site, str) else site))
        provenance = Provenance(model_fingerprint=model_fingerprint, where=where, method=method, data_hash=data_hash,
                                extra=dict(extra or {}))
        return cls(weight.detach().clone(), torch.as_tensor(bias).detach().clone().reshape(()),
                   provenance=provenance)

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ShapeError(f"probe expects {self.weight.shape[0]} features, got {x.shape[-1]}")
        return x.to(self.weight.dtype) @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.decision(x) > 0

    def score(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(x) == torch.as_tensor(y).bool()).double().mean())

    def as_direction(self) -> torch.Tensor:
        """The unit vector ``[d]`` along which the decision grows (towards label True), float32.

        Steering adds multiples of it; it is the weight, which for whitened or logistic probes is
        not the direction between class means (arXiv 2310.06824 finds the mass-mean one more causal).
        """
        norm = self.weight.double().norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ShapeError("the probe's weight is zero or not finite: it has no direction")
        return (self.weight.double() / norm).float()
