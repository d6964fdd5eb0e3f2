"""Where the library keeps what it computes once and reuses (converted weights, generated text)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
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
    """``folder`` when it is, or could be created as, a folder this process can write in; a library
    error otherwise. Nothing is created: commands that write results at the end check their output
    this way before any work, so a bad folder is a message at the start rather than lost results."""
    from .errors import AlmostLinearError

    path = Path(folder)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise AlmostLinearError(f"cannot write in {path}: {existing} is a file, not a folder; choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AlmostLinearError(f"cannot write in {path}: {existing} is not writable; choose another --out")
    return path


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``tempfile.mkstemp``/``mkdtemp`` (always private, 0600/0700) the
    permissions the user's umask gives any other new one, before it is renamed into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def replace_files(folder: str | os.PathLike, writers: Mapping[str, Callable[[str], None]]) -> Path:
    """Call each ``writer(temporary_path)``, then rename every temporary file to its name in ``folder``.

    All files are complete on disk before the first rename, so a failure never pairs new weights
    with an older config (ranks and scales would silently disagree). The renames run under an
    exclusive lock on the folder itself, so two processes writing the same files into one folder
    leave one run's set, never a mix. Files follow the umask.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temps: dict[str, str] = {}
    try:
        for name, write in writers.items():
            fd, temps[name] = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
            os.close(fd)  # recorded before writing: a full disk must not leave it behind
            write(temps[name])
            follow_umask(temps[name])
        lock = os.open(folder, os.O_RDONLY)  # a lock on the folder: no extra file in it
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for name, tmp in temps.items():
                os.replace(tmp, folder / name)
        finally:
            os.close(lock)
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    return folder
