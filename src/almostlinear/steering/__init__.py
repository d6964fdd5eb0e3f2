"""Steering vectors: fit from contrast pairs, add at a site with a position policy, measure what it
does (dose-response, steerability, composition) and what it costs (KL and cross-entropy on neutral
text)."""

from __future__ import annotations

from ..core.lazy import lazy_exports

# Names resolve on first use (PEP 562), so importing ``almostlinear.steering.cli`` to build the
# command-line parser does not import torch through this package.
_PUBLIC = {
    "ablation": ("ablate", "bake_ablation_", "baked_ablation"),
    "actadd": ("fit_activation_addition", "generate_with_addition"),
    "artifact": ("ActivationAddition", "DirectionalAblation", "SteeringVector", "applied"),
    "behaviour": ("Behaviour", "GeneratedScore", "TokenPreference"),
    "combined": ("Additivity", "CrossEffects", "additivity", "compose", "cosine_matrix", "cross_effects"),
    "cost": ("SideEffects", "side_effects"),
    "directions": ("extract",),
    "choices": ("METHODS",),
    "dose": ("Choice", "DoseResponse", "anti_steerable_fraction", "choose_layer_and_strength", "dose_response",
             "linear_fit", "steerability"),
    "fit": ("as_pairs", "fit_steering", "fit_steering_layers", "read_pairs"),
    "generate": ("generate_steered",),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
