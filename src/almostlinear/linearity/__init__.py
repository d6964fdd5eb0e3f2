"""How linear is a network? Closed-form scores between representations, per-block affine fits of
attention and MLP, the loss cost of linearising a block, angular distances between layers, and the
causal inner product of the unembedding."""

from .affine import AffineFit, affine_r2, fit_affine, residual_moments
from .blocks import PairMoments, angular_distance, angular_distance_profile, held_out_r2
from .causal import CONCEPT_PAIRS, CausalWhitening, causal_whitening, concept_directions, single_token_pairs
from .sublayers import Sublayer, record_sublayers, replace_sublayer, sublayer

__all__ = [
    "AffineFit",
    "CONCEPT_PAIRS",
    "CausalWhitening",
    "PairMoments",
    "Sublayer",
    "affine_r2",
    "angular_distance",
    "angular_distance_profile",
    "causal_whitening",
    "concept_directions",
    "fit_affine",
    "held_out_r2",
    "record_sublayers",
    "replace_sublayer",
    "residual_moments",
    "single_token_pairs",
    "sublayer",
]
