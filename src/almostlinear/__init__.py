"""almostlinear: linear levers for reading, steering, editing and merging neural networks.

Importing the package has no side effects: no network, no threads, no model loading. The names
below are the public surface; everything else lives in the family packages.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Names resolve on first use (PEP 562), so ``import almostlinear`` and the command line's parser do
# not pay for importing torch and transformers before they are needed. Core names name their module;
# lever names name their family, whose own face knows the module.
_CORE = {
    "Artifact": "core.artifact", "Provenance": "core.artifact", "Where": "core.artifact",
    "load_artifact": "core.artifact:load", "Activations": "core.collect", "Batch": "core.collect",
    "collect": "core.collect", "stream": "core.collect", "add": "core.hooks", "intervene": "core.hooks",
    "project_out": "core.hooks", "record": "core.hooks", "replace": "core.hooks", "Structure": "core.locate",
    "locate": "core.locate", "DEFAULT_MODEL": "core.defaults", "LoadedModel": "core.models",
    "fingerprint": "core.models", "load": "core.models", "SITE_NAMES": "core.sites", "Site": "core.sites",
    "RunningMoments": "core.stats", "Baked": "core.lever", "Lever": "core.lever", "UNITS": "core.lever",
    "as_model": "core.lever",
}
_LEVERS = {
    "SteeringVector": "steering", "DirectionalAblation": "steering", "fit_steering": "steering",
    "ablate": "steering", "LeaceEraser": "erasure", "fit_eraser": "erasure", "LowRankEdit": "editing",
    "RankOneEdit": "editing", "EditRequest": "editing", "rome": "editing", "memit": "editing",
    "alphaedit": "editing", "TaskVector": "merging", "LoraAdapter": "adapters", "Permutation": "connectivity",
    "SparseAutoencoder": "sae", "choose_strength": "calibrate", "interference": "calibrate",
}


def __getattr__(name: str):
    import importlib

    if name in _CORE:
        module, _, attribute = _CORE[name].partition(":")
        value = getattr(importlib.import_module(f".{module}", __name__), attribute or name)
    elif name in _LEVERS:
        value = getattr(importlib.import_module(f".{_LEVERS[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'almostlinear' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CORE) | set(_LEVERS))


__all__ = sorted({"__version__", *_CORE, *_LEVERS})
