"""What every subcommand shares: progress lines, thread count, loading a model or an artifact, and
the argument types that check what a user typed before any work starts.

Imports nothing heavy at module level, so building the parser stays fast; torch and the model
loader are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Any


def say(message: str) -> None:
    """A progress line on standard error (standard output stays for results); ``--quiet`` silences it."""
    from .core import progress

    progress.note(message)


def setup_progress(quiet: bool = False) -> None:
    """Progress bars on when standard error is a terminal, unless ``--quiet``; status lines unless ``--quiet``.

    ``--quiet`` also silences the bars of the libraries underneath (transformers' weight loading)."""
    from .core import progress

    progress.configure(enabled=not quiet and progress.is_terminal(sys.stderr), quiet=quiet)
    if quiet:
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:  # pragma: no cover - transformers is a dependency
            return
        hf_logging.disable_progress_bar()


def restore_library_progress() -> None:
    """Undo :func:`setup_progress`'s silencing of other libraries (for in-process callers)."""
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.enable_progress_bar()


def show_progress(quiet: bool = False, asked: bool = False) -> bool:
    """Whether a command's own bars (``progress=``) should draw: asked for, or a terminal; never with ``--quiet``."""
    from .core.progress import is_terminal

    return not quiet and (asked or is_terminal(sys.stderr))


def set_threads(value: int | None) -> None:
    """Set torch's thread count deliberately (default: all cores, or under torchrun this process's
    share of them); the caller's is restored by ``main``."""
    import torch

    from .core.threads import default_threads

    # BLAS defaults can oversubscribe small machines and slow small solves.
    torch.set_num_threads(value or default_threads())


def progress_bar(total: int, description: str, unit: str = "text"):
    """A counter with an estimate (:mod:`almostlinear.core.progress`); silent unless progress is on."""
    from .core import progress

    return progress.bar(total, description, unit)


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


# ---------------------------------------------------------------------------------------------
# Argument types: argparse calls these while parsing, so a bad value stops the command with one
# usage line (exit 2) before any model is loaded or any file is written. They import nothing heavy.

_DEVICE = re.compile(r"(cpu|mps|meta|(cuda|xpu)(:\d+)?)")


def _whole(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def int_at_least(low: int):
    """A type for whole numbers of at least ``low`` (counts, lengths, sizes)."""
    def parse(text: str) -> int:
        value = _whole(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = f"int_at_least_{low}"
    return parse


positive_int = int_at_least(1)
positive_int.__name__ = "positive_int"
nonnegative_int = int_at_least(0)
nonnegative_int.__name__ = "nonnegative_int"


def finite_float(text: str) -> float:
    """A real number that is neither NaN nor infinite (strengths, scales, coefficients)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number above zero (learning rates, sizes)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number of at least zero (penalties, noise levels)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def byte_size(text: str) -> int:
    """A memory size such as ``6GB``, ``512MiB`` or ``2e9`` (bytes), above zero."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not match or match.group(2) not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (examples: 6GB, 512MiB, 2e9)")
    value = float(match.group(1)) * _BYTE_UNITS[match.group(2)]
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be at least one byte, got {text!r}")
    return int(value)


def unit_interval(text: str) -> float:
    """A finite number from 0 to 1 inclusive (fractions)."""
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text!r}")
    return value


def _items(text: str) -> list[str]:
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts) or not all(parts):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list without empty items, got {text!r}")
    return parts


def int_list(text: str) -> list[int]:
    """``"0,5,-1"`` as ``[0, 5, -1]`` (layer indices may count from the end)."""
    return [_whole(part) for part in _items(text)]


def float_list(text: str) -> list[float]:
    """``"-0.1,0,0.1"`` as finite floats."""
    return [finite_float(part) for part in _items(text)]


def word_list(text: str) -> list[str]:
    """``"good,great"`` as words (none of them empty)."""
    return _items(text)


def nonempty_text(text: str) -> str:
    """A string with something in it besides white space (prompts, subjects, targets)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _path(text: str) -> Path:
    """The path a user typed; a NUL byte, which no file name can hold, is refused here and not mid-work."""
    if "\0" in str(text):
        raise argparse.ArgumentTypeError(f"a path cannot contain a NUL byte: {text!r}")
    if not str(text).strip():
        raise argparse.ArgumentTypeError("a path must not be empty")
    return Path(text)


def input_file(text: str) -> str:
    """A file that exists and can be read."""
    path = _path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {text}")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text}")
    return text


def input_folder(text: str) -> str:
    """A folder that exists and can be read."""
    path = _path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text}")
    return text


def input_path(text: str) -> str:
    """A file or a folder that exists and can be read (a checkpoint: one file or a folder of shards)."""
    return input_folder(text) if _path(text).is_dir() else input_file(text)


def text_file(text: str) -> str:
    """A readable file of UTF-8 text (decoded once here, so a binary file fails before any work)."""
    input_file(text)
    try:
        with open(text, encoding="utf-8") as handle:
            while handle.read(1 << 20):
                pass
    except UnicodeDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text} is not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {error.strerror or error}") from None
    return text


def _writable_parent(path: Path, text: str) -> None:
    """The nearest existing folder above ``path`` must be a folder we may create entries in."""
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link
            raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is not writable")


def output_file(text: str) -> str:
    """A file to write: not a folder, and its folder exists or can be created and is writable.

    Nothing is created here; the command creates missing folders when it writes."""
    path = _path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot overwrite {text}: it is read-only")
    _writable_parent(path.absolute(), text)
    return text


def output_folder(text: str) -> str:
    """A folder to write: not an existing file, and creatable where it does not exist yet."""
    path = _path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"cannot write into {text}: it is not writable")
        return text
    _writable_parent(path.absolute(), text)
    return text


def site_spec(text: str) -> str:
    """``NAME.LAYER`` such as ``resid_post.5``; the name and the layer are checked against the model later."""
    name, _, layer = str(text).rpartition(".")
    if not name or not layer.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"a site is NAME.LAYER such as resid_post.5, got {text!r}")
    return text


def device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...; whether it is present is checked by :func:`require_device`."""
    if not _DEVICE.fullmatch(str(text).strip()):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use cpu, cuda, cuda:N or mps")
    return str(text).strip()


def require_device(name: str) -> None:
    """Refuse a device torch cannot see, before a model is loaded onto it."""
    import torch

    from .core.errors import DeviceError

    kind, _, index = name.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {name} was asked for, but torch sees no CUDA device; use --device cpu")
        if index and int(index) >= count:
            raise DeviceError(f"--device {name}: torch sees {count} CUDA device(s), numbered from 0")
    elif kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError("--device mps was asked for, but it is not available; use --device cpu")
    elif kind == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise DeviceError(f"--device {name} was asked for, but it is not available; use --device cpu")


def add_threads(parser: argparse.ArgumentParser) -> None:
    """The ``--threads`` option every model command takes."""
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")


def check_arg(check, value: str, option: str):
    """Run an argument type inside a command, as a library error (for commands also called directly)."""
    from .core.errors import AlmostLinearError

    try:
        return check(value)
    except argparse.ArgumentTypeError as error:
        raise AlmostLinearError(f"{option}: {error}") from None
