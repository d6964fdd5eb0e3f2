"""Which model statistics and templates belong to, when edits are in place.

Key statistics describe the keys of the *unedited* model, as in every published method (ROME,
MEMIT and AlphaEdit all keep the original ``C``). While edits are applied or baked, the model
carries the fingerprint it had before the first one, so cached statistics and templates are found
again instead of being recomputed for every edited state.
"""

from __future__ import annotations

from torch import nn

from ..core.models import fingerprint

BASE_ATTR = "_almostlinear_base_fingerprint"


def base_fingerprint(model: nn.Module) -> str:
    """The fingerprint of ``model`` before any edit of this package was applied or baked."""
    return getattr(model, BASE_ATTR, None) or fingerprint(model)


def mark_base(model: nn.Module) -> bool:
    """Record the current fingerprint as the base unless one is recorded; True if this call did."""
    if getattr(model, BASE_ATTR, None):
        return False
    object.__setattr__(model, BASE_ATTR, fingerprint(model))
    return True


def clear_base(model: nn.Module) -> None:
    if hasattr(model, BASE_ATTR):
        object.__delattr__(model, BASE_ATTR)
