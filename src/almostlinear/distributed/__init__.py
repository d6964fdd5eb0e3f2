"""Past one machine: streaming statistics, SAE training and the audit across processes.

Everything runs on ``torch.distributed`` (launched by ``torchrun``; gloo on CPUs, NCCL on GPUs).
:func:`reduce` merges any streaming statistic across ranks deterministically with a tree of
pairwise merges; :func:`shard_of` and the ``shard=(rank, world)`` argument of
:func:`~almostlinear.core.collect.stream` split the texts; ``SAETrainer(process_group=...)`` trains
one SAE data-parallel; ``torchrun -m almostlinear audit`` splits the audit's forward passes.
"""

from __future__ import annotations

from ..core.lazy import lazy_exports

_PUBLIC = {
    "codecs": ("Codec", "payload_bytes"),
    "group": ("active", "init_from_environment", "launched_by_torchrun", "rank_and_world"),
    "reduce": ("reduce",),
    "sharding": ("shard_bounds", "shard_of"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
