"""Linear probes: read a label off activations with one direction and a threshold."""

from .linear import LinearProbe, accuracy, fit_logistic, fit_mass_mean

__all__ = ["LinearProbe", "accuracy", "fit_logistic", "fit_mass_mean"]
