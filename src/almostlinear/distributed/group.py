"""Which process this is, among how many, and how tensors travel between them.

Everything goes through ``torch.distributed``: gloo on CPUs, NCCL on GPUs. ``group=None`` means the
default group, and "not distributed" (no group started, or a world of one) makes every helper here a
no-op, so library code can call them unconditionally.
"""

from __future__ import annotations

import atexit
import datetime
import os

import torch

from ..core.errors import DistributedError


def _dist():
    import torch.distributed as dist

    return dist


def active(group=None) -> bool:
    """True when a process group is running with more than one process."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world(group=None) -> tuple[int, int]:
    """``(rank, world)`` in ``group``; ``(0, 1)`` when not distributed."""
    if not active(group):
        return 0, 1
    dist = _dist()
    return dist.get_rank(group), dist.get_world_size(group)


def global_rank(group, rank: int) -> int:
    """The default-group rank of ``rank`` in ``group`` (point-to-point calls take global ranks)."""
    return rank if group is None else _dist().get_global_rank(group, rank)


def transport_device(group=None) -> torch.device:
    """Where tensors must sit to travel: a GPU for NCCL, the CPU for gloo."""
    if _dist().get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def launched_by_torchrun() -> bool:
    """torchrun (and torch.distributed.launch) export these to every process it starts."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_from_environment(device: str = "cpu", *, timeout_minutes: float = 120.0) -> bool:
    """Start the default process group from torchrun's variables; False when not launched by it.

    gloo for CPU runs, NCCL when ``device`` is a GPU (each process takes the GPU of its local rank).
    The timeout is long because rank 0 alone builds the text sources (model-generated text, known
    facts) while the others wait for work.
    """
    dist = _dist()
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
        return False
    if dist.is_initialized():
        return True
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; install a build that has it")
    backend = "gloo"
    if str(device).startswith("cuda"):
        backend = "nccl"
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    atexit.register(_shutdown)
    return True


def _shutdown() -> None:
    dist = _dist()
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: str) -> str:
    """Under torchrun a bare ``cuda`` means this process's GPU, ``cuda:LOCAL_RANK``."""
    if device == "cuda" and launched_by_torchrun():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device
