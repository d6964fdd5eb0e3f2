"""How linear is a network? Closed-form scores between representations."""

from .affine import AffineFit, affine_r2, fit_affine, residual_moments

__all__ = ["AffineFit", "affine_r2", "fit_affine", "residual_moments"]
