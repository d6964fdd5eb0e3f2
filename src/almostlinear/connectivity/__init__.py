"""Mode connectivity: paths between networks, barriers, and permutation alignment.

* :func:`interpolate` - metrics along ``(1 - alpha) A + alpha B``; :class:`InterpolationCurve` gives
  the barrier (arXiv 1912.05671, 2209.04836);
* :func:`permutation_spec` / :func:`feedforward_spec` / :func:`transformer_spec` - which axes a
  hidden-unit permutation moves, derived from the model (MLPs, CNNs, decoder transformers with
  residual stream, heads, grouped-query groups, RoPE constraints, norms);
* :func:`weight_matching`, :func:`activation_matching` - Git Re-Basin alignment (arXiv 2209.04836),
  returning a :class:`Permutation` artifact that applies reversibly or with ``bake_``;
* :func:`repair_` - REPAIR renormalisation of interpolated networks (arXiv 2211.08403).
"""

from __future__ import annotations

from .interpolate import InterpolationCurve, interpolate, interpolated, lerp_state, model_state
from .matching import activation_matching, weight_matching
from .permutation import Permutation
from .repair import hidden_layers, repair_
from .spec import (
    AxisPerm,
    PermutationSpec,
    check_spec,
    feedforward_spec,
    permutation_spec,
    permute_state_dict,
    random_perms,
    transformer_spec,
)

__all__ = [
    "AxisPerm", "InterpolationCurve", "Permutation", "PermutationSpec", "activation_matching", "check_spec",
    "feedforward_spec", "hidden_layers", "interpolate", "interpolated", "lerp_state", "model_state",
    "permutation_spec", "permute_state_dict", "random_perms", "repair_", "transformer_spec", "weight_matching",
]
