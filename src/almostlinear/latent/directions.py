"""Attribute directions in a latent space: differences of class means, and arithmetic with them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.artifact import Artifact, Provenance
from ..core.errors import EmptyDataError, NonFiniteError, ShapeError


def class_means(z: torch.Tensor, labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Mean code per label (float64)."""
    if z.dim() != 2:
        raise ShapeError(f"codes must be [n, d], got shape {tuple(z.shape)}")
    labels = torch.as_tensor(labels)
    if labels.shape != (z.shape[0],):
        raise ShapeError(f"{z.shape[0]} codes but {labels.numel()} labels: give one label per code")
    if z.shape[0] == 0:
        raise EmptyDataError("no codes given")
    if not torch.isfinite(z).all():
        raise NonFiniteError("the codes contain NaN or infinite values")
    z = z.to(torch.float64)
    return {int(c): z[labels == c].mean(0) for c in labels.unique().tolist()}


@dataclass(frozen=True)
class AttributeDirection(Artifact):
    """``target_mean - source_mean``: moving a code by it swaps attribute ``source`` for ``target``."""

    kind = "latent-direction"
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
                   provenance=Provenance(method="class-mean-difference", data_hash=data_hash,
                                         extra={"space": space}))

    def apply(self, z: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """``z - source_mean + target_mean`` at ``strength`` 1: attribute arithmetic on codes ``[..., d]``."""
        if z.shape[-1] != self.vector.shape[0]:
            raise ShapeError(f"this direction is {self.vector.shape[0]} wide, the codes {z.shape[-1]}")
        return z + strength * self.vector.to(z.device, z.dtype)


def analogy(z: torch.Tensor, remove: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """``z - remove + add`` (word-vector style arithmetic, e.g. one code's attribute for another's)."""
    if not (z.shape[-1] == remove.shape[-1] == add.shape[-1]):
        raise ShapeError(f"widths differ: {z.shape[-1]}, {remove.shape[-1]}, {add.shape[-1]}")
    return z - remove.to(z.dtype) + add.to(z.dtype)
