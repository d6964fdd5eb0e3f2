"""Time to fit linear maps between two representations, against scikit-learn and SciPy on the same data.

    python benchmarks/bench_translate.py [--texts 48] [--rows 3000] [--threads 2] [--repeats 3] [--write-md]

Data: SmolLM2-135M-Instruct's residual stream after block 10 (x) and after block 12 (y), every token
but the first of the audit's quick neutral texts (48 model-generated texts, cached), cut to ``--rows``
rows, float64: the pairs a stitching map ``resid_post.10 → resid_post.12`` is fitted on (cached under
``cache_dir("bench")`` after the first run). Variants,
interleaved round by round:

  al_ridge           ``fit_ridge(x, y, 0.1)`` (Cholesky solve of the shifted centred d × d Gram matrix)
  sk_ridge           ``sklearn.linear_model.Ridge(alpha=<the same penalty>)`` (its default solver)
  al_ridge_search    ``fit_affine(x, y)``: 8 penalties scored on a validation fifth, then the refit
  sk_ridge_search    the same procedure with Ridge: 8 fits on the same rows, variance-weighted R² on
                     the same validation rows, refit the best (al_ridge_search uses one eigh for all 8)
  sk_ridgecv         ``RidgeCV(alphas=<the 8 penalties>)`` (efficient leave-one-out; another criterion)
  al_orthogonal      ``fit_orthogonal(x, y)`` (with intercept)
  scipy_orthogonal   centre both, ``scipy.linalg.orthogonal_procrustes``, intercept
  al_low_rank        ``fit_low_rank(x, y, 64, ridge=0.1)`` (no reference library)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=48)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-md", action="store_true", help="write benchmarks/results_translate.md")
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads)
    import numpy as np
    import torch
    from scipy.linalg import orthogonal_procrustes
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.metrics import r2_score as sk_r2
    from threadpoolctl import threadpool_info, threadpool_limits

    # threadpoolctl only limits the libraries loaded so far: SciPy and scikit-learn bring their own
    # OpenBLAS and OpenMP, so the limit comes after their imports, or they run on every core
    threadpool_limits(threads)
    pools = sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})
    if any(n != threads for _, n in pools):
        raise RuntimeError(f"thread pools not limited to {threads}: {pools}")

    import almostlinear
    from almostlinear.data import neutral_texts
    from almostlinear.translate import Network, choose_ridge, fit_affine, fit_low_rank, fit_orthogonal, fit_ridge
    from almostlinear.translate.maps import DEFAULT_RIDGES, _gram_eig, _split_rows, _unit
    from almostlinear.translate.stitch import paired_activations

    loaded = almostlinear.load("smollm2-135m")
    texts = neutral_texts(loaded.model, loaded.tokenizer, args.texts, max_new_tokens=80, seed=0,
                          cache_key=loaded.fingerprint)
    net = Network.of(loaded.model, loaded.tokenizer, loaded.structure)
    from almostlinear.core.paths import cache_dir

    cached = cache_dir("bench") / f"translate-acts-{loaded.fingerprint.removeprefix('sha256:')[:12]}-{args.texts}.pt"
    began = time.perf_counter()
    if cached.is_file():
        x, y = torch.load(cached)
    else:
        x, y = paired_activations(net, net, texts, "resid_post.10", "resid_post.12")
        torch.save((x, y), cached)
    collect_s = time.perf_counter() - began
    x, y = x[: args.rows].double().contiguous(), y[: args.rows].double().contiguous()
    xn, yn = x.numpy(), y.numpy()
    n, d = x.shape
    print(f"collected {n} rows x {d} in {collect_s:.1f}s; threads {threads}")

    ridge = 0.1
    xc = x - x.mean(0)
    unit = _unit(_gram_eig(xc)[0], n)  # the penalty unit of fit_ridge
    alpha = ridge * unit
    fit_rows, val_rows = _split_rows(n, 0.2, 0)

    def sk_ridge():
        return Ridge(alpha=alpha).fit(xn, yn)

    f, v = fit_rows.numpy(), val_rows.numpy()
    xc_fit = xn[f] - xn[f].mean(0)
    # the penalty unit (trace of the centred Gram matrix over min(n, d)) is computed once, outside the
    # timing: it is bookkeeping that makes the penalties equal, not part of scikit-learn's procedure
    unit_fit = float(np.einsum("ij,ij->", xc_fit, xc_fit)) / min(xc_fit.shape)

    def sk_search():
        scores = {}
        for r in DEFAULT_RIDGES:
            pred = Ridge(alpha=r * unit_fit).fit(xn[f], yn[f]).predict(xn[v])
            # the criterion of choose_ridge (Ridge.score would average R² over columns instead)
            scores[r] = sk_r2(yn[v], pred, multioutput="variance_weighted")
        best = max(scores, key=lambda r: (scores[r], r))
        return Ridge(alpha=best * unit).fit(xn, yn), best

    def scipy_orthogonal():
        mx, my = xn.mean(0), yn.mean(0)
        rotation, _ = orthogonal_procrustes(xn - mx, yn - my)
        return rotation, my - mx @ rotation

    variants = {
        "al_ridge": lambda _: fit_ridge(x, y, ridge),
        "sk_ridge": lambda _: sk_ridge(),
        "al_ridge_search": lambda _: fit_affine(x, y),
        "sk_ridge_search": lambda _: sk_search(),
        "sk_ridgecv": lambda _: RidgeCV(alphas=[r * unit for r in DEFAULT_RIDGES]).fit(xn, yn),
        "al_orthogonal": lambda _: fit_orthogonal(x, y),
        "scipy_orthogonal": lambda _: scipy_orthogonal(),
        "al_low_rank": lambda _: fit_low_rank(x, y, 64, ridge=ridge),
    }
    result = common.interleave(variants, 1, repeats=args.repeats)
    med = {name: result.median_total(name) for name in variants}

    ours, theirs = fit_ridge(x, y, ridge), sk_ridge()
    diff_ridge = float(np.abs(ours.weight.numpy() - theirs.coef_.T).max() / np.abs(theirs.coef_).max())
    rotation, _ = scipy_orthogonal()
    diff_orth = float(np.abs(fit_orthogonal(x, y).weight.numpy() - rotation).max())
    chosen, _ = choose_ridge(x, y)
    _, chosen_sklearn = sk_search()
    summary = {
        "rows": n, "width": d, "threads": threads, "collect_s": collect_s, "median_s": med,
        "ratio_ridge": med["sk_ridge"] / med["al_ridge"],
        "ratio_ridge_search": med["sk_ridge_search"] / med["al_ridge_search"],
        "ratio_ridgecv": med["sk_ridgecv"] / med["al_ridge_search"],
        "ratio_orthogonal": med["scipy_orthogonal"] / med["al_orthogonal"],
        "max_rel_diff_ridge_vs_sklearn": diff_ridge, "max_abs_diff_orthogonal_vs_scipy": diff_orth,
        "chosen_ridge": chosen, "chosen_ridge_sklearn": chosen_sklearn,
        "versions": {k: common.version_of(k) for k in ("scikit-learn", "scipy", "torch")},
    }
    payload = {"machine": common.machine_info(), "summary": summary, "times": result.summary()}
    path = common.write_json("bench_translate", payload)
    print(summary)
    print(f"wrote {path}")
    if args.write_md:
        _write_md(payload, args)


def _write_md(payload: dict, args) -> None:
    s, m = payload["summary"], payload["machine"]
    med = s["median_s"]
    fastest = {name: min(t["totals_s"]) for name, t in payload["times"].items()}
    rows = [
        ("ridge, one penalty", "al_ridge", "sk_ridge", "scikit-learn `Ridge` (same penalty)"),
        ("ridge, 8 penalties on a validation fifth + refit", "al_ridge_search", "sk_ridge_search",
         "the same procedure with `Ridge`"),
        ("ridge, penalty chosen among 8", "al_ridge_search", "sk_ridgecv", "`RidgeCV` (leave-one-out, another criterion)"),
        ("orthogonal Procrustes with intercept", "al_orthogonal", "scipy_orthogonal", "SciPy `orthogonal_procrustes`"),
    ]
    lines = [
        "# Translate benchmark (fitting linear maps)",
        "",
        f"Command: `python benchmarks/bench_translate.py --texts {args.texts} --rows {args.rows} --threads "
        f"{s['threads']} --repeats {args.repeats} --write-md`  ",
        f"Machine: {m['cpu_count']} CPUs; torch, and the OpenBLAS and OpenMP pools of NumPy, SciPy and "
        f"scikit-learn, all with {s['threads']} thread(s) (set and checked with threadpoolctl after their imports), torch {s['versions']['torch']}, scikit-learn "
        f"{s['versions']['scikit-learn']}, SciPy {s['versions']['scipy']}; load average at start "
        f"{' '.join(f'{v:.1f}' for v in m['load_average_at_start'] or [])} (shared machine: times are noisy, the "
        f"variants ran interleaved); date {m['date']}.",
        "",
        f"Data: SmolLM2-135M-Instruct `resid_post.10` → `resid_post.12`, {s['rows']} tokens × {s['width']}, float64 "
        "(the rows a stitching map is fitted on).",
        "",
        "Median (and fastest) of the interleaved rounds; the ratio is of the medians, the last column of the "
        "fastest rounds (less affected by other processes).",
        "",
        "| map | almostlinear | reference | reference / almostlinear | fastest / fastest |",
        "|---|---|---|---|---|",
    ]
    for what, ours, theirs, name in rows:
        lines.append(f"| {what} | {med[ours]:.3f} s ({fastest[ours]:.3f}) | {name}: {med[theirs]:.3f} s "
                     f"({fastest[theirs]:.3f}) | {med[theirs] / med[ours]:.2f}x | {fastest[theirs] / fastest[ours]:.2f}x |")
    lines += [
        f"| reduced-rank ridge, rank 64 | {med['al_low_rank']:.3f} s ({fastest['al_low_rank']:.3f}) | none | | |",
        "",
        f"Agreement: ridge coefficients differ from scikit-learn's by at most {s['max_rel_diff_ridge_vs_sklearn']:.1e} "
        f"(relative to the largest); the orthogonal map differs from SciPy's by at most "
        f"{s['max_abs_diff_orthogonal_vs_scipy']:.1e}. The validation search chose ridge {s['chosen_ridge']} "
        f"(the same search with scikit-learn: {s['chosen_ridge_sklearn']}).",
        "",
    ]
    out = Path(__file__).resolve().parent / "results_translate.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
