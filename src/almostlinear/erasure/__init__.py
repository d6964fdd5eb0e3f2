"""Concept erasure: LEACE (arXiv 2306.03819) fitted in a stream and applied at one layer or every
layer of any architecture through reversible hooks, with its guardedness and its cost measured."""

from __future__ import annotations

# Names resolve on first use (PEP 562), so importing ``almostlinear.erasure.cli`` to build the
# command-line parser does not import torch through this package.
_PUBLIC = {
    "eraser": ("LeaceEraser", "stack"),
    "evaluate": ("Guardedness", "erasure_cost", "guardedness", "probe_accuracy"),
    "fit": ("fit_eraser",),
    "leace": ("METHODS", "LeaceFitter", "as_concept", "erase", "leace_factors", "shrink_covariance", "whitening"),
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


__all__ = sorted(_MODULE_OF)
