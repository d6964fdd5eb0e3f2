"""Checks shared by the similarity measures: shapes, masks, finite values, float64, centring.

Every measure compares two representations of the *same* examples, so the one hard rule is that
``x`` and ``y`` have the same number of rows; an optional boolean ``mask`` selects the rows
(tokens) to use, for example to drop padding or attention-sink tokens.
"""

from __future__ import annotations

import torch

from ..core.errors import EmptyDataError, NonFiniteError, ShapeError


def as_rows(x: torch.Tensor, name: str = "x", *, mask: torch.Tensor | None = None,
            minimum: int = 2) -> torch.Tensor:
    """``x`` as a finite float64 ``[n, d]`` matrix of the rows ``mask`` keeps."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ShapeError(f"{name} must be [n_examples, n_features], got shape {tuple(x.shape)}; "
                         "flatten token or spatial axes into the rows first")
    if x.shape[1] == 0:
        raise ShapeError(f"{name} has no features (shape {tuple(x.shape)})")
    if mask is not None:
        x = x[check_mask(mask, x.shape[0]).to(x.device)]
    x = x.detach().to(device="cpu", dtype=torch.float64)
    if x.shape[0] < minimum:
        raise EmptyDataError(f"{name} has {x.shape[0]} examples after masking; this measure needs at least {minimum}")
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"{name} contains NaN or infinite values; check the model's dtype and the inputs")
    return x


def check_mask(mask: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise ShapeError(f"mask must be a boolean tensor, got dtype {mask.dtype}")
    if mask.shape != (n,):
        raise ShapeError(f"mask must have shape ({n},) to match the examples, got {tuple(mask.shape)}")
    return mask


def paired(x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None,
           minimum: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` checked to describe the same examples, masked, as float64."""
    if x.dim() >= 1 and y.dim() >= 1 and x.shape[0] != y.shape[0]:
        raise ShapeError(f"x has {x.shape[0]} examples but y has {y.shape[0]}: both must describe the same examples")
    return as_rows(x, "x", mask=mask, minimum=minimum), as_rows(y, "y", mask=mask, minimum=minimum)


def centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(0, keepdim=True)


def require_variance(x: torch.Tensor, name: str) -> None:
    """Similarity is undefined for a representation that does not vary across examples."""
    if not bool((x != x[:1]).any()):
        raise EmptyDataError(f"{name} is the same for every example: it has no variance to compare")
