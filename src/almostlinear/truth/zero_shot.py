"""The model's own answer to a contrast pair's question: the zero-shot baseline of arXiv 2212.03827.

For a pair whose two prompts differ only in the last token ("Yes" vs "No"), the model's answer is
the sign of ``logit(Yes) - logit(No)`` at the position before that token, read from the last
block's residual through the final norm and the two unembedding rows only (no full vocabulary).
A model can be biased towards one answer whatever the question; ``calibrated_accuracy`` removes
that bias by thresholding the score at its median over training pairs instead of at zero. This is
a label-free choice made here (the statements are half true by construction), not the paper's
exact procedure; the uncalibrated accuracy is reported beside it.
"""

from __future__ import annotations

import torch

from ..core.errors import ShapeError
from ..core.locate import Structure, linear_weight


@torch.no_grad()
def answer_logit_gap(structure: Structure, hidden: torch.Tensor, yes_ids: torch.Tensor,
                     no_ids: torch.Tensor) -> torch.Tensor:
    """``[n]`` ``logit(yes_ids) - logit(no_ids)`` for last-block residuals ``hidden`` ``[n, d]``."""
    if structure.unembedding is None:
        raise ShapeError(f"{structure.model_type} has no output head, so it gives no zero-shot answer")
    if hidden.dim() != 2 or yes_ids.shape != (hidden.shape[0],) or no_ids.shape != yes_ids.shape:
        raise ShapeError(f"expected hidden [n, d] and n token ids per side, got {tuple(hidden.shape)}, "
                         f"{tuple(yes_ids.shape)} and {tuple(no_ids.shape)}")
    head = structure.unembedding
    weight = linear_weight(head)
    device, dtype = weight.device, weight.dtype
    h = hidden.to(device=device, dtype=dtype)
    if structure.final_norm is not None:
        h = structure.final_norm(h)
    yes, no = yes_ids.to(device), no_ids.to(device)
    gap = (h * (weight[yes] - weight[no])).sum(-1)
    bias = getattr(head, "bias", None)
    if isinstance(bias, torch.Tensor):
        gap = gap + bias[yes] - bias[no]
    return gap.double().cpu()


def calibrated_accuracy(train_gap: torch.Tensor, test_gap: torch.Tensor, test_labels: torch.Tensor) -> float:
    """Accuracy on test pairs of ``gap > median(train_gap)``: true when "Yes" is favoured."""
    threshold = train_gap.median()
    return float(((test_gap > threshold) == test_labels.bool()).double().mean())


def raw_accuracy(gap: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of the model's uncalibrated answer (``gap > 0``)."""
    return float(((gap > 0) == labels.bool()).double().mean())
