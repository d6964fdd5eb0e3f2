"""ROME single edits on SmolLM2-135M, scored on the offline CounterFact-style benchmark.

Not a timing race: no reference library runs ROME on this model offline, so this records the
quality numbers of the issue (ES, PS, NS, S with magnitudes, per-case details, the predicted
versus observed neighbour bleed) beside ROME's GPT-2 Medium values (arXiv 2202.05262, Table 5),
plus the seconds per edit on this machine.

    python benchmarks/bench_editing_counterfact.py [--cases 20] [--neighbours 10] [--threads 1]
        [--stats-texts default|audit]

Defaults: the library's ROME settings (``hparams_for``) and key statistics (``key_statistics``,
cached); ``--stats-texts audit`` takes C from the quick audit's 48 cached neutral texts instead
(about 4k tokens, no text generation). Cases run one at a time and the results are rewritten after
each, so a run cut short still reports what it measured. Writes
``benchmarks/out/editing_counterfact.json`` and ``benchmarks/results_editing_counterfact.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import OUT_DIR, machine_info, set_threads  # noqa: E402


def _ci(values: list[float]) -> float:
    """Half-width of a normal 95 % interval of the mean, in the values' unit."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return 1.96 * math.sqrt(var / n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--neighbours", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=400)
    parser.add_argument("--max-per-answer", type=int, default=2)
    parser.add_argument("--fluency-cases", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stats-tokens", type=int, default=None,
                        help="tokens for C (default: the library's, from model-generated text)")
    parser.add_argument("--stats-texts", choices=("default", "audit"), default="default",
                        help="'audit': C from the quick audit's 48 cached neutral texts instead (cheaper)")
    parser.add_argument("--out", default=str(OUT_DIR / "editing_counterfact.json"))
    parser.add_argument("--md", default=str(HERE / "results_editing_counterfact.md"))
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)

    import almostlinear
    from almostlinear.data import neutral_texts
    from almostlinear.editing import hparams_for, key_statistics, rome
    from almostlinear.editing.counterfact import counterfact_cases
    from almostlinear.editing.eval import EditEvaluation, evaluate_edits, summarize

    began = time.perf_counter()
    loaded = almostlinear.load(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    hp = hparams_for(model) if args.stats_tokens is None else hparams_for(model, stats_tokens=args.stats_tokens)
    t0 = time.perf_counter()
    texts = None
    if args.stats_texts == "audit":
        texts = neutral_texts(model, tokenizer, 48, max_new_tokens=80, seed=0, cache_key=loaded.fingerprint)
    stats = key_statistics(model, tokenizer, hp.layer, texts=texts, n_tokens=hp.stats_tokens, progress=True)
    stats_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cases = counterfact_cases(model, tokenizer, args.cases, candidates=args.candidates, n_neighbours=args.neighbours,
                              max_per_answer=args.max_per_answer, seed=args.seed)
    cases_s = time.perf_counter() - t0
    print(f"{len(cases)} cases in {cases_s:.0f} s; statistics ({stats.n_tokens} tokens) in {stats_s:.0f} s",
          file=sys.stderr)

    def editor(requests):
        return rome(model, tokenizer, requests[0], stats=stats, hparams=hp)

    def reach(chunk, edit):
        from almostlinear.editing.section import predicted_reach

        return {c.case_id: {**predicted_reach(model, tokenizer, c, edit, structure=loaded.structure),
                            "diagnostics": edit.diagnostics} for c in chunk}

    # One case at a time, results written after each, so a run cut short still reports what it measured.
    done = []
    restored = True
    for i, case in enumerate(cases):
        part = evaluate_edits(model, tokenizer, [case], editor, on_edit=reach,
                              fluency_cases=1 if i < args.fluency_cases else 0, seed=args.seed)
        done += part.cases
        restored = restored and bool(part.restored)
        ev = EditEvaluation("single", summarize([r.pre for r in done]), summarize([r.post for r in done]), done,
                            restored, time.perf_counter() - began)
        _write(args, argv, ev, hp, stats, threads, loaded, began, stats_s, cases_s, len(cases))
        print(f"case {i + 1}/{len(cases)}: S {ev.post.s:.1f} ES {ev.post.es:.1f} PS {ev.post.ps:.1f} "
              f"NS {ev.post.ns:.1f} (unedited NS {ev.pre.ns:.1f})", file=sys.stderr, flush=True)
    print(Path(args.md).read_text())
    return 0


def _write(args, argv, ev, hp, stats, threads, loaded, began, stats_s, cases_s, planned) -> None:
    from almostlinear.editing.eval import rank_correlation

    per_case = {
        "ES": [100 * r.post.efficacy for r in ev.cases],
        "PS": [100 * r.post.paraphrase for r in ev.cases],
        "NS": [100 * r.post.neighbourhood for r in ev.cases],
        "NS (unedited)": [100 * r.pre.neighbourhood for r in ev.cases],
    }
    reach_n, gain_n = [], []
    for r in ev.cases:
        reach_n += r.extra["reach_neighbour"]
        gain_n += [a - b for a, b in zip(r.pre.neighbour_new, r.post.neighbour_new)]
    rho = rank_correlation(reach_n, gain_n)
    flipped = [x for r in ev.cases for x, answer, new in
               zip(r.extra["reach_neighbour"], r.post.neighbour_answer, r.post.neighbour_new) if not answer < new]
    para = [x for r in ev.cases for x in r.extra["reach_paraphrase"]]
    seconds = time.perf_counter() - began
    summary = {
        "machine": machine_info("cpu"), "threads": threads, "model": loaded.name, "fingerprint": loaded.fingerprint,
        "args": vars(args), "hparams": hp.to_dict(), "stats_tokens": stats.n_tokens,
        "stats_stability": stats.stability, "stats_source": stats.source, "evaluation": ev.as_dict(),
        "ci95": {k: _ci(v) for k, v in per_case.items()},
        "bleed": {"spearman": rho, "neighbours": len(reach_n), "mean_reach": _avg(reach_n),
                  "mean_reach_paraphrase": _avg(para),
                  "mean_reach_flipped": _avg(flipped), "n_flipped": len(flipped)},
        "seconds": {"total": seconds, "stats": stats_s, "cases": cases_s,
                    "per_edit": _avg([r.seconds for r in ev.cases])},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1, default=str))
    command = "python benchmarks/bench_editing_counterfact.py " + " ".join(sys.argv[1:] if argv is None else argv)
    n_neighbours = sum(len(r.case.neighbourhood_prompts) for r in ev.cases)
    source = ("the quick audit's 48 cached neutral texts" if args.stats_texts == "audit"
              else "model-generated text (the library default)")
    lines = [
        "## Editing: ROME single edits on SmolLM2-135M (offline CounterFact-style)",
        "",
        f"Command: `{command.strip()}` ({threads} torch thread, CPU, shared 2-core machine; "
        f"{seconds / 60:.0f} min; {len(ev.cases)} of {planned} planned cases done).",
        "",
        f"{len(ev.cases)} cases (city → country facts the model ranks first, at most {args.max_per_answer} per "
        f"country), 2 paraphrases each, {n_neighbours} neighbour prompts in all (cities of the same country the "
        f"model also places right); ROME at block {hp.layer} with the library defaults ({hp.v_steps} value steps, "
        f"{1 + len(hp.prefix_lengths) * hp.n_prefixes} templates); C from {stats.n_tokens} tokens of {source}, "
        f"split-half stability {stats.stability:.3f}.",
        "",
        "```",
        ev.table(),
        "```",
        "",
        "95 % intervals (normal, over cases): " + ", ".join(f"{k} ±{v:.1f}" for k, v in summary["ci95"].items()),
        "",
        f"Neighbour bleed: Spearman ρ = {rho:+.2f} between the predicted reach uᵀk_n and the observed gain of "
        f"log P(new) per token over {len(reach_n)} neighbours; mean reach {_avg(reach_n):.2f} on neighbours, "
        f"{_avg(para):.2f} on paraphrases; "
        + (f"{len(flipped)} neighbours flipped to the new target, mean reach {_avg(flipped):.2f}." if flipped
           else "no neighbour flipped."),
        f"Seconds per edit (value optimisation, update, scoring): {summary['seconds']['per_edit']:.0f}.",
        "",
    ]
    Path(args.md).write_text("\n".join(lines))


def _avg(values) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
