"""Time of a 31 x 31 linear-CKA matrix over SmolLM2's residual stream, against a naive per-pair loop
and against torch-cka.

    python benchmarks/bench_similarity.py [--tokens 2000] [--torch-cka-tokens 500] [--threads 2]
                                          [--repeats 3] [--write-md]

Activations: ``resid_pre.0`` and ``resid_post.0..29`` of SmolLM2-135M-Instruct at every token (the
first of each text excluded) of the audit's quick neutral texts (48 model-generated texts, cached by
the audit), cut to the first ``--tokens`` tokens. Variants, all on the same float32 activations:

  al_auto       ``layer_similarity(acts, measure="cka")``: float64, route chosen by cost (Gram here)
  al_features   the same forced to the feature route (``||X_aᵀX_b||²`` for each of 496 pairs)
  al_both       ``kernel_stats`` once, then plain and debiased CKA matrices (what the audit does)
  naive         a per-pair function as one would write it: centre both, ``||XᵀY||² / (||XᵀX|| ||YᵀY||)``
                in float64. Every call has the same shapes and cost, so it is timed on one row of the
                matrix (31 calls) and scaled by 31 to the full 31 x 31 matrix (961 calls); at 2000 tokens the
                full loop would take tens of minutes on 2 cores.
  torch_cka     ``torch_cka.CKA.compare`` (unbiased HSIC, float32, Grams of the raw features) on one
                batch of ``--torch-cka-tokens`` tokens, so that it computes exactly debiased CKA; its
                HSIC multiplies two n x n Grams per pair (``n³``), hence the smaller ``n``. Compared with
                ``layer_similarity(..., measure="cka_debiased")`` on the same tokens.

The slow variants (naive, torch_cka, al_features) run once, in the first round; the others run
``--repeats`` times, interleaved with them.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def naive_cka(x, y):
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    return float((x.T @ y).square().sum() / ((x.T @ x).norm() * (y.T @ y).norm()))


def naive_row(acts, row):
    import torch

    return torch.tensor([naive_cka(acts[row], b) for b in acts], dtype=torch.float64)


def torch_cka_matrix(acts):
    """torch-cka on precomputed activations: a module whose named children replay them."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from torch_cka import CKA

    class Replay(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Identity() for _ in acts)

        def forward(self, index):
            return [layer(acts[i][index]) for i, layer in enumerate(self.layers)]

    model = Replay()
    names = [f"layers.{i}" for i in range(len(acts))]
    loader = DataLoader(TensorDataset(torch.arange(acts.shape[1])), batch_size=acts.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cka = CKA(model, model, "replay_a", "replay_b", model1_layers=names, model2_layers=names)
        cka.compare(loader, loader)
    return cka.export()["CKA"].double()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--torch-cka-tokens", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-md", action="store_true", help="write benchmarks/RESULTS-similarity.md")
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads)

    import torch

    import almostlinear
    from almostlinear.data import neutral_texts
    from almostlinear.similarity import kernel_stats, layer_similarity

    loaded = almostlinear.load("smollm2-135m")
    texts = neutral_texts(loaded.model, loaded.tokenizer, 48, max_new_tokens=80, seed=0,
                          cache_key=loaded.fingerprint)
    sites = [almostlinear.Site("resid_pre", 0)] + [almostlinear.Site("resid_post", i) for i in range(30)]
    began = time.perf_counter()
    collected = almostlinear.collect(loaded.model, loaded.tokenizer, texts, sites, skip_first=True)
    collect_s = time.perf_counter() - began
    acts = torch.stack([collected[s].float() for s in sites])
    if acts.shape[1] < args.tokens:
        raise SystemExit(f"only {acts.shape[1]} tokens collected, fewer than --tokens {args.tokens}")
    acts = acts[:, : args.tokens].contiguous()
    print(f"collected {collected.token_ids.shape[0]} tokens in {collect_s:.1f}s; using {acts.shape[1]}; "
          f"threads {threads}")

    def both():
        stats = kernel_stats([x.double() for x in acts])
        return stats.cka(), stats.cka_debiased()

    small = acts[:, : args.torch_cka_tokens].contiguous()
    row = acts.shape[0] // 2
    ours = {"al_auto": lambda: layer_similarity(acts, measure="cka"), "al_both": both,
            "al_debiased_small": lambda: layer_similarity(small, measure="cka_debiased")}
    times = {name: [] for name in [*ours, "al_features", "naive_row", "torch_cka"]}
    results = {}
    for fn in ours.values():  # warm-up
        fn()
    for r in range(args.repeats):
        for name, fn in ours.items():
            seconds, results[name] = common.time_call(fn)
            times[name].append(seconds)
        if r == 0:
            seconds, results["al_features"] = common.time_call(
                lambda: layer_similarity(acts, measure="cka", method="features"))
            times["al_features"].append(seconds)
            seconds, results["naive_row"] = common.time_call(lambda: naive_row(acts, row))
            times["naive_row"].append(seconds)
            print(f"naive, one row of {acts.shape[0]} pairs: {seconds:.1f}s")
            try:
                seconds, results["torch_cka"] = common.time_call(lambda: torch_cka_matrix(small))
                times["torch_cka"].append(seconds)
                print(f"torch_cka {seconds:.1f}s")
            except ImportError as error:
                print(f"torch-cka not available: {error}")
        print({k: round(v[-1], 2) for k, v in times.items() if v})
    med = {k: common.median(v) for k, v in times.items() if v}
    med["naive"] = med["naive_row"] * acts.shape[0]  # every pair costs the same: one row x rows
    error_naive = float((results["al_auto"][row] - results["naive_row"]).abs().max())
    error_features = float((results["al_auto"] - results["al_features"]).abs().max())
    summary = {
        "tokens": acts.shape[1], "layers": acts.shape[0], "width": acts.shape[2], "threads": threads,
        "median_s": med, "speedup_vs_naive": med["naive"] / med["al_auto"],
        "max_abs_diff_auto_vs_naive": error_naive, "max_abs_diff_auto_vs_features": error_features,
    }
    if "torch_cka" in med:
        summary["torch_cka_tokens"] = small.shape[1]
        summary["speedup_vs_torch_cka"] = med["torch_cka"] / med["al_debiased_small"]
        summary["max_abs_diff_debiased_vs_torch_cka"] = float(
            (results["al_debiased_small"] - results["torch_cka"]).abs().max())
        summary["versions_torch_cka"] = common.version_of("torch-cka")
    payload = {"machine": common.machine_info(), "summary": summary, "times_s": times}
    path = common.write_json("bench_similarity", payload)
    print(summary)
    print(f"wrote {path}")
    if args.write_md:
        _write_md(payload)


def _write_md(payload: dict) -> None:
    s, m = payload["summary"], payload["machine"]
    med = s["median_s"]
    lines = [
        "# Similarity benchmark (linear CKA matrices)",
        "",
        f"Command: `python benchmarks/bench_similarity.py --tokens {s['tokens']} "
        f"--torch-cka-tokens {s.get('torch_cka_tokens', 500)} --threads {s['threads']} --write-md`  ",
        f"Machine: {m['cpu_count']} CPUs, torch {m['versions']['torch']} with {s['threads']} threads, "
        f"load average at start {' '.join(f'{v:.1f}' for v in m['load_average_at_start'] or [])} (other "
        f"processes shared the CPUs: times are noisy); date {m['date']}.",
        "",
        f"Activations: SmolLM2-135M-Instruct, {s['layers']} residual states (embeddings + 30 blocks) x "
        f"{s['tokens']} tokens x {s['width']}, float32 in, float64 inside almostlinear.",
        "",
        "| variant | what | median time | ratio |",
        "|---|---|---|---|",
        f"| al_auto | `layer_similarity(acts)` (Gram route, chosen by cost) | {med['al_auto']:.2f} s | 1 |",
        f"| al_features | same, forced feature route (496 pairs of `XᵀY`) | {med['al_features']:.2f} s | "
        f"{med['al_features'] / med['al_auto']:.1f}x |",
        f"| al_both | plain + debiased matrices from one pass (the audit) | {med['al_both']:.2f} s | "
        f"{med['al_both'] / med['al_auto']:.1f}x |",
        f"| naive | per-pair feature-space CKA, float64; one row of 31 calls timed ({med['naive_row']:.1f} s), "
        f"x 31 for the 31 x 31 matrix | {med['naive']:.0f} s | {med['naive'] / med['al_auto']:.0f}x |",
        "",
        f"Largest difference from the naive row: {s['max_abs_diff_auto_vs_naive']:.1e}; "
        f"Gram vs feature route: {s['max_abs_diff_auto_vs_features']:.1e}.",
    ]
    if "speedup_vs_torch_cka" in s:
        lines += [
            "",
            f"torch-cka {s['versions_torch_cka']} on {s['torch_cka_tokens']} tokens (one batch, so its minibatch "
            "CKA is exactly debiased CKA; its HSIC costs n³ per pair):",
            "",
            "| variant | median time | ratio |",
            "|---|---|---|",
            "| almostlinear `layer_similarity(acts, measure=\"cka_debiased\")` | "
            f"{med['al_debiased_small']:.2f} s | 1 |",
            f"| torch-cka `CKA.compare` | {med['torch_cka']:.1f} s | {s['speedup_vs_torch_cka']:.0f}x |",
            "",
            f"Largest difference between the two debiased matrices: {s['max_abs_diff_debiased_vs_torch_cka']:.1e} "
            "(torch-cka works in float32 on uncentred features).",
        ]
    (common.HERE / "RESULTS-similarity.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
