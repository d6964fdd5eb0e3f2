"""Contrast pairs as tensors: input checks, per-side normalisation, sign-free accuracy.

A contrast pair is the activation of one statement read twice, once followed by the answer "Yes"
(``x_pos``) and once by "No" (``x_neg``). The two sides differ systematically in the answer token
itself, so each side is centred on its own mean before anything is fitted; otherwise the most
prominent direction is simply "Yes vs No" (arXiv 2212.03827, the normalisation step of CCS).
Each side is then divided by its spread: by default one scale per side, the average per-dimension
standard deviation (EleutherAI elk's "Burns" normalisation), which keeps the truth direction the
same direction on both sides; ``per_dimension=True`` divides every dimension by its own standard
deviation instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, NonFiniteError, ShapeError

_EPS = 1e-8


def check_pairs(x_pos: torch.Tensor, x_neg: torch.Tensor, *, min_pairs: int = 2
                ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Both sides as float64 ``[layers, n, d]``; ``squeeze`` is True when ``[n, d]`` was given."""
    x_pos, x_neg = torch.as_tensor(x_pos), torch.as_tensor(x_neg)
    if x_pos.shape != x_neg.shape:
        raise ShapeError(
            f"the two sides of the contrast pairs must have the same shape, got {tuple(x_pos.shape)} "
            f"and {tuple(x_neg.shape)}: pass one 'Yes' and one 'No' activation per statement"
        )
    squeeze = x_pos.dim() == 2
    if squeeze:
        x_pos, x_neg = x_pos[None], x_neg[None]
    if x_pos.dim() != 3:
        raise ShapeError(f"contrast pairs must be [n, d] or [layers, n, d], got {tuple(x_pos.shape)}")
    if x_pos.shape[1] < min_pairs:
        raise EmptyDataError(
            f"need at least {min_pairs} contrast pairs, got {x_pos.shape[1]}: a mean and a spread per side "
            "cannot be estimated from fewer"
        )
    x_pos, x_neg = x_pos.detach().to("cpu", torch.float64), x_neg.detach().to("cpu", torch.float64)
    if not (torch.isfinite(x_pos).all() and torch.isfinite(x_neg).all()):
        raise NonFiniteError("the contrast-pair activations contain NaN or infinite values: check the model's dtype")
    return x_pos, x_neg, squeeze


def check_labels(labels, n: int, name: str = "labels", *, both: bool = False) -> torch.Tensor:
    """Binary labels as a bool ``[n]`` tensor; ``both`` requires each class at least once."""
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.shape[0] != n:
        raise ShapeError(f"{name} has {labels.shape[0]} entries but there are {n} contrast pairs")
    if labels.dtype != torch.bool:
        values = torch.unique(labels)
        if not bool(((values == 0) | (values == 1)).all()):
            raise ShapeError(f"{name} must be binary (bool or 0/1), got values {values.tolist()}")
        labels = labels.bool()
    if both and (bool(labels.all()) or not bool(labels.any())):
        raise EmptyDataError(
            f"a supervised truth direction needs true and false pairs, but all {n} {name} are {bool(labels[0])}"
        )
    return labels


@dataclass(frozen=True)
class PairNormaliser:
    """Per-side centring and scaling, fitted on training pairs and reused on held-out pairs.

    ``mean_*`` are ``[layers, d]``; ``scale_*`` are ``[layers, 1]`` (one scale per side) or
    ``[layers, d]`` (``per_dimension``).
    """

    mean_pos: torch.Tensor
    mean_neg: torch.Tensor
    scale_pos: torch.Tensor
    scale_neg: torch.Tensor

    @classmethod
    def fit(cls, x_pos: torch.Tensor, x_neg: torch.Tensor, *, per_dimension: bool = False) -> PairNormaliser:
        x_pos, x_neg, _ = check_pairs(x_pos, x_neg)
        return cls(x_pos.mean(1), x_neg.mean(1), _scale(x_pos, per_dimension), _scale(x_neg, per_dimension))

    @property
    def n_layers(self) -> int:
        return self.mean_pos.shape[0]

    def __call__(self, x_pos: torch.Tensor, x_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``(z_pos, z_neg)``, both ``[layers, n, d]`` float64."""
        x_pos, x_neg, _ = check_pairs(x_pos, x_neg, min_pairs=1)
        if x_pos.shape[0] != self.n_layers or x_pos.shape[2] != self.mean_pos.shape[1]:
            raise ShapeError(
                f"normaliser fitted on {self.n_layers} layers of width {self.mean_pos.shape[1]}, got pairs of "
                f"shape {tuple(x_pos.shape)}"
            )
        z_pos = (x_pos - self.mean_pos[:, None]) / self.scale_pos[:, None]
        z_neg = (x_neg - self.mean_neg[:, None]) / self.scale_neg[:, None]
        return z_pos, z_neg

    def select(self, layers: slice | list[int]) -> PairNormaliser:
        """The normaliser of some layers only."""
        return PairNormaliser(self.mean_pos[layers], self.mean_neg[layers], self.scale_pos[layers],
                              self.scale_neg[layers])


def _scale(x: torch.Tensor, per_dimension: bool) -> torch.Tensor:
    std = x.std(1) if x.shape[1] > 1 else torch.ones_like(x[:, 0])
    if not per_dimension:
        std = std.mean(-1, keepdim=True)
    return std.clamp_min(_EPS)


def sign_free_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``max(acc, 1 - acc)`` per row of ``predicted`` (``[.., n]`` bool).

    An unsupervised direction has no preferred sign, so the CCS paper (arXiv 2212.03827) scores it
    by whichever sign agrees better with the labels. This uses one bit of the test labels, so it is
    an upper bound on what the direction achieves with a sign chosen without labels.
    """
    acc = (predicted == labels.bool()).double().mean(-1)
    return torch.maximum(acc, 1 - acc)


def plain_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (predicted == labels.bool()).double().mean(-1)


def balanced_accuracy(predicted: torch.Tensor, labels: torch.Tensor, *, sign_free: bool = False) -> torch.Tensor:
    """Mean of the recall of each class, so a constant prediction scores 0.5 however unbalanced the
    labels; ``sign_free`` takes ``max(b, 1 - b)``."""
    labels = labels.bool()
    hits = (predicted == labels).double()
    recall_pos = hits[..., labels].mean(-1) if bool(labels.any()) else torch.full(hits.shape[:-1], 0.5)
    recall_neg = hits[..., ~labels].mean(-1) if bool((~labels).any()) else torch.full(hits.shape[:-1], 0.5)
    score = 0.5 * (recall_pos + recall_neg)
    return torch.maximum(score, 1 - score) if sign_free else score
