"""almostlinear: linear levers for reading, steering, editing and merging neural networks.

Importing the package has no side effects: no network, no threads, no model loading. The names
below are the public surface; everything else lives in the family packages.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Names resolve on first use (PEP 562), so ``import almostlinear`` and the command line's parser do
# not pay for importing torch and transformers before they are needed.
_PUBLIC = {
    "Artifact": "core.artifact", "Provenance": "core.artifact", "load_artifact": "core.artifact:load",
    "Activations": "core.collect", "Batch": "core.collect", "collect": "core.collect", "stream": "core.collect",
    "add": "core.hooks", "intervene": "core.hooks", "project_out": "core.hooks", "record": "core.hooks",
    "replace": "core.hooks", "Structure": "core.locate", "locate": "core.locate",
    "DEFAULT_MODEL": "core.models", "LoadedModel": "core.models", "fingerprint": "core.models",
    "load": "core.models", "SITE_NAMES": "core.sites", "Site": "core.sites", "RunningMoments": "core.stats",
}


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'almostlinear' has no attribute {name!r}")
    import importlib

    module, _, attribute = _PUBLIC[name].partition(":")
    value = getattr(importlib.import_module(f".{module}", __name__), attribute or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = [
    "DEFAULT_MODEL", "SITE_NAMES", "Activations", "Artifact", "Batch", "LoadedModel", "Provenance",
    "RunningMoments", "Site", "Structure", "__version__", "add", "collect", "fingerprint", "intervene",
    "load", "load_artifact", "locate", "project_out", "record", "replace", "stream",
]
