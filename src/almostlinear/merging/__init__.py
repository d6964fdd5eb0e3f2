"""Weight merges and task vectors: linear, SLERP, task arithmetic, TIES, DARE, soups, RegMean, Fisher.

In memory (state dicts): :func:`merge_state_dicts`, :func:`uniform_soup`, :func:`greedy_soup`,
:class:`TaskVector` with :func:`cosine_matrix` and :func:`sign_conflict_rate`. On files, streamed
tensor by tensor with a plan checked first and atomic sharded output: :func:`parse_recipe`,
:func:`plan_merge`, :func:`merge_files`, :func:`verify` and the ``almostlinear merge`` command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {  # public name -> module: imported on first use, so that the CLI parser (which
    # imports this package to reach its cli module) does not pay for torch
    "AtomicShardedWriter": "writer",
    "Checkpoint": "stream",
    "METHODS": "dispatch",
    "MergePlan": "plan",
    "MergeResult": "run",
    "PlanError": "plan",
    "Recipe": "recipe",
    "TaskVector": "task_vectors",
    "analogy": "task_vectors",
    "check_compatible": "state_dicts",
    "collect_grams": "regmean",
    "cosine_matrix": "task_vectors",
    "diagonal_fisher": "fisher",
    "fisher_merge": "fisher",
    "greedy_soup": "state_dicts",
    "merge_files": "run",
    "merge_state_dicts": "state_dicts",
    "merge_tensor": "dispatch",
    "parse_recipe": "recipe",
    "plan_merge": "plan",
    "regmean_merge": "regmean",
    "regmean_weight": "regmean",
    "sign_conflict_rate": "task_vectors",
    "uniform_soup": "state_dicts",
    "verify": "writer",
}

__all__ = [
    "METHODS", "AtomicShardedWriter", "Checkpoint", "MergePlan", "MergeResult", "PlanError", "Recipe",
    "TaskVector", "analogy", "check_compatible", "collect_grams", "cosine_matrix", "diagonal_fisher",
    "fisher_merge", "greedy_soup", "merge_files", "regmean_merge", "regmean_weight",
    "merge_state_dicts", "merge_tensor", "parse_recipe", "plan_merge", "sign_conflict_rate", "uniform_soup",
    "verify",
]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .dispatch import METHODS, merge_tensor
    from .fisher import diagonal_fisher, fisher_merge
    from .plan import MergePlan, PlanError, plan_merge
    from .recipe import Recipe, parse_recipe
    from .regmean import collect_grams, regmean_merge, regmean_weight
    from .run import MergeResult, merge_files
    from .state_dicts import check_compatible, greedy_soup, merge_state_dicts, uniform_soup
    from .stream import Checkpoint
    from .task_vectors import TaskVector, analogy, cosine_matrix, sign_conflict_rate
    from .writer import AtomicShardedWriter, verify
