"""Streamed merges of two SmolLM2-135M variants against mergekit: wall time and peak resident memory.

    python benchmarks/bench_merge.py [--repeats 2] [--threads 1] [--work DIR]

Two variants of the cached float32 SmolLM2-135M-Instruct folder are written once (the base plus
small independent Gaussian noise, relative size 1e-3 of each tensor's RMS). Then a linear merge
(weights 0.5/0.5) and a TIES merge (base + both variants, density 0.5, weights 1) run with
almostlinear (``merge_files``) and with mergekit (``run_merge``, default options), each in its own
fresh subprocess that reports its own peak resident memory (``VmHWM``, with the anonymous and
file-backed parts sampled) and the time of the merge call, while the parent times the whole process. Variants alternate (ours, mergekit, ours, ...) in every round and
the outputs are compared tensor by tensor.
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
import json, os, resource, sys, threading, time
t0 = time.perf_counter()

# Peak resident memory by kind, sampled from /proc/self/status every 2 ms: RssAnon (heap, tensors),
# RssFile (pages of mapped files: shared libraries and memory-mapped checkpoints). The total peak
# counts both, so a tool that maps its inputs shows every page of them it touched.
peaks = {"RssAnon": 0, "RssFile": 0, "RssShmem": 0, "VmRSS": 0}
sampling = threading.Event()
def sample():
    while not sampling.is_set():
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in peaks:
                    peaks[key] = max(peaks[key], int(line.split()[1]))
        sampling.wait(0.002)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
tool, recipe_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
import yaml
recipe = yaml.safe_load(open(recipe_path))
if tool == "almostlinear":
    from almostlinear.merging import merge_files
    rss_before = dict(peaks)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    merge_files(recipe, out)
else:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge
    options = MergeOptions(copy_tokenizer=True, quiet=True)
    rss_before = dict(peaks)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    run_merge(MergeConfiguration.model_validate(recipe), out, options)
merge_s = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process: steadier than wall time
merge_cpu_s = after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime
sampling.set()
sampler.join()
# VmHWM: the kernel's exact high-water mark of this process's own resident set. ru_maxrss is not
# used: Linux folds the high-water mark of the address space replaced at exec into it, and a
# child started by vfork/posix_spawn replaces its parent's, so it reports the parent's peak when
# that is larger (measured: 1,513 MiB in a child that never used more than 14 MiB).
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("RESULT " + json.dumps({"merge_s": merge_s, "merge_cpu_s": merge_cpu_s, "child_total_s": time.perf_counter() - t0,
                              "peak_rss_mib": hwm / 1024,
                              "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                              "peak_mib": {k: v / 1024 for k, v in peaks.items()},
                              "peak_before_merge_mib": {k: v / 1024 for k, v in rss_before.items()}}))
"""


def make_variants(base: Path, work: Path) -> dict[str, Path]:
    from safetensors.torch import load_file, save_file
    import torch

    out = {"base": base}
    for i in range(2):
        folder = work / f"variant{i}"
        out[f"v{i}"] = folder
        if (folder / "model.safetensors").is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(100 + i)
        tensors = load_file(str(base / "model.safetensors"))
        for k, v in tensors.items():
            if v.is_floating_point():
                rms = v.float().pow(2).mean().sqrt()
                tensors[k] = v + 1e-3 * rms * torch.randn(v.shape, generator=g)
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        for f in base.iterdir():
            if f.suffix != ".safetensors":
                shutil.copy(f, folder / f.name)
    return out


def recipes(m: dict[str, Path]) -> dict[str, dict]:
    return {
        "linear": {"merge_method": "linear", "dtype": "float32", "models": [
            {"model": str(m["v0"]), "parameters": {"weight": 0.5}},
            {"model": str(m["v1"]), "parameters": {"weight": 0.5}}]},
        "ties": {"merge_method": "ties", "base_model": str(m["base"]), "dtype": "float32", "models": [
            {"model": str(m["v0"]), "parameters": {"weight": 1.0, "density": 0.5}},
            {"model": str(m["v1"]), "parameters": {"weight": 1.0, "density": 0.5}}]},
    }


def run_child(tool: str, recipe_file: Path, out: Path, threads: int) -> dict:
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, BENCH_THREADS=str(threads), OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, tool, str(recipe_file), str(out)], env=env,
                          capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    result["process_wall_s"] = wall
    return result


def compare(a: Path, b: Path) -> float:
    import glob

    import torch
    from safetensors import safe_open

    def tensors(folder):
        out = {}
        for f in glob.glob(str(folder / "*.safetensors")):
            with safe_open(f, "pt") as h:
                for k in h.keys():
                    out[k] = (f, k)
        return out

    ta, tb = tensors(a), tensors(b)
    if sorted(ta) != sorted(tb):
        return float("inf")
    worst = 0.0
    for k in ta:
        with safe_open(ta[k][0], "pt") as ha, safe_open(tb[k][0], "pt") as hb:
            worst = max(worst, float((ha.get_tensor(k).float() - hb.get_tensor(k).float()).abs().max()))
    del torch
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=None, help="folder for the variants and outputs (default: a temp dir)")
    parser.add_argument("--methods", default="linear,ties")
    args = parser.parse_args()
    from almostlinear.core import models as core_models

    base = core_models._embedded_folder(core_models.EMBEDDED["smollm2-135m"])
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_merge_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"base {base}; work {work}", file=sys.stderr)
    m = make_variants(base, work)
    results: dict = {"machine": common.machine_info(), "threads": args.threads, "methods": {}}
    results["machine"]["versions"]["mergekit"] = common.version_of("mergekit")
    for method in args.methods.split(","):
        recipe_file = work / f"{method}.yaml"
        import yaml

        recipe_file.write_text(yaml.safe_dump(recipes(m)[method]))
        runs = {"almostlinear": [], "mergekit": []}
        for r in range(args.repeats):
            order = ["almostlinear", "mergekit"] if r % 2 == 0 else ["mergekit", "almostlinear"]
            for tool in order:
                res = run_child(tool, recipe_file, work / f"out_{method}_{tool}", args.threads)
                runs[tool].append(res)
                res["load_average"] = common.load_average()
                print(f"{method} round {r + 1} {tool}: merge {res['merge_s']:.2f}s (CPU {res['merge_cpu_s']:.2f}s), process {res['process_wall_s']:.1f}s,"
                      f" peak RSS {res['peak_rss_mib']:.0f} MiB (anonymous {res['peak_mib']['RssAnon']:.0f}, mapped "
                      f"files {res['peak_mib']['RssFile']:.0f}) (load {res['load_average'][0]:.1f})", file=sys.stderr)
        diff = compare(work / f"out_{method}_almostlinear", work / f"out_{method}_mergekit")
        summary = {tool: {"merge_s_median": common.median([x["merge_s"] for x in v]),
                          "process_s_median": common.median([x["process_wall_s"] for x in v]),
                          "peak_rss_mib_max": max(x["peak_rss_mib"] for x in v), "runs": v}
                   for tool, v in runs.items()}
        for tool, v in runs.items():
            summary[tool]["merge_cpu_s_median"] = common.median([x["merge_cpu_s"] for x in v])
        summary["ratio_merge_time"] = summary["almostlinear"]["merge_s_median"] / summary["mergekit"]["merge_s_median"]
        summary["ratio_merge_cpu_time"] = (summary["almostlinear"]["merge_cpu_s_median"]
                                           / summary["mergekit"]["merge_cpu_s_median"])
        summary["ratio_process_time"] = (summary["almostlinear"]["process_s_median"]
                                         / summary["mergekit"]["process_s_median"])
        for tool, v in runs.items():
            summary[tool]["peak_anon_mib_max"] = max(x["peak_mib"]["RssAnon"] for x in v)
            summary[tool]["peak_file_mib_max"] = max(x["peak_mib"]["RssFile"] for x in v)
        summary["ratio_peak_rss"] = summary["almostlinear"]["peak_rss_mib_max"] / summary["mergekit"]["peak_rss_mib_max"]
        summary["ratio_peak_anon"] = (summary["almostlinear"]["peak_anon_mib_max"]
                                      / summary["mergekit"]["peak_anon_mib_max"])
        summary["load_average_after"] = common.load_average()
        summary["max_abs_difference"] = diff
        results["methods"][method] = summary
        print(f"{method}: time ratio (ours/mergekit) merge {summary['ratio_merge_time']:.2f} (CPU "
              f"{summary['ratio_merge_cpu_time']:.2f}), process "
              f"{summary['ratio_process_time']:.2f}; peak RSS ratio {summary['ratio_peak_rss']:.2f} (anonymous "
              f"{summary['ratio_peak_anon']:.2f}); max |difference| {diff:.2e}")
    path = common.write_json("merge", results)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
