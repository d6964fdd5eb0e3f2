"""Linear probes: read a label off activations with one direction and a threshold.

Also the hygiene the probing literature asks for: grouped cross-validation, control tasks and
selectivity (arXiv 1909.03368), and a small MLP probe to measure what a linear read misses.
"""

from .control import SelectivityResult, control_labels, selectivity
from .cv import CVResult, cross_validate, grouped_folds
from .linear import METHODS, LinearProbe, accuracy, fit_linear, fit_logistic, fit_mass_mean, fit_ridge
from .mlp import MLPProbe, fit_mlp

__all__ = [
    "CVResult",
    "LinearProbe",
    "METHODS",
    "MLPProbe",
    "SelectivityResult",
    "accuracy",
    "control_labels",
    "cross_validate",
    "fit_linear",
    "fit_logistic",
    "fit_mass_mean",
    "fit_mlp",
    "fit_ridge",
    "grouped_folds",
    "selectivity",
]
