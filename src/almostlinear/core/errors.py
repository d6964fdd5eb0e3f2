"""Errors raised for bad input. Each message says what was wrong and what to do instead.

Every error a user can cause is an :class:`AlmostLinearError` (a ``ValueError``), so the command
line's one handler prints it as a message instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


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


class ReportFileError(AlmostLinearError):
    """A file given as an audit report that is not one (not JSON, no sections, an unknown schema version)."""


class DeviceError(AlmostLinearError):
    """A device that torch cannot see on this machine (``cuda`` without a GPU, a wrong index)."""


class DistributedError(AlmostLinearError):
    """Processes of one run that disagree: statistics of different layouts, a shard outside the
    world, a process group that was never started."""


class ChoiceError(AlmostLinearError):
    """A value outside a fixed set of choices (a method, a unit, a mode)."""


class LeverError(AlmostLinearError):
    """A lever asked to do what it cannot do on this model: bake what has no exact bake, touch
    mixture-of-experts weights it does not handle, undo what was not baked, and the like."""


def check_choice(value, choices: Iterable, what: str):
    """``value`` when it is one of ``choices``, else a :class:`ChoiceError` listing them."""
    options = tuple(choices)
    if value not in options:
        listed = ", ".join(repr(c) for c in options)
        raise ChoiceError(f"unknown {what} {value!r}; choose one of {listed}")
    return value


def finite_scale(value: float, what: str = "scale") -> float:
    """``value`` as a float, or a :class:`NonFiniteError` when it is NaN or infinite."""
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise NonFiniteError(f"the {what} is {number}; it must be a finite number")
    return number
