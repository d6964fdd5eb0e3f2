"""The quick audit with progress on: how long the longest silence lasts, and each section's time.

python benchmarks/audit_progress.py OUT_FOLDER [--threads N]

Progress lines go to a stream that notes when each arrives (the same code draws on a terminal); the
script prints the largest gap between two lines, the per-section wall times from the report, and
writes the report to OUT_FOLDER.
"""

import argparse
import io
import threading
import time

import torch

from almostlinear.audit import run_audit
from almostlinear.core import progress


class TimedStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def write(self, text):
        with self._lock:
            if text.strip():
                self.lines.append((time.monotonic(), text.strip()))
            return super().write(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stream = TimedStream()
    began = time.monotonic()
    with progress.configured(enabled=True, stream=stream):
        report = run_audit("smollm2-135m", out=args.out, quick=True, progress=progress.note)
    ended = time.monotonic()
    times = [began, *(t for t, _ in stream.lines), ended]
    gaps = sorted(((b - a, i) for i, (a, b) in enumerate(zip(times, times[1:]))), reverse=True)
    print(f"wall {ended - began:.1f} s, {len(stream.lines)} progress lines, every_s {progress._settings.every_s}")
    for gap, i in gaps[:5]:
        before = stream.lines[i - 1][1] if i > 0 else "(start)"
        print(f"gap {gap:.1f} s after: {before[:100]}")
    for section in report.sections:
        print(f"{section.id:24} {section.status:8} {section.elapsed_s:7.1f} s")
    for row in report.report["scorecard"]["rows"]:
        print(f"{row['verdict']:11} {row['claim']:52} {row['value']}")


if __name__ == "__main__":
    main()
