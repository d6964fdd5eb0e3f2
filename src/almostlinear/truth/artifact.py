"""``TruthDirection``: one fitted truth direction at one site, in the units of raw activations.

It reads contrast pairs and never changes a model: a read-only artifact with no strength
(``provenance.units`` is None) and no ``apply``. Where it reads is ``provenance.where``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.artifact import Artifact
from ..core.errors import ShapeError
from .normalise import check_labels, check_pairs, plain_accuracy, sign_free_accuracy


@dataclass(frozen=True)
class TruthDirection(Artifact):
    """Reads a contrast pair: ``x_pos @ direction - x_neg @ direction_neg + bias > 0`` says "true".

    ``x_pos``/``x_neg`` are the raw activations of a statement followed by "Yes" and by "No".
    ``direction`` is the truth direction in activation space (use it for reading or steering);
    ``direction_neg`` is the same direction rescaled by the other side's normalisation: parallel
    to ``direction`` with the default one-scale-per-side normalisation, per-dimension rescaled with
    ``per_dimension=True``. ``oriented`` is False for unsupervised methods (CCS, contrast PCA),
    whose sign is arbitrary: their ``score`` is ``max(acc, 1 - acc)``.
    """

    kind = "truth.direction"
    direction: torch.Tensor
    direction_neg: torch.Tensor
    bias: torch.Tensor
    method: str
    oriented: bool

    def __post_init__(self) -> None:
        if self.direction.dim() != 1 or self.direction.shape != self.direction_neg.shape:
            raise ShapeError(
                f"direction and direction_neg must both be [d], got {tuple(self.direction.shape)} and "
                f"{tuple(self.direction_neg.shape)}"
            )
        if self.bias.numel() != 1:
            raise ShapeError(f"bias must be a scalar, got shape {tuple(self.bias.shape)}")

    @property
    def site(self) -> str | None:
        """The site name it reads (``provenance.where.site``)."""
        return self.provenance.site

    @property
    def layer(self) -> int | None:
        """The layer it reads (``provenance.where.layer``)."""
        return self.provenance.layer

    def decision(self, x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
        """``[n]`` scores of ``[n, d]`` pairs; positive means the "Yes" answer is the consistent one."""
        x_pos, x_neg, _ = check_pairs(x_pos, x_neg, min_pairs=1)
        if x_pos.shape[0] != 1 or x_pos.shape[2] != self.direction.shape[0]:
            raise ShapeError(f"expected pairs [n, {self.direction.shape[0]}], got {tuple(x_pos.shape[1:])}")
        return (x_pos[0] @ self.direction.double() - x_neg[0] @ self.direction_neg.double()
                + self.bias.double())

    def predict(self, x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
        return self.decision(x_pos, x_neg) > 0

    def score(self, x_pos: torch.Tensor, x_neg: torch.Tensor, labels) -> float:
        """Accuracy against ``labels``; sign-free (``max(acc, 1 - acc)``) when not ``oriented``."""
        predicted = self.predict(x_pos, x_neg)
        labels = check_labels(labels, predicted.shape[0])
        accuracy = plain_accuracy if self.oriented else sign_free_accuracy
        return float(accuracy(predicted, labels))

    def unit(self) -> torch.Tensor:
        """``direction`` scaled to unit length, e.g. for steering along it."""
        return self.direction / self.direction.norm().clamp_min(1e-12)
