"""How linear is a network? Closed-form scores between representations, per-block affine fits of
attention and MLP, the loss cost of linearising a block, angular distances between layers, and the
causal inner product of the unembedding."""

from __future__ import annotations

from ..core.lazy import lazy_exports

_PUBLIC = {
    "affine": ("AffineFit", "affine_r2", "fit_affine", "residual_moments"),
    "blocks": ("PairMoments", "angular_distance", "angular_distance_profile", "held_out_r2"),
    "causal": ("CONCEPT_PAIRS", "CausalWhitening", "causal_whitening", "concept_directions", "single_token_pairs"),
    "passes": ("next_token_loss", "sublayer_moments"),
    "sublayers": ("Sublayer", "replace_sublayer", "sublayer"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
