"""Weight averaging along a training run: SWA, EMA, checkpoint averages and batch-norm recomputation."""

from __future__ import annotations

from .average import WeightAverage, average_checkpoints, update_bn

__all__ = ["WeightAverage", "average_checkpoints", "update_bn"]
