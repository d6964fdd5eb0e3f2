"""Scores for latent paths and attribute arithmetic: does a classifier see what was intended?

For an encoder/decoder pair and a classifier on the decoded outputs:

* path agreement: along a path from a code of class ``a`` to one of class ``b``, the share of steps
  whose decoded output the classifier assigns to the nearer endpoint's class (steps before the
  midpoint should read as ``a``, after it as ``b``; an exact midpoint is not scored);
* transfer success: the share of codes of class ``a`` moved by ``mean_b - mean_a`` that decode to
  something classified as ``b``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.errors import ShapeError
from .paths import fractions

Decode = Callable[[torch.Tensor], torch.Tensor]
Classify = Callable[[torch.Tensor], torch.Tensor]


def intended_classes(steps: int, start: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[steps, n]`` intended class per step and path, and the ``[steps]`` mask of scored steps."""
    t = fractions(steps)
    scored = (t - 0.5).abs() > 1e-9
    intended = torch.where((t < 0.5)[:, None], start[None, :], end[None, :])
    return intended, scored


def path_predictions(paths: torch.Tensor, decode: Decode, classify: Classify) -> torch.Tensor:
    """Classes ``[steps, n]`` of the decoded codes of ``paths`` ``[steps, n, d]``."""
    if paths.dim() != 3:
        raise ShapeError(f"paths must be [steps, n_paths, d], got shape {tuple(paths.shape)}")
    steps, n, d = paths.shape
    return classify(decode(paths.reshape(steps * n, d).float())).reshape(steps, n)


def path_agreement(predicted: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> float:
    """Share of scored steps whose predicted class is the nearer endpoint's intended class."""
    steps = predicted.shape[0]
    intended, scored = intended_classes(steps, torch.as_tensor(start), torch.as_tensor(end))
    return float((predicted == intended)[scored].double().mean())


def per_step_agreement(predicted: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """``[steps]`` share of paths whose step is classified as intended (NaN at an exact midpoint)."""
    intended, scored = intended_classes(predicted.shape[0], torch.as_tensor(start), torch.as_tensor(end))
    agree = (predicted == intended).double().mean(1)
    return torch.where(scored, agree, torch.full_like(agree, float("nan")))


def transfer_success(z_moved: torch.Tensor, target: int, decode: Decode, classify: Classify) -> float:
    """Share of moved codes that decode to something classified as ``target``."""
    return float((classify(decode(z_moved.float())) == int(target)).double().mean())
