"""Concept erasure: LEACE (arXiv 2306.03819) fitted in a stream and applied at one layer or every
layer of any architecture through reversible hooks, with its guardedness and its cost measured."""

from __future__ import annotations

from ..core.lazy import lazy_exports

# Names resolve on first use (PEP 562), so importing ``almostlinear.erasure.cli`` to build the
# command-line parser does not import torch through this package.
_PUBLIC = {
    "artifact": ("LeaceEraser", "stack"),
    "evaluate": ("Guardedness", "erasure_cost", "guardedness", "probe_accuracy"),
    "fit": ("fit_eraser",),
    "leace": ("METHODS", "LeaceFitter", "as_concept", "erase", "leace_factors", "shrink_covariance", "whitening"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)

