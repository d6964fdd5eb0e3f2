"""Latent directions for any encoder/decoder pair: class-mean attribute directions, straight and
spherical paths, arithmetic, image grids, and scores of what a classifier sees along them."""

from __future__ import annotations

from ..core.lazy import lazy_exports

# Names resolve on first use, so importing ``almostlinear.latent.cli`` to build the parser does not import torch.
_PUBLIC = {
    "artifact": ("AttributeDirection",),
    "digits": ("DigitsLatentScores", "demo_grid", "score_digits"),
    "directions": ("analogy", "class_means"),
    "grid": ("save_grid",),
    "paths": ("fractions", "lerp", "path", "slerp"),
    "score": ("path_agreement", "path_predictions", "per_step_agreement", "transfer_success"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
