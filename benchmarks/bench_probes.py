"""Logistic probes on every layer of SmolLM2-135M: almostlinear's batched fitter vs scikit-learn.

Work: last-token ``resid_post`` of true/false city statements at all 30 layers, split in half by
city; each side fits an L2-penalised logistic regression per layer on standardised features with
the same penalty (``C = 1 / (n * l2)``) and the same stopping rule (max-abs gradient <= tol), and
is scored on the held-out half. Timed: standardisation + fitting of all layers. The two run
interleaved in one process with the same thread count (torch and numpy's BLAS, via threadpoolctl);
wall-clock and CPU-time ratios are reported (CPU time is steadier on a shared machine).

Two sizes: the full set (``--statements``, default 2000) and an audit-sized one (240 statements,
the quick audit's budget), where per-call overheads weigh more.

    python benchmarks/bench_probes.py [--statements 2000] [--threads 1] [--repeats 3]

Activations are collected once and cached under the almostlinear cache (``bench/``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys


def _threads_from_argv(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return "1"


# Native thread pools read these once, when the libraries load: set them before numpy, torch and
# scikit-learn are imported, so scikit-learn's OpenMP loss code and OpenBLAS use the same number of
# threads as torch. (threadpoolctl alone did not reach scikit-learn's OpenMP runtime here.)
# Only when run as a script: a module that imports the timing functions keeps its own settings.
if __name__ == "__main__":
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _threads_from_argv(sys.argv[1:]))
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleave, machine_info, set_threads, write_json  # noqa: E402


def collect_statements(n: int, min_population: int, log) -> dict:
    """Last-token resid_post at all layers for ``n`` statements, cached on disk."""
    import almostlinear
    from almostlinear import data
    from almostlinear.core.collect import collect
    from almostlinear.core.paths import cache_dir
    from almostlinear.core.sites import all_layers

    key = hashlib.sha256(f"smollm2-135m:{n}:{min_population}:v1".encode()).hexdigest()[:12]
    path = cache_dir("bench") / f"probe-acts-{key}.pt"
    if path.is_file():
        return torch.load(path)
    loaded = almostlinear.load("smollm2-135m")
    facts = data.city_country_facts(min_population)
    statements = data.city_statements(n, seed=0, facts=facts)
    sites = all_layers(loaded.structure, "resid_post")
    log(f"collecting {len(statements)} statements at {len(sites)} layers (once; cached in {path})")
    began = time.perf_counter()
    acts = collect(loaded.model, loaded.tokenizer, [s.text for s in statements], sites, positions="last",
                   batch_size=32)
    payload = {"x": torch.stack([acts[s] for s in sites]).half(), "y": torch.tensor([s.label for s in statements]),
               "subjects": [s.subject for s in statements], "collect_s": time.perf_counter() - began,
               "facts": len(facts)}
    torch.save(payload, path)
    return payload


def ours(x_train, y_train, l2: float, tol: float):
    from almostlinear.probes import fit_logistic

    return fit_logistic(x_train, y_train, l2=l2, tol=tol)


def sklearn_per_layer(x_train, y_train, l2: float, tol: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    n = x_train.shape[1]
    fitted = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # iteration-limit warnings are reported through n_iter below
        for layer in x_train.numpy().astype(np.float64):
            scaler = StandardScaler().fit(layer)
            model = LogisticRegression(C=1 / (n * l2), tol=tol).fit(scaler.transform(layer), y_train.numpy())
            fitted.append((scaler, model))
    return fitted


def synthetic_layers(layers: int = 30, n: int = 2000, d: int = 576, *, seed: int = 0, device="cpu"):
    """``(x [layers, n, d] float32, y [n])`` shaped like residual-stream activations: features mixed
    through a few strong directions (as activations are), labels from a planted direction plus noise,
    harder in early layers. For timing where the cached SmolLM2 activations are not at hand."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.empty(layers, n, d)
    for layer in range(layers):
        mix = torch.randn(d, d, generator=g) / d ** 0.5
        mix[:, :8] *= 20  # a few large principal directions
        direction = torch.randn(d, generator=g)
        signal = 0.3 + 1.5 * layer / max(layers - 1, 1)
        x[layer] = torch.randn(n, d, generator=g) @ mix + signal * (2 * y[:, None] - 1) * direction / d ** 0.5
    return x.to(device), y.to(device)


def time_probes(x, y, *, x_test=None, y_test=None, l2: float = 1e-2, tol: float = 1e-4, repeats: int = 3,
                sklearn: bool = True) -> dict:
    """Median seconds of ``fit_logistic`` on ``x`` ``[layers, n, d]`` on its device (synchronised,
    after one warm-up) and, with ``sklearn``, of scikit-learn per layer on the CPU (one round),
    with the held-out accuracy of both when ``x_test``/``y_test`` are given. Importable (the GPU
    check uses it)."""
    from almostlinear.probes import accuracy, fit_logistic

    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    seconds = []
    for _ in range(repeats + 1):
        sync()
        began = time.perf_counter()
        w, b = fit_logistic(x, y, l2=l2, tol=tol)
        sync()
        seconds.append(time.perf_counter() - began)
    out = {"device": str(x.device), "shape": list(x.shape), "almostlinear_s": float(np.median(seconds[1:])),
           "almostlinear_runs_s": seconds}
    if x_test is not None:
        out["almostlinear_accuracy"] = accuracy(w, b, x_test, y_test).cpu().tolist()
    if sklearn:
        x_cpu, y_cpu = x.float().cpu(), y.cpu()
        began = time.perf_counter()
        fitted = sklearn_per_layer(x_cpu, y_cpu, l2, tol)
        out["sklearn_cpu_s"] = time.perf_counter() - began
        out["speedup_over_sklearn"] = out["sklearn_cpu_s"] / out["almostlinear_s"]
        if x_test is not None:
            out["sklearn_accuracy"] = [m.score(s.transform(layer), y_test.cpu().numpy()) for (s, m), layer
                                       in zip(fitted, x_test.float().cpu().numpy().astype(np.float64))]
    return out


def held_out(ours_fit, sk_fit, x_test, y_test) -> dict:
    from almostlinear.probes import accuracy

    w, b = ours_fit
    acc_ours = accuracy(w, b, x_test, y_test).numpy()
    acc_sk = np.array([m.score(s.transform(layer), y_test.numpy())
                       for (s, m), layer in zip(sk_fit, x_test.numpy().astype(np.float64))])
    return {"ours_per_layer": acc_ours.tolist(), "sklearn_per_layer": acc_sk.tolist(),
            "ours_best": float(acc_ours.max()), "sklearn_best": float(acc_sk.max()),
            "ours_mean": float(acc_ours.mean()), "sklearn_mean": float(acc_sk.mean()),
            "max_layer_gap_points": float(100 * np.abs(acc_ours - acc_sk).max()),
            "sklearn_iterations": [int(m.n_iter_[0]) for _, m in sk_fit]}


def run_case(name: str, x, y, subjects, l2: float, tol: float, repeats: int, log) -> dict:
    from almostlinear.data import split

    train, test = split(list(range(len(subjects))), 0.5, seed=0, key=lambda i: subjects[i])
    train, test = torch.tensor(train), torch.tensor(test)
    x_train, x_test = x[:, train].contiguous(), x[:, test].contiguous()
    y_train, y_test = y[train], y[test]
    results, cpu = {}, {"almostlinear": [], "sklearn": []}

    def timed_cpu(label, key, fn):
        def run(_):
            began = time.process_time()
            results[key] = fn(x_train, y_train, l2, tol)
            cpu[label].append(time.process_time() - began)
        return run

    timed = interleave({"almostlinear": timed_cpu("almostlinear", "ours", ours),
                        "sklearn": timed_cpu("sklearn", "sklearn", sklearn_per_layer)}, 1, repeats=repeats, log=log)
    quality = held_out(results["ours"], results["sklearn"], x_test, y_test)
    ratio = timed.ratio("sklearn", "almostlinear")
    cpu_median = {k: float(np.median(v[-repeats:])) for k, v in cpu.items()}  # the warm-up call is first
    cpu_ratio = cpu_median["sklearn"] / cpu_median["almostlinear"]
    log(f"[{name}] n_train={len(train)} layers={x.shape[0]}: almostlinear {timed.median_total('almostlinear'):.3f}s, "
        f"sklearn {timed.median_total('sklearn'):.3f}s, speed-up {ratio:.2f}x "
        f"(CPU time: {cpu_median['almostlinear']:.3f}s vs {cpu_median['sklearn']:.3f}s, {cpu_ratio:.2f}x); "
        "best held-out accuracy "
        f"{quality['ours_best']:.3f} vs {quality['sklearn_best']:.3f}; largest per-layer gap "
        f"{quality['max_layer_gap_points']:.1f} points")
    return {"n_train": len(train), "n_test": len(test), "layers": int(x.shape[0]), "timing": timed.summary(),
            "cpu_seconds": cpu, "speedup_sklearn_over_ours": ratio, "cpu_speedup_sklearn_over_ours": cpu_ratio,
            **quality}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--statements", type=int, default=2000)
    parser.add_argument("--min-population", type=int, default=500_000)
    parser.add_argument("--small", type=int, default=240, help="statements of the audit-sized case (0: skip)")
    parser.add_argument("--l2", type=float, default=1e-2)
    parser.add_argument("--tol", type=float, default=1e-4, help="scikit-learn's default tolerance")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    from threadpoolctl import threadpool_info, threadpool_limits

    # numpy's BLAS (used by scikit-learn) gets the same number of threads as torch, held for the whole run
    blas_limit = threadpool_limits(threads)
    log = print
    log(f"threads: torch {threads}; native pools {[(p['internal_api'], p['num_threads']) for p in threadpool_info()]}")
    info = machine_info()
    payload = collect_statements(args.statements, args.min_population, log)
    x, y, subjects = payload["x"].float(), payload["y"], payload["subjects"]
    cases = {"full": run_case("full", x, y, subjects, args.l2, args.tol, args.repeats, log)}
    if args.small:
        cases["audit_sized"] = run_case("audit-sized", x[:, :args.small], y[:args.small], subjects[:args.small],
                                        args.l2, args.tol, args.repeats, log)
    path = write_json("probes", {"machine": info, "args": vars(args), "collect_s": payload.get("collect_s"),
                                 "cases": cases})
    log(f"wrote {path}")
    blas_limit.restore_original_limits()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
