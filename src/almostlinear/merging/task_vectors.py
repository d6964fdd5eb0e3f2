"""Measures and arithmetic over several task vectors (arXiv 2212.04089, 2306.01708).

The :class:`~.artifact.TaskVector` itself lives in :mod:`.artifact`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.errors import EmptyDataError, ShapeError
from .artifact import TaskVector
from .methods import trim_magnitude

Tensor = torch.Tensor


def analogy(a: TaskVector, b: TaskVector, c: TaskVector) -> TaskVector:
    """"A is to B as C is to D": τ_D ≈ τ_C + (τ_B − τ_A) (arXiv 2212.04089, §5)."""
    return c + (b - a)


def _check_list(task_vectors: Sequence[TaskVector]) -> list[str]:
    if len(task_vectors) < 1:
        raise EmptyDataError("no task vectors")
    keys = list(task_vectors[0].deltas)
    for i, tv in enumerate(task_vectors[1:], 1):
        if set(tv.deltas) != set(keys):
            raise ShapeError(f"task vector {i} covers other tensors than task vector 0")
    return keys


def cosine_matrix(task_vectors: Sequence[TaskVector]) -> Tensor:
    """[n, n] float64 cosine similarities between flattened task vectors (arXiv 2212.04089, Fig. 5)."""
    keys = _check_list(task_vectors)
    n = len(task_vectors)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for k in keys:
        flat = torch.stack([tv.deltas[k].reshape(-1).double() for tv in task_vectors])
        gram += flat @ flat.T
    norms = gram.diagonal().sqrt().clamp_min(1e-300)
    return gram / norms[:, None] / norms[None, :]


def sign_conflicts(deltas: Sequence[Tensor]) -> tuple[int, int]:
    """(coordinates where two or more deltas are non-zero with differing signs, coordinates where two or more are non-zero)."""
    signs = torch.stack([torch.sign(d.reshape(-1)) for d in deltas])
    nonzero = (signs != 0).sum(0)
    positive = (signs > 0).sum(0)
    negative = (signs < 0).sum(0)
    overlap = nonzero >= 2
    conflict = overlap & (positive > 0) & (negative > 0)
    return int(conflict.sum()), int(overlap.sum())


def sign_conflict_rate(task_vectors: Sequence[TaskVector], *, density: float = 1.0) -> float:
    """Among coordinates where at least two task vectors are non-zero after trimming each tensor to its
    top ``density`` by magnitude, the fraction where their signs disagree (TIES's interference,
    arXiv 2306.01708 §3). 0 when there is no overlap."""
    keys = _check_list(task_vectors)
    if len(task_vectors) < 2:
        return 0.0
    conflicts = overlaps = 0
    for k in keys:
        c, o = sign_conflicts([trim_magnitude(tv.deltas[k], density) for tv in task_vectors])
        conflicts, overlaps = conflicts + c, overlaps + o
    return conflicts / overlaps if overlaps else 0.0
