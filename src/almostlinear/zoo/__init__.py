"""Small reference networks on scikit-learn's bundled 8x8 digits, trained in seconds and cached.

Importing this package is cheap: data are loaded and networks trained on first use.

    >>> from almostlinear.zoo import Recipe, digits_mlp, digits
    >>> net = digits_mlp(Recipe(width=64, seed=0))      # trained once, then read from the cache
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["DigitsSplit", "Recipe", "digits", "digits_mlp", "evaluate", "make_mlp", "train"]

if TYPE_CHECKING:
    from .digits_data import DigitsSplit, digits
    from .mlp import Recipe, digits_mlp, evaluate, make_mlp, train


def __getattr__(name: str):
    if name in ("DigitsSplit", "digits"):
        from . import digits_data as module
    elif name in ("Recipe", "digits_mlp", "evaluate", "make_mlp", "train"):
        from . import mlp as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
