"""MEMIT with many edits at once on SmolLM2-135M: wall time and CounterFact-style scores.

Cases are facts the model knows (city → country), as in the editing evaluation; the key statistics
come from the audit's cached neutral texts (``--stats-texts``), so this measures the batch edit
itself. Scores (×100) are taken before the edit and with the edit applied; the model is restored.

    python benchmarks/bench_memit_batch.py --edits 100 --threads 2 [--n-prefixes 1 --v-steps 12]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, set_threads  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=100)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--neighbours", type=int, default=2)
    ap.add_argument("--stats-texts", type=int, default=48)
    ap.add_argument("--n-prefixes", type=int, default=None, help="generated prefixes per length (default: hparams_for)")
    ap.add_argument("--v-steps", type=int, default=None, help="value optimisation steps (default: hparams_for)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "memit_batch.json"))
    args = ap.parse_args()
    threads = set_threads(args.threads)

    import almostlinear
    from almostlinear.data import neutral_texts
    from almostlinear.editing import default_layers, hparams_for, key_statistics, memit
    from almostlinear.editing.counterfact import counterfact_cases
    from almostlinear.editing.eval import score_cases, summarize

    lm = almostlinear.load("smollm2-135m")
    model, tokenizer = lm.model, lm.tokenizer
    began = time.perf_counter()
    cases = counterfact_cases(model, tokenizer, args.edits, candidates=args.candidates,
                              n_neighbours=args.neighbours, max_per_answer=None)
    t_cases = time.perf_counter() - began
    layers = list(default_layers(model))
    texts = neutral_texts(model, tokenizer, args.stats_texts, max_new_tokens=80, cache_key=lm.fingerprint)
    began = time.perf_counter()
    stats = key_statistics(model, tokenizer, layers, texts=texts)
    t_stats = time.perf_counter() - began
    before = summarize(score_cases(model, tokenizer, cases))
    began = time.perf_counter()
    overrides = {k: v for k, v in (("n_prefixes", args.n_prefixes), ("v_steps", args.v_steps)) if v is not None}
    hp = hparams_for(model, **overrides)
    edit = memit(model, tokenizer, [c.request for c in cases], layers=layers, stats=stats, hparams=hp, progress=True)
    t_edit = time.perf_counter() - began
    with edit.apply(model):
        after = summarize(score_cases(model, tokenizer, cases))
    result = {"machine": machine_info("cpu"), "threads": threads, "args": vars(args), "edits": len(cases),
              "layers": layers, "hparams": hp.to_dict(), "seconds": {"cases": t_cases, "statistics": t_stats, "memit": t_edit},
              "stats_tokens": {str(k): v.n_tokens for k, v in stats.items()},
              "before": before.__dict__, "after": after.__dict__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(json.dumps({k: result[k] for k in ("edits", "layers", "seconds", "before", "after")}, indent=1,
                     default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
