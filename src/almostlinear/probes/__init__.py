"""Linear probes: read a label off activations with one direction and a threshold.

Also the hygiene the probing literature asks for: grouped cross-validation, control tasks and
selectivity (arXiv 1909.03368), and a small MLP probe to measure what a linear read misses.
"""

from __future__ import annotations

from ..core.lazy import lazy_exports

# Names resolve on first use, so importing ``almostlinear.probes.cli`` to build the parser does not import torch.
_PUBLIC = {
    "artifact": ("LinearProbe",),
    "control": ("SelectivityResult", "control_labels", "selectivity"),
    "cv": ("CVResult", "cross_validate", "grouped_folds"),
    "linear": ("METHODS", "accuracy", "fit_linear", "fit_logistic", "fit_mass_mean", "fit_ridge"),
    "mlp": ("MLPProbe", "fit_mlp"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
