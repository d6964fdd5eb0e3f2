"""Thread-count control for stretches of many small linear-algebra calls."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the body on one torch thread, then restore the previous count.

    Many small LAPACK and batched tensor calls gain nothing from a second OpenMP thread and lose a
    lot when cores are shared: on a busy 2-core machine a 576×576 ``eigvalsh`` took 0.04 s on one
    thread and 6.5 s on two.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Threads for one process: all cores, or under torchrun its share, cores / LOCAL_WORLD_SIZE.

    torchrun starts LOCAL_WORLD_SIZE processes on each node; each taking every core would run
    that many times more threads than cores (a 4x slowdown is typical on a busy 2-core machine).
    """
    local_world = os.environ.get("LOCAL_WORLD_SIZE", "")
    share = int(local_world) if local_world.isdigit() and int(local_world) > 0 else 1
    return max(1, available_cores() // share)
