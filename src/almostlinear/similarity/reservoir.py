"""A uniform random sample of a fixed number of token rows from a stream of batches.

Gram-based measures need the examples themselves, not moments, so a streamed audit keeps a sample.
This is reservoir sampling (Vitter's algorithm R), vectorised per batch: after ``t`` rows have
been seen, every one of them is in the sample with probability ``capacity / t``, and the result
does not depend on how the stream was cut into batches (for a given seed).
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import EmptyDataError, ShapeError


class TokenReservoir:
    """Keeps ``capacity`` rows of ``[sites, rows, d]`` batches; ``sample()`` returns them."""

    def __init__(self, capacity: int, *, seed: int = 0) -> None:
        if capacity < 1:
            raise ShapeError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._rows: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        """Offer a ``[sites, m, d]`` batch of ``m`` rows."""
        if rows.dim() != 3:
            raise ShapeError(f"rows must be [sites, rows, features], got {tuple(rows.shape)}")
        m = rows.shape[1]
        if m == 0:
            return
        if self._rows is None:
            self._rows = rows.new_zeros(rows.shape[0], self.capacity, rows.shape[2])
        elif rows.shape[0] != self._rows.shape[0] or rows.shape[2] != self._rows.shape[2]:
            raise ShapeError(f"batch of shape {tuple(rows.shape)} does not match earlier ones")
        index = np.arange(self.seen, self.seen + m)
        # one uniform draw per row, used or not, so the sample does not depend on the batch sizes;
        # row t (from 0) replaces the slot j drawn from {0..t} when j < capacity
        draws = np.floor(self._rng.random(m) * (index + 1)).astype(np.int64)
        slot = np.where(index < self.capacity, index, np.where(draws < self.capacity, draws, -1))
        chosen = np.flatnonzero(slot >= 0)
        # a slot drawn twice in one batch keeps the later row, as the sequential algorithm would
        _, last = np.unique(slot[chosen][::-1], return_index=True)
        chosen = chosen[::-1][last]
        self._rows[:, torch.from_numpy(slot[chosen])] = rows[:, torch.from_numpy(chosen)]
        self.seen += m

    def sample(self) -> torch.Tensor:
        """The kept rows, ``[sites, min(seen, capacity), d]``."""
        if self._rows is None:
            raise EmptyDataError("no rows were offered to the reservoir")
        return self._rows[:, : min(self.seen, self.capacity)]
