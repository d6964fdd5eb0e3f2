"""Weight merges and task vectors: linear, SLERP, task arithmetic, TIES, DARE, soups, RegMean, Fisher.

Every method is one :class:`MergeMethod` record in :data:`METHODS` (:func:`register_method` adds
one). In memory (state dicts): :func:`merge_state_dicts`, :func:`uniform_soup`, :func:`greedy_soup`;
the :class:`TaskVector` lever with :func:`cosine_matrix` and :func:`sign_conflict_rate`. On files,
streamed tensor by tensor with a plan checked first and atomic sharded output: :func:`parse_recipe`,
:func:`plan_merge`, :func:`merge_files`, :func:`verify` and the ``almostlinear merge`` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

# Names resolve on first use: building the command-line parser imports this package to reach its
# cli module, and should not pay for torch.
_PUBLIC = {
    "artifact": ("TaskVector",),
    "dispatch": ("merge_tensor",),
    "fisher": ("diagonal_fisher", "fisher_merge"),
    "plan": ("MergePlan", "PlanError", "plan_merge"),
    "recipe": ("Recipe", "RecipeError", "parse_recipe"),
    "registry": ("METHODS", "MergeMethod", "ParamDef", "register_method"),
    "regmean": ("collect_grams", "regmean_merge", "regmean_weight"),
    "run": ("MergeResult", "merge_files"),
    "state_dicts": ("check_compatible", "greedy_soup", "merge_state_dicts", "uniform_soup"),
    "stream": ("Checkpoint",),
    "task_vectors": ("analogy", "cosine_matrix", "sign_conflict_rate"),
    "writer": ("AtomicShardedWriter", "verify"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)


if TYPE_CHECKING:
    from .artifact import TaskVector
    from .dispatch import merge_tensor
    from .fisher import diagonal_fisher, fisher_merge
    from .plan import MergePlan, PlanError, plan_merge
    from .recipe import Recipe, RecipeError, parse_recipe
    from .registry import METHODS, MergeMethod, ParamDef, register_method
    from .regmean import collect_grams, regmean_merge, regmean_weight
    from .run import MergeResult, merge_files
    from .state_dicts import check_compatible, greedy_soup, merge_state_dicts, uniform_soup
    from .stream import Checkpoint
    from .task_vectors import analogy, cosine_matrix, sign_conflict_rate
    from .writer import AtomicShardedWriter, verify
