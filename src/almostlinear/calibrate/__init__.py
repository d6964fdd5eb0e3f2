"""Tools that work for every lever: choose a strength under a KL budget on neutral text, and measure
how a stack of levers interferes (joint change against the sum of single changes, and the angles
between the subspaces they write or read)."""

from __future__ import annotations

from ..core.lazy import lazy_exports

_PUBLIC = {
    "footprint": ("Footprint", "Overlap", "footprints_of", "principal_cosines"),
    "joint": ("InterferenceReport", "interference"),
    "strength": ("StrengthChoice", "choose_strength"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
