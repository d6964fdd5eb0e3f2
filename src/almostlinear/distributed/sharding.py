"""Which block of the data each process reads (the functions live in :mod:`core.collect`, which
shards the texts it streams)."""

from __future__ import annotations

from ..core.collect import shard_bounds, shard_of

__all__ = ["shard_bounds", "shard_of"]
