"""Progress for slow steps: counters with an estimate, and a heartbeat while one step runs long.

The library is silent unless a caller turns progress on (:func:`configure`); the command line turns
it on when standard error is a terminal, and ``--quiet`` keeps it off. Library code asks for a
:func:`bar` or a :func:`stage` wherever a step may take more than a few seconds; both cost nothing
while progress is off.

On a terminal a bar redraws one line in place; on any other stream (a log file, a test's captured
stream) it writes whole lines, at most one per ``every_s`` seconds. A :func:`stage` runs a small
daemon thread that re-draws the current step's elapsed time every ``every_s`` seconds, so a step
with no counter of its own (a section's closing computation) still shows that work goes on.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO


@dataclass
class _Settings:
    enabled: bool = False
    quiet: bool = False  # also silences status lines (:func:`note`), which print even without bars
    stream: TextIO | None = None  # None: sys.stderr at the time of writing (pytest swaps it)
    every_s: float = 2.0  # at most one line per this many seconds, and the heartbeat's period
    clock: Callable[[], float] = time.monotonic


_settings = _Settings()
_lock = threading.Lock()


def configure(*, enabled: bool | None = None, quiet: bool | None = None, stream: TextIO | None = None, every_s: float | None = None,
              clock: Callable[[], float] | None = None) -> None:
    """Turn progress on or off, and choose where it goes and how often it speaks."""
    if enabled is not None:
        _settings.enabled = bool(enabled)
    if quiet is not None:
        _settings.quiet = bool(quiet)
    if stream is not None:
        _settings.stream = stream
    if every_s is not None:
        if not every_s > 0:
            raise ValueError(f"every_s must be above 0, got {every_s}")
        _settings.every_s = float(every_s)
    if clock is not None:
        _settings.clock = clock


@contextlib.contextmanager
def configured(**options) -> Iterator[None]:
    """:func:`configure` for the body of a ``with`` block, then the settings from before."""
    before = _Settings(**vars(_settings))
    configure(**options)
    try:
        yield
    finally:
        for key, value in vars(before).items():
            setattr(_settings, key, value)


def enabled() -> bool:
    return _settings.enabled


def _stream() -> TextIO:
    return _settings.stream or sys.stderr


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (closed or fake streams are not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_last_write = float("-inf")  # clock time of the last line written by anyone


def _write(text: str, *, in_place: bool = False) -> None:
    global _last_write
    stream = _stream()
    with _lock:
        _last_write = _settings.clock()
        if in_place and is_terminal(stream):
            stream.write("\r\033[K" + text)
        else:
            stream.write(text + "\n")
        stream.flush()


def note(message: str) -> None:
    """One status line, on any stream, unless ``quiet``."""
    if not _settings.quiet:
        _end_line()
        _write(f"· {message}")


_open_line = False  # a bar drew on the terminal's current line without ending it


def _end_line() -> None:
    global _open_line
    if _open_line and is_terminal(_stream()):
        _write("")
    _open_line = False


def duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``: short and readable."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Bar:
    """A counter of ``total`` units with elapsed time and an estimate of the time left."""

    def __init__(self, total: int | None, description: str, unit: str = "item") -> None:
        self.total, self.description, self.unit = total, description, unit
        self.done = 0
        self.began = _settings.clock()
        self._last_drawn = None
        self.active = _settings.enabled
        if self.active:
            self._draw(force=True)

    def line(self) -> str:
        elapsed = _settings.clock() - self.began
        if self.total:
            share = min(1.0, self.done / self.total)
            text = f"{self.description}: {self.done}/{self.total} {self.unit}s ({share:4.0%}), {duration(elapsed)}"
            if 0 < self.done < self.total:
                text += f", about {duration(elapsed * (self.total - self.done) / self.done)} left"
            return text
        if self.unit == "step":
            return f"{self.description} ({duration(elapsed)})"
        return f"{self.description}: {self.done} {self.unit}s, {duration(elapsed)}"

    def _draw(self, force: bool = False) -> None:
        global _open_line
        now = _settings.clock()
        # On a terminal a redraw is cheap, so a few per second; in a log, one line per every_s.
        gap = min(0.25, _settings.every_s) if is_terminal(_stream()) else _settings.every_s
        if not force and self._last_drawn is not None and now - self._last_drawn < gap:
            return
        self._last_drawn, self._drawn_done = now, self.done
        _write(self.line(), in_place=True)
        _open_line = True

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.active:
            self._draw(force=self.total is not None and self.done >= self.total)

    def tick(self) -> None:
        """Redraw without progress (the heartbeat of a long step)."""
        if self.active:
            self._draw(force=True)

    def close(self) -> None:
        if self.active:
            if self.unit == "step" or getattr(self, "_drawn_done", None) != self.done:
                self._draw(force=True)
            _end_line()
        self.active = False

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int | None, description: str, unit: str = "item") -> Bar:
    """A :class:`Bar`; it draws nothing while progress is off."""
    return Bar(total, description, unit)


@contextlib.contextmanager
def stage(description: str) -> Iterator[Bar]:
    """A step without a counter: its elapsed time is redrawn every ``every_s`` seconds until it ends."""
    current = Bar(None, description, unit="step")
    if not current.active:
        yield current
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(_settings.every_s / 2):
            # Quiet while an inner counter (a source being built, a fit) speaks for this step.
            if _settings.clock() - _last_write >= _settings.every_s:
                current.tick()

    thread = threading.Thread(target=beat, name="almostlinear-progress", daemon=True)
    thread.start()
    try:
        yield current
    finally:
        stop.set()
        thread.join()
        current.done = 1
        current.description = f"{description}: done"
        current.close()
