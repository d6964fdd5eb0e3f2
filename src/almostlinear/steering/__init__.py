"""Steering vectors: fit from contrast pairs, add at a site with a position policy, measure what it
does (dose-response, steerability, composition) and what it costs (KL and cross-entropy on neutral
text)."""

from __future__ import annotations

# Names resolve on first use (PEP 562), so importing ``almostlinear.steering.cli`` to build the
# command-line parser does not import torch through this package.
_PUBLIC = {
    "ablation": ("BakedAblation", "DirectionalAblation", "ablate", "bake_ablation_", "baked_ablation"),
    "bake": ("BakedSteering", "bake_steering_"),
    "behaviour": ("Behaviour", "GeneratedScore", "TokenPreference"),
    "combined": ("Additivity", "CrossEffects", "additivity", "compose", "cosine_matrix", "cross_effects"),
    "cost": ("SideEffects", "side_effects"),
    "directions": ("extract",),
    "choices": ("METHODS",),
    "dose": ("Choice", "DoseResponse", "anti_steerable_fraction", "choose_layer_and_strength", "dose_response",
             "linear_fit", "steerability"),
    "fit": ("as_pairs", "fit_steering", "fit_steering_layers", "read_pairs"),
    "generate": ("generate_steered",),
    "vector": ("SteeringVector", "applied"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = [
    "METHODS",
    "Additivity",
    "BakedAblation",
    "BakedSteering",
    "DirectionalAblation",
    "Behaviour",
    "Choice",
    "CrossEffects",
    "DoseResponse",
    "GeneratedScore",
    "SideEffects",
    "SteeringVector",
    "TokenPreference",
    "ablate",
    "additivity",
    "anti_steerable_fraction",
    "applied",
    "as_pairs",
    "bake_ablation_",
    "bake_steering_",
    "baked_ablation",
    "choose_layer_and_strength",
    "compose",
    "cosine_matrix",
    "cross_effects",
    "dose_response",
    "extract",
    "fit_steering",
    "fit_steering_layers",
    "generate_steered",
    "linear_fit",
    "read_pairs",
    "side_effects",
    "steerability",
]
