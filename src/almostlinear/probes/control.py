"""Control tasks and selectivity (Hewitt and Liang, arXiv 1909.03368).

A control task gives every *type* (a word type in the paper; here a subject such as a city, or a
token type) one random label, kept for all of its examples. Only a probe that memorises types can
solve it, so its accuracy measures the probe's capacity to memorise rather than to read the
property. Selectivity is task accuracy minus control accuracy on the same split: a good probe is
accurate on the task and poor on the control.

Types must recur between training and test for memorisation to pay, as words do in the paper, so
both accuracies here use plain k-fold over examples, not folds grouped by type.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, ShapeError
from .cv import DEFAULT_L2, cross_validate


def control_labels(types: Sequence[Hashable], labels, *, seed: int = 0) -> torch.Tensor:
    """A random boolean label per type, repeated on each of its examples.

    The share of positive types is the share of positive examples in ``labels`` (rounded, and at
    least one type per class), the class balance of the task; which types are positive is drawn
    with ``seed``.
    """
    types = list(types)
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.shape[0] != len(types):
        raise ShapeError(f"{len(types)} types but {labels.shape[0]} labels")
    distinct = list(dict.fromkeys(types))
    if len(distinct) < 2:
        raise EmptyDataError(f"a control task needs at least two types, got {len(distinct)}")
    values = torch.unique(labels)
    if values.numel() != 2:
        raise EmptyDataError(f"the task must have two classes to copy its balance, got {values.tolist()}")
    share = float((labels == values.max()).double().mean())
    n_positive = min(max(round(share * len(distinct)), 1), len(distinct) - 1)
    rng = random.Random(seed)
    positive = set(rng.sample(range(len(distinct)), n_positive))
    label_of = {t: i in positive for i, t in enumerate(distinct)}
    return torch.tensor([label_of[t] for t in types], dtype=torch.bool)


@dataclass(frozen=True)
class SelectivityResult:
    """Per layer: task accuracy, control-task accuracy, and their difference."""

    task: torch.Tensor
    control: torch.Tensor

    @property
    def selectivity(self) -> torch.Tensor:
        return self.task - self.control


def selectivity(x: torch.Tensor, y, types: Sequence[Hashable], *, k: int = 5, method: str = "logistic",
                l2: float = DEFAULT_L2, seed: int = 0) -> SelectivityResult:
    """Cross-validated task and control accuracy per layer on the same ungrouped folds."""
    control = control_labels(types, y, seed=seed)
    task = cross_validate(x, y, k=k, method=method, l2=l2, seed=seed).accuracy
    ctrl = cross_validate(x, control, k=k, method=method, l2=l2, seed=seed).accuracy
    return SelectivityResult(task, ctrl)
