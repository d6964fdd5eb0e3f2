"""The saved form of a latent attribute direction: the two class means it is the difference of.

It acts on codes, not on a model, so it is not a lever: :meth:`AttributeDirection.shift` moves codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.artifact import Artifact, Provenance
from ..core.errors import EmptyDataError, ShapeError
from ..core.lever import check_strength
from .directions import class_means


@dataclass(frozen=True)
class AttributeDirection(Artifact):
    """``target_mean - source_mean``: moving a code by it swaps attribute ``source`` for ``target``.

    ``shift``'s strength is in "raw" units: 1 moves a code by the whole difference of the means.
    """

    kind = "latent.attribute_direction"
    source_mean: torch.Tensor  # [d]
    target_mean: torch.Tensor  # [d]
    source: str = ""
    target: str = ""
    n_source: int = 0
    n_target: int = 0

    @property
    def vector(self) -> torch.Tensor:
        return self.target_mean - self.source_mean

    @classmethod
    def fit(cls, z: torch.Tensor, labels: torch.Tensor, source, target, *, space: str = "",
            data_hash: str | None = None) -> AttributeDirection:
        """The difference of the class means of ``target`` and ``source`` among ``labels``."""
        labels = torch.as_tensor(labels)
        means = class_means(z, labels)
        for value in (source, target):
            if int(value) not in means:
                raise EmptyDataError(f"no code has label {value!r}; labels present: {sorted(means)}")
        return cls(means[int(source)].float(), means[int(target)].float(), str(source), str(target),
                   int((labels == int(source)).sum()), int((labels == int(target)).sum()),
                   provenance=Provenance(method="class-mean-difference", data_hash=data_hash, units="raw",
                                         extra={"space": space}))

    def shift(self, z: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """``z + strength * (target_mean - source_mean)`` on codes ``[..., d]``: attribute arithmetic."""
        value = check_strength(strength, "raw")
        if z.shape[-1] != self.vector.shape[0]:
            raise ShapeError(f"this direction is {self.vector.shape[0]} wide, the codes {z.shape[-1]}")
        return z + value * self.vector.to(z.device, z.dtype)
