"""Timing helpers shared by the benchmarks.

Habits: set torch's thread count
deliberately, warm up, time with ``time.perf_counter``, repeat, take the median, and when two
things are compared run them interleaved in the same process (a, b, a, b, ...) and report ratios,
not seconds: the machines these run on are small and shared, so absolute times drift by tens of
percent between minutes while interleaved ratios stay put.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"


# ---------------------------------------------------------------------------------------------
# threads, synchronisation, machine


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (default: every CPU) and return the number in use."""
    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return torch.get_num_threads()


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for queued GPU work (a no-op on CPU), for honest wall-clock times."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: str = "cpu") -> dict:
    """CPU count, torch threads, load average, versions: what a result needs to be read later."""
    import torch

    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average_at_start": load_average(),
        "device": device,
        "git_commit": git_commit(),
        "versions": {d: version_of(d) for d in ("almostlinear", "torch", "transformers", "numpy",
                                                 "nnsight", "safetensors", "tokenizers", "gguf")},
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# timing


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def time_call(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> tuple[float, object]:
    """Seconds taken by ``fn()`` (after waiting for the device before and after) and its result."""
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def repeat(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1,
           sync: Callable[[], None] = lambda: None) -> list[float]:
    """Times of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        time_call(fn, sync)
    return [time_call(fn, sync)[0] for _ in range(repeats)]


@dataclass
class Interleaved:
    """Times of several named variants run interleaved over the same work units.

    ``times[name][r][u]`` is the time of variant ``name`` on unit ``u`` in round ``r``.
    """

    names: list[str]
    n_units: int
    times: dict[str, list[list[float]]] = field(default_factory=dict)
    warmup_times: dict[str, list[float]] = field(default_factory=dict)

    def totals(self, name: str) -> list[float]:
        """Per round, the time of the whole pass over all units."""
        return [sum(r) for r in self.times[name]]

    def median_total(self, name: str) -> float:
        return median(self.totals(name))

    def ratio(self, num: str, den: str) -> float:
        """Ratio of the median pass times."""
        return self.median_total(num) / self.median_total(den)

    def paired_ratio(self, num: str, den: str) -> float:
        """Median over (round, unit) of the per-unit ratio: robust to load changing between units."""
        pairs = [a / b for ra, rb in zip(self.times[num], self.times[den]) for a, b in zip(ra, rb)]
        return median(pairs)

    def summary(self) -> dict:
        return {
            name: {
                "median_total_s": self.median_total(name),
                "totals_s": self.totals(name),
                "per_unit_s": self.times[name],
                "warmup_s": self.warmup_times.get(name, []),
            }
            for name in self.names
        }


def interleave(variants: dict[str, Callable[[int], object]], n_units: int, *, repeats: int = 3,
               warmup_units: int = 1, sync: Callable[[], None] = lambda: None,
               log: Callable[[str], None] | None = print, budget_s: float | None = None) -> Interleaved:
    """Run every variant on every unit, interleaved, ``repeats`` times after a warm-up.

    For each round and each unit ``u`` the variants run one after the other on that same unit
    (a(u), b(u), c(u), then a(u+1), ...); the starting variant rotates with ``u`` and the round so
    that none is always first (first after a switch tends to pay cache misses). The warm-up runs
    each variant on the first ``warmup_units`` units, untimed for the results.

    With ``budget_s``, no new round starts once the rounds so far plus one more would exceed it
    (at least one round always runs); ``Interleaved.times`` then holds only the completed rounds.
    """
    names = list(variants)
    result = Interleaved(names=names, n_units=n_units,
                         times={n: [[0.0] * n_units for _ in range(repeats)] for n in names})
    for u in range(min(warmup_units, n_units)):
        for name in names:
            seconds, _ = time_call(lambda: variants[name](u), sync)
            result.warmup_times.setdefault(name, []).append(seconds)
    started = time.perf_counter()
    for r in range(repeats):
        elapsed = time.perf_counter() - started
        if budget_s is not None and r > 0 and elapsed * (r + 1) / r > budget_s:
            if log is not None:
                log(f"stopping after {r} round(s): another would pass the budget of {budget_s:.0f}s")
            for name in names:
                del result.times[name][r:]
            break
        round_start = time.perf_counter()
        for u in range(n_units):
            shift = (u + r) % len(names)
            for name in names[shift:] + names[:shift]:
                seconds, _ = time_call(lambda: variants[name](u), sync)
                result.times[name][r][u] = seconds
        if log is not None:
            parts = ", ".join(f"{n} {sum(result.times[n][r]):.2f}s" for n in names)
            log(f"round {r + 1}/{repeats} ({time.perf_counter() - round_start:.0f}s, load "
                f"{load_average()[0] if load_average() else '?'}) : {parts}")
    return result


# ---------------------------------------------------------------------------------------------
# results


def write_json(name: str, payload: dict) -> Path:
    """Write ``benchmarks/out/<name>-<timestamp>.json`` and ``<name>-latest.json``; return the first."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = OUT_DIR / f"{name}-{stamp}.json"
    text = json.dumps(payload, indent=2, default=str)
    path.write_text(text)
    (OUT_DIR / f"{name}-latest.json").write_text(text)
    return path
