"""Lenses: read a layer's residual stream as next-token predictions."""

from .logit import LogitLens, kl_and_agreement

__all__ = ["LogitLens", "kl_and_agreement"]
