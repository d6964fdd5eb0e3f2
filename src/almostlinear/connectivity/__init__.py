"""Mode connectivity: paths between networks, barriers, and permutation alignment.

* :func:`interpolate` - metrics along ``(1 - alpha) A + alpha B``; :class:`InterpolationCurve` gives
  the barrier (arXiv 1912.05671, 2209.04836);
* :func:`permutation_spec` / :func:`feedforward_spec` / :func:`transformer_spec` - which axes a
  hidden-unit permutation moves, derived from the model (MLPs, CNNs, decoder transformers with
  residual stream, heads, grouped-query groups, RoPE constraints, norms);
* :func:`weight_matching`, :func:`activation_matching` - Git Re-Basin alignment (arXiv 2209.04836),
  returning a :class:`Permutation`, a lever: ``with perm.apply(model):`` permutes and restores,
  ``perm.bake_(model)`` returns the record whose ``undo_()`` restores exactly;
* :func:`repair_` - REPAIR renormalisation of interpolated networks (arXiv 2211.08403).
"""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

# Names resolve on first use: building the command-line parser imports this package to reach its
# cli module, and should not pay for torch.
_PUBLIC = {
    "artifact": ("Permutation", "check_spec"),
    "line": ("InterpolationCurve", "interpolate", "interpolated", "lerp_state", "model_state"),
    "matching": ("activation_matching", "weight_matching"),
    "repair": ("hidden_layers", "repair_"),
    "spec": ("AxisPerm", "PermutationSpec", "feedforward_spec", "permutation_spec", "permute_state_dict",
             "random_perms", "transformer_spec"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)


if TYPE_CHECKING:
    from .artifact import Permutation, check_spec
    from .line import InterpolationCurve, interpolate, interpolated, lerp_state, model_state
    from .matching import activation_matching, weight_matching
    from .repair import hidden_layers, repair_
    from .spec import (AxisPerm, PermutationSpec, feedforward_spec, permutation_spec, permute_state_dict,
                       random_perms, transformer_spec)
