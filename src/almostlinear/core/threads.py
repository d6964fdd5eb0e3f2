"""Thread-count control for stretches of many small linear-algebra calls."""

from __future__ import annotations

import contextlib
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
