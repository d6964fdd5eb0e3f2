"""ActAdd's topic experiment (arXiv 2308.10248) on SmolLM2-135M, run with the paper's protocol.

The paper steers GPT-2-XL towards weddings with one prompt pair, " weddings" minus "" (the empty
prompt padded with a space token), added position by position at the front of the prompt before
one block with a coefficient. It sweeps the injection layer and the coefficient, scores sampled
completions by whether they contain a wedding-related word, and checks perplexity on unrelated
text (and on wedding-related text, where it should fall). This script does the same:

1. layer × coefficient grid (every ``--layer-step``-th block, ``--coefficients``): the share of
   sampled completions with at least one wedding word, the mean count, and ΔCE / KL on unrelated
   hand-written text (``data.FALLBACK_TEXTS``);
2. at the best cell (highest share among cells whose unrelated-text ΔCE stays under
   ``--ce-budget``): ΔCE on wedding sentences at every coefficient;
3. the protocol the audit used before (mean difference of the 16 wedding/ordinary sentence pairs,
   read at the last token of ``resid_post.9``, added at every position in units of the median
   residual norm) scored the same way, so the two verdicts rest on one metric.

GPT-2 puts a beginning-of-text token in front of every prompt, so its first steered position is
that token (difference zero) and the pair's word lands on the user's first token. SmolLM2's
tokenizer adds no such token; ``--prefix eot`` (default) puts ``<|endoftext|>`` (SmolLM2's document
separator) in front of the pair and of every prompt and text, which reproduces that alignment;
``--prefix none`` adds the difference to the user's first token, an attention sink in this model.

    python benchmarks/bench_actadd.py --threads 1 --prefix eot    # writes benchmarks/out/actadd-eot-*.json
    python benchmarks/bench_actadd.py --threads 1 --prefix none
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The wedding-related words of the paper's topic metric (a completion counts when it has one).
WEDDING_WORDS = ("wedding", "weddings", "wed", "weds", "wedded", "marry", "marries", "married", "marriage",
                 "bride", "brides", "bridal", "groom", "grooms", "honeymoon")
WEDDING_RE = re.compile(r"\b(" + "|".join(WEDDING_WORDS) + r")\b", re.IGNORECASE)
EOT = "<|endoftext|>"


def topic_score(texts: list[str]) -> dict:
    counts = [len(WEDDING_RE.findall(t)) for t in texts]
    return {"share_with_word": sum(c > 0 for c in counts) / len(counts), "mean_count": sum(counts) / len(counts)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=16, help="neutral sentence openings (data.sentiment)")
    parser.add_argument("--samples", type=int, default=2, help="sampled completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--layer-step", type=int, default=3)
    parser.add_argument("--layers", default="", help="blocks to sweep, e.g. 15,21 (default: every --layer-step-th)")
    parser.add_argument("--coefficients", default="1,2,4,8,16")
    parser.add_argument("--texts", type=int, default=8, help="unrelated and wedding texts for ΔCE")
    parser.add_argument("--ce-budget", type=float, default=0.5, help="nats/token on unrelated text")
    parser.add_argument("--prefix", choices=("eot", "none"), default="eot")
    parser.add_argument("--baseline-strengths", default="0.05,0.1,0.2,0.3", help="empty: skip part 3")
    args = parser.parse_args()


    sys.path.insert(0, str(HERE))
    from common import load_average, machine_info, set_threads, write_json

    import almostlinear
    from almostlinear.data import FALLBACK_TEXTS
    from almostlinear.data import sentiment as S
    from almostlinear.steering import (fit_activation_addition, fit_steering,
                                       generate_steered, generate_with_addition)
    from almostlinear.steering.cost import side_effects_many

    set_threads(args.threads)
    started = time.perf_counter()
    loaded = almostlinear.load()
    n_layers = loaded.structure.n_layers
    prefix = EOT if args.prefix == "eot" else ""
    base_prompts = list(S.NEUTRAL_PROMPTS[: args.prompts])
    prompts = [prefix + p for p in base_prompts for _ in range(args.samples)]
    unrelated = [prefix + t for t in FALLBACK_TEXTS[: args.texts]]
    wedding_texts = [prefix + pos for pos, _ in S.WEDDING_PAIRS[: args.texts]]
    sampling = dict(do_sample=True, temperature=1.0, top_p=0.3, max_new_tokens=args.new_tokens, batch_size=16)
    out: dict = {"machine": machine_info(), "args": vars(args), "words": WEDDING_WORDS,
                 "pair": [prefix + " weddings", prefix], "prompts": base_prompts}

    def generate(addition, c):
        # One seed per completion slot: the unsteered and every steered run draw the same random stream.
        return generate_with_addition(loaded, None, prompts, addition, c, seed=0, **sampling)

    def costs(interventions: dict, texts: list[str]) -> dict:
        found = side_effects_many(loaded, None, texts, interventions, max_length=64, batch_size=8)
        return {k: {"kl": v.kl, "delta_ce": v.delta_ce, "ce_base": v.ce_base} for k, v in found.items()}

    base_text = generate(None, 1.0)
    out["unsteered"] = {**topic_score(base_text), "samples": base_text[:4]}
    print(f"unsteered: {out['unsteered']['share_with_word']:.3f} of completions name a wedding word", flush=True)

    layers = ([int(v) for v in args.layers.split(",")] if args.layers else list(range(0, n_layers, args.layer_step)))
    coefficients = [float(x) for x in args.coefficients.split(",")]
    resid_norms = _median_norms(loaded, unrelated, layers)
    grid = []
    for layer in layers:
        addition = fit_activation_addition(loaded, None, prefix + " weddings", prefix, layer=layer)
        found = costs({c: (lambda c=c: addition.apply(loaded, c)) for c in coefficients}, unrelated)
        peak = float(addition.difference.norm(dim=-1).max())
        for c in coefficients:
            texts = generate(addition, c)
            row = {"layer": layer, "coefficient": c, **topic_score(texts), "unrelated": found[c],
                   "added_norm_over_residual": peak * c / resid_norms[layer], "sample": texts[0]}
            grid.append(row)
            print(f"layer {layer:2d} c={c:<4g} share {row['share_with_word']:.3f} count {row['mean_count']:.2f} "
                  f"ΔCE {found[c]['delta_ce']:+.3f} |c·diff|/|resid| {row['added_norm_over_residual']:.2f} "
                  f"[{time.perf_counter() - started:.0f} s]", flush=True)
    out["grid"] = grid
    within = [r for r in grid if r["unrelated"]["delta_ce"] <= args.ce_budget] or grid
    best = max(within, key=lambda r: (r["share_with_word"], r["mean_count"], -r["unrelated"]["delta_ce"]))
    out["best"] = {k: best[k] for k in ("layer", "coefficient", "share_with_word", "mean_count", "unrelated")}
    # Perplexity on wedding text at the chosen layer: the paper finds it falls while unrelated text is unharmed.
    addition = fit_activation_addition(loaded, None, prefix + " weddings", prefix, layer=best["layer"])
    wed = costs({c: (lambda c=c: addition.apply(loaded, c)) for c in coefficients}, wedding_texts)
    out["wedding_text_at_best_layer"] = {str(c): wed[c] for c in coefficients}
    print(f"best: layer {best['layer']} c={best['coefficient']:g} share {best['share_with_word']:.3f}; ΔCE on "
          "wedding text by coefficient: " + ", ".join(f"{c:g}: {wed[c]['delta_ce']:+.3f}" for c in coefficients),
          flush=True)

    # The protocol behind the audit's earlier verdict, scored with the same metric.
    vector = fit_steering(loaded, pairs=S.WEDDING_PAIRS, layer=9)
    baseline_rows = []
    for s in [float(x) for x in args.baseline_strengths.split(",") if x]:
        texts = generate_steered(loaded, prompts=prompts, vectors=vector, strength=s, seed=0,
                                 **{k: v for k, v in sampling.items()})
        found = costs({"x": lambda: vector.apply(loaded, s)}, unrelated)["x"]
        row = {"strength": s, **topic_score(texts), "unrelated": found, "sample": texts[0]}
        baseline_rows.append(row)
        print(f"mean-difference vector, block 9, strength {s:g}: share {row['share_with_word']:.3f}, "
              f"ΔCE {found['delta_ce']:+.3f} [{time.perf_counter() - started:.0f} s]", flush=True)
    out["mean_difference_all_positions"] = baseline_rows
    out["seconds"] = time.perf_counter() - started
    out["load_average_at_end"] = load_average()
    print(f"written {write_json('actadd-' + args.prefix + ('-layers' if args.layers else ''), out)}")
    return 0


def _median_norms(loaded, texts, layers) -> dict[int, float]:
    """Median residual norm before each block on ``texts``, past the first two tokens (prefix, sink)."""
    from almostlinear.core.collect import collect
    from almostlinear.core.sites import Site

    sites = [Site("resid_pre", layer) for layer in layers]
    acts = collect(loaded.model, loaded.tokenizer, texts, sites, positions="all", max_length=64)
    later = acts.position > 1
    return {s.layer: float(acts[s][later].norm(dim=-1).median()) for s in sites}


if __name__ == "__main__":
    raise SystemExit(main())
