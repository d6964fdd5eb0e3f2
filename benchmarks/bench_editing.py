"""ROME / MEMIT / AlphaEdit on SmolLM2-135M: what they cost on this machine and what they achieve.

Timed: the key statistics ``C`` (one forward pass per batch, stopping after the layer), one ROME
edit with cached statistics, one MEMIT (and AlphaEdit) batch. Scored with the CounterFact-style
metrics of :mod:`almostlinear.editing.eval` (ES / PS / NS, ×100) on cases built from packaged
geographic facts the model knows, before and after each edit (restored in between), for each
layer in ``--layers`` (the sweep that chose the default layer). The linear prediction of the
neighbours' shift (``uᵀk_n · v``) is reported beside the observed one.

No editing reference library is installed here (EasyEdit and the ROME/MEMIT research code need
CUDA, datasets downloads and pinned old transformers), so times are absolute, not ratios.

    python benchmarks/bench_editing.py [--threads 2] [--cases 8] [--layers 4,6,8] [--memit-edits 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "2")


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, set_threads  # noqa: E402


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--neighbours", type=int, default=5)
    ap.add_argument("--layers", default="", help="comma-separated ROME layers (default: the default layer)")
    ap.add_argument("--stats-tokens", type=int, default=20_000)
    ap.add_argument("--memit-edits", type=int, default=10)
    ap.add_argument("--skip-alphaedit", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "editing.json"))
    args = ap.parse_args()
    threads = set_threads(args.threads)

    import almostlinear
    from almostlinear.core.models import fingerprint
    from almostlinear.editing import (
        alphaedit, default_layer, default_layers, hparams_for, key_statistics, memit, predicted_shift, rome,
    )
    from almostlinear.editing.counterfact import counterfact_cases
    from almostlinear.editing.eval import rank_correlation, score_cases, summarize
    from almostlinear.editing.stats import accumulate, default_texts

    result: dict = {"machine": machine_info("cpu"), "threads": threads, "args": vars(args)}
    lm = almostlinear.load("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    hp = hparams_for(model)
    layers = [int(x) for x in args.layers.split(",") if x] or [default_layer(model)]
    mlayers = list(default_layers(model))

    t0 = time.perf_counter()
    texts, source = default_texts(model, tok, args.stats_tokens, fp=fingerprint(model))
    result["neutral_texts_s"] = time.perf_counter() - t0  # generation, or reading the cache
    log(f"texts: {len(texts)} ({source}) in {result['neutral_texts_s']:.1f}s")
    t0 = time.perf_counter()
    accumulate(model, tok, texts, [layers[0]], n_tokens=args.stats_tokens)
    result["stats_one_layer_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = key_statistics(model, tok, sorted(set(layers) | set(mlayers)), n_tokens=args.stats_tokens)
    result["stats_all_layers_s_cached_or_computed"] = time.perf_counter() - t0
    result["stats"] = {l: {"n_tokens": s.n_tokens, "stability": s.stability, "condition": s.condition_number()}
                       for l, s in stats.items()}
    log("stats", json.dumps(result["stats"]))

    n_cases = max(args.cases, args.memit_edits)
    t0 = time.perf_counter()
    cases = counterfact_cases(model, tok, n_cases, n_neighbours=args.neighbours)
    result["cases_s"] = time.perf_counter() - t0
    log(f"{len(cases)} cases in {result['cases_s']:.1f}s")
    pre = score_cases(model, tok, cases)
    result["unedited"] = summarize(pre[: args.cases]).as_dict()

    result["rome"] = {}
    for layer in layers:
        times, post, bleed, rel_err, pred_coef, obs_change = [], [], [], [], [], []
        for case in cases[: args.cases]:
            t0 = time.perf_counter()
            edit = rome(model, tok, case.request, layer=layer, stats=stats[layer], hparams=hp)
            times.append(time.perf_counter() - t0)
            with edit.apply(model):
                post.extend(score_cases(model, tok, [case]))
            pairs = [(p, s) for p, s in zip(case.neighbourhood_prompts, case.neighbourhood_subjects)]
            if pairs:
                rows = predicted_shift(edit, model, tok, pairs, target=case.target_new)
                rel_err.extend(r.relative_error for r in rows)
                pred_coef.extend(r.coefficient for r in rows)
                obs_change.extend(r.target_logprob_after - r.target_logprob_before for r in rows)
            log(f"layer {layer} case {case.case_id}: {times[-1]:.1f}s steps {edit.diagnostics['steps']}")
        summary = summarize(post).as_dict()
        summary.update({
            "seconds_per_edit_median": statistics.median(times), "seconds_per_edit_all": times,
            "shift_relative_error_max": max(rel_err) if rel_err else None,
            "neighbour_coefficient_mean": statistics.mean(pred_coef) if pred_coef else None,
            "spearman_coefficient_vs_target_logprob_change":
                rank_correlation(pred_coef, obs_change) if len(pred_coef) > 2 else None,
        })
        result["rome"][layer] = summary
        log(f"ROME layer {layer}: {json.dumps(summary)}")

    batch = cases[: args.memit_edits]
    methods = [("memit", memit)] + ([] if args.skip_alphaedit else [("alphaedit", alphaedit)])
    for name, fn in methods:
        t0 = time.perf_counter()
        edit = fn(model, tok, [c.request for c in batch], layers=mlayers, stats=stats, hparams=hp)
        seconds = time.perf_counter() - t0
        with edit.apply(model):
            post = score_cases(model, tok, batch)
        summary = summarize(post).as_dict()
        summary.update({"edits": len(batch), "seconds": seconds, "layers": mlayers,
                        "unedited": summarize(pre[: len(batch)]).as_dict(),
                        "diagnostics": edit.diagnostics})
        result[name] = summary
        log(f"{name}: {json.dumps(summary)}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
