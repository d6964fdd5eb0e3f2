"""What every subcommand shares: progress lines, thread count, loading a model or an artifact.

Imports nothing heavy at module level, so building the parser stays fast; torch and the model
loader are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def say(message: str) -> None:
    """A progress line on standard error (standard output stays for results)."""
    print(f"· {message}", file=sys.stderr, flush=True)


def set_threads(value: int | None) -> None:
    """Set torch's thread count deliberately (default: all cores); the caller's is restored by ``main``."""
    import torch

    # BLAS defaults can oversubscribe small machines and slow small solves.
    torch.set_num_threads(value or max(1, os.cpu_count() or 1))


def progress_bar(total: int, description: str, unit: str = "text"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr)


def load_model(name: str | Any | None = None, **options: Any):
    """A :class:`~almostlinear.core.models.LoadedModel` from a name (default: the embedded model),
    or the one given."""
    from .core.models import DEFAULT_MODEL, LoadedModel, load

    if isinstance(name, LoadedModel):
        return name
    return load(name or DEFAULT_MODEL, progress=say, **options)


def load_artifact(path: str, cls: type | None = None):
    """The artifact in ``path``; with ``cls``, the file must hold that kind."""
    from .core.artifact import load

    return load(path) if cls is None else cls.load(path)
