"""Where the library keeps what it computes once and reuses (converted weights, generated text)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ALMOSTLINEAR_CACHE"


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the user cache.

    The root is ``$ALMOSTLINEAR_CACHE`` when set, else ``$XDG_CACHE_HOME/almostlinear``,
    else ``~/.cache/almostlinear``.
    """
    root = os.environ.get(CACHE_ENV)
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "almostlinear"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
