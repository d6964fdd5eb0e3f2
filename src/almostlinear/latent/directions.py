"""Class means of codes and word-vector arithmetic; :class:`~.artifact.AttributeDirection` is their saved form."""

from __future__ import annotations

import torch

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


def analogy(z: torch.Tensor, remove: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """``z - remove + add`` (word-vector style arithmetic, e.g. one code's attribute for another's)."""
    if not (z.shape[-1] == remove.shape[-1] == add.shape[-1]):
        raise ShapeError(f"widths differ: {z.shape[-1]}, {remove.shape[-1]}, {add.shape[-1]}")
    return z - remove.to(z.dtype) + add.to(z.dtype)
