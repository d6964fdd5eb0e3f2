"""Input checks shared by the probe fitters: shapes, labels, finiteness."""

from __future__ import annotations

import torch

from ..core.errors import EmptyDataError, NonFiniteError, ShapeError


def as_layers(x: torch.Tensor, y, *, dtype: torch.dtype = torch.float64
              ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``x`` as ``[layers, n, d]`` in ``dtype``, labels as 0/1 of that dtype, and whether x was 2-d.

    The larger of the two label values is the positive class, so boolean and 0/1 labels mean the
    same thing and a probe's weight points towards ``True``.
    """
    x = torch.as_tensor(x)
    squeeze = x.dim() == 2
    if squeeze:
        x = x[None]
    if x.dim() != 3:
        raise ShapeError(f"x must be [n, d] or [layers, n, d], got {tuple(x.shape)}")
    y = torch.as_tensor(y).reshape(-1)
    if y.shape[0] != x.shape[1]:
        raise ShapeError(f"x has {x.shape[1]} examples but y has {y.shape[0]} labels")
    if x.shape[1] == 0:
        raise EmptyDataError("no examples to fit a probe on")
    classes = torch.unique(y)
    if classes.numel() != 2:
        raise EmptyDataError(
            f"a binary probe needs examples of two classes, got {classes.numel()} ({classes.tolist()}); "
            "multi-class probes are not offered: fit one binary probe per class"
        )
    x = x.to(dtype)
    if not torch.isfinite(x.sum(dtype=torch.float64)):  # a NaN or inf anywhere makes the sum non-finite
        raise NonFiniteError("x contains NaN or infinite values: check the activations (float16 overflow?)")
    return x, (y == classes.max()).to(dtype), squeeze


def standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(z, mean, std)`` per layer over examples; constant features get std 1 instead of 0.

    ``z`` keeps the dtype of ``x`` (centred before squaring, so float32 loses nothing that matters);
    mean and std are returned in float64.
    """
    mean = x.mean(1, keepdim=True)
    z = x - mean
    std = z.square().sum(1, keepdim=True).div_(max(x.shape[1] - 1, 1)).sqrt_().double()
    std = torch.where(std > 1e-8 * std.amax(-1, keepdim=True).clamp_min(1e-30), std, torch.ones_like(std))
    z.div_(std.to(x.dtype))
    return z, mean.double(), std


def to_raw_units(w_std: torch.Tensor, b_std: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights fitted on standardised features, re-expressed for the raw activations."""
    weight = w_std / std[:, 0]
    bias = b_std - (weight * mean[:, 0]).sum(-1)
    return weight, bias
