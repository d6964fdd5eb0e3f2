"""Errors raised for bad input. Each message says what was wrong and what to do instead."""

from __future__ import annotations


class AlmostLinearError(ValueError):
    """Base class: every user-facing error of the library is a ValueError subclass."""


class ModelNotFoundError(AlmostLinearError):
    """A model name, folder or hub id could not be resolved."""


class MissingDependencyError(AlmostLinearError, ImportError):
    """An optional package needed for this call is not installed."""


class SiteError(AlmostLinearError):
    """A site name the library does not know, or one this architecture lacks."""


class LayerError(AlmostLinearError, IndexError):
    """A layer index outside the model."""


class StructureError(AlmostLinearError):
    """The model's structure (blocks, norms, heads) could not be derived."""


class ShapeError(AlmostLinearError):
    """Tensors whose shapes do not fit together."""


class EmptyDataError(AlmostLinearError):
    """A dataset or text list with nothing in it."""


class NonFiniteError(AlmostLinearError, FloatingPointError):
    """NaN or infinite values where finite numbers are required."""


class ArtifactError(AlmostLinearError):
    """A saved artifact that is malformed, of another kind, or made for another model."""


def finite_scale(value: float, what: str = "scale") -> float:
    """``value`` as a float, or a :class:`NonFiniteError` when it is NaN or infinite."""
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise NonFiniteError(f"the {what} is {number}; it must be a finite number")
    return number
