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


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """``folder`` (created if missing) when files can be written in it; a library error otherwise.

    Commands that write results at the end check their output folder this way before any work, so
    an unwritable folder is a message at the start rather than lost results at the end.
    """
    import tempfile

    from .errors import AlmostLinearError

    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise AlmostLinearError(f"cannot write in {path}: {error.strerror or error}; choose another --out") from error
    return path
