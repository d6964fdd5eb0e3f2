"""Latent directions for any encoder/decoder pair: class-mean attribute directions, straight and
spherical paths, arithmetic, image grids, and scores of what a classifier sees along them."""

from .digits import DigitsLatentScores, demo_grid, score_digits
from .directions import AttributeDirection, analogy, class_means
from .grid import save_grid
from .paths import fractions, lerp, path, slerp
from .score import path_agreement, path_predictions, per_step_agreement, transfer_success

__all__ = [
    "AttributeDirection", "DigitsLatentScores", "analogy", "class_means", "demo_grid", "fractions", "lerp", "path",
    "path_agreement", "path_predictions", "per_step_agreement", "save_grid", "score_digits", "slerp",
    "transfer_success",
]
