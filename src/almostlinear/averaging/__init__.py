"""Weight averaging along a training run: SWA, EMA, checkpoint averages and batch-norm recomputation."""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

# Names resolve on first use, so importing the package costs nothing until one is needed.
_PUBLIC = {"average": ("WeightAverage", "average_checkpoints", "update_bn")}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)


if TYPE_CHECKING:
    from .average import WeightAverage, average_checkpoints, update_bn
