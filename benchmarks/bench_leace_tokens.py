"""LEACE fitted on which tokens (arXiv 2306.03819): final token, every token, or one eraser per position.

The audit fits its eraser on the final token of true/false city statements ("The city of X is in
Y.") and applies it at every token of neutral text, where it costs about +2.3 nats per token. The
LEACE paper's concept scrubbing fits on every token position that carries the concept. This script
reads ``resid_post`` of the middle block at every token of the statements once, then compares:

* ``final``: fitted on the final token (today), shrunk covariance when n < d (as the audit) and
  unshrunk; applied at every token;
* ``all_tokens``: fitted on every token, each labelled with its statement's truth; applied at every
  token (also without the first token, an attention sink whose norm dwarfs the others, and with
  the shrunk covariance);
* ``per_position``: one eraser per position counted from the end (last, second-to-last, ...), the
  positions where the statement's truth can be read, each fitted on its own position and applied
  there only; ``final_last_only`` is the final-token eraser applied at the last token only;
* ``orth``: the orthogonal projection along the same concept (final token), as a reference.

For each: held-out logistic-probe accuracy (statements split by city, a fresh probe trained after
erasure) at the final token, over all tokens, and at each of the last positions; KL and ΔCE with
the eraser hooked in on model-generated neutral text and on the held-out statements themselves.

    python benchmarks/bench_leace_tokens.py --threads 1
    python benchmarks/bench_leace_tokens.py --threads 1 --known 400    # the audit's statements (known facts)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--statements", type=int, default=240)
    parser.add_argument("--neutral", type=int, default=8)
    parser.add_argument("--positions", type=int, default=4, help="last positions with their own eraser")
    parser.add_argument("--layer", type=int, default=None, help="default: the middle block")
    parser.add_argument("--known", type=int, default=0,
                        help="draw the statements from the city facts among the first N that the model "
                             "completes correctly, as the audit does (0: all facts)")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(HERE))
    from common import load_average, machine_info, set_threads, write_json

    import almostlinear
    from almostlinear import data
    from almostlinear.core.collect import collect
    from almostlinear.core.sites import Site
    from almostlinear.erasure import LeaceEraser
    from almostlinear.erasure.evaluate import probe_accuracy
    from almostlinear.steering.cost import side_effects_many

    set_threads(args.threads)
    started = time.perf_counter()
    loaded = almostlinear.load()
    n_layers = loaded.structure.n_layers
    layer = args.layer if args.layer is not None else round(0.5 * (n_layers - 1))
    site = Site("resid_post", layer)
    facts = None
    if args.known:
        facts = data.known_facts(loaded.model, loaded.tokenizer, data.city_country_facts()[: args.known], top_k=1)
    statements = data.city_statements(min(args.statements, 2 * len(facts) if facts else args.statements),
                                      facts=facts)
    texts = [s.text for s in statements]
    labels = torch.tensor([int(s.label) for s in statements])
    train, test = data.split(list(range(len(texts))), 0.5, seed=0, key=lambda i: statements[i].subject)
    is_train = torch.zeros(len(texts), dtype=torch.bool)
    is_train[torch.tensor(train)] = True

    acts = collect(loaded.model, loaded.tokenizer, texts, [site], positions="all", max_length=32)
    x, text_index, position = acts[site].double(), acts.text_index, acts.position
    length = torch.zeros(len(texts), dtype=torch.long).scatter_reduce(0, text_index, position + 1, reduce="amax")
    from_end = position - length[text_index]  # -1 = the final token
    y = labels[text_index]
    row_train = is_train[text_index]
    print(f"{len(texts)} statements, {x.shape[0]} tokens at {site} [{time.perf_counter() - started:.0f} s]", flush=True)

    def rows(where: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        return (where & part).nonzero()[:, 0]

    everywhere = torch.ones_like(row_train)
    final = from_end == -1
    not_first = position > 0
    k = args.positions
    fit_rows = {
        "final": rows(final, row_train),
        "all_tokens": rows(everywhere, row_train),
        "all_tokens_no_first": rows(not_first, row_train),
    }
    erasers = {
        "final_shrunk": LeaceEraser.fit(x[fit_rows["final"]], y[fit_rows["final"]], site=site, shrinkage=True),
        "final": LeaceEraser.fit(x[fit_rows["final"]], y[fit_rows["final"]], site=site),
        "all_tokens": LeaceEraser.fit(x[fit_rows["all_tokens"]], y[fit_rows["all_tokens"]], site=site),
        "all_tokens_no_first": LeaceEraser.fit(x[fit_rows["all_tokens_no_first"]],
                                               y[fit_rows["all_tokens_no_first"]], site=site),
        "all_tokens_shrunk": LeaceEraser.fit(x[fit_rows["all_tokens"]], y[fit_rows["all_tokens"]], site=site,
                                             shrinkage=True),
        "orth": LeaceEraser.fit(x[fit_rows["final"]], y[fit_rows["final"]], site=site, method="orth"),
    }
    per_position = {}
    for j in range(1, k + 1):
        chosen = rows(from_end == -j, row_train)
        per_position[j] = LeaceEraser.fit(x[chosen], y[chosen], site=site, shrinkage=len(chosen) < x.shape[1])

    # Erased activations per choice: where an eraser does not act, the activation is left as it is.
    def erased(choice: str) -> torch.Tensor:
        if choice == "none":
            return x
        if choice == "per_position":
            out = x.clone()
            for j, eraser in per_position.items():
                at = from_end == -j
                out[at] = eraser(x[at]).double()
            return out
        if choice == "final_last_only":
            out = x.clone()
            out[final] = erasers["final"](x[final]).double()
            return out
        return erasers[choice](x).double()

    def accuracy(z: torch.Tensor, where: torch.Tensor) -> float:
        tr, te = rows(where, row_train), rows(where, ~row_train)
        return probe_accuracy(z[tr], y[tr], z[te], y[te])

    choices = ["none", "final_shrunk", "final", "final_last_only", "all_tokens", "all_tokens_no_first",
               "all_tokens_shrunk", "per_position", "orth"]
    results: dict = {}
    for choice in choices:
        z = erased(choice)
        row = {"final_token": accuracy(z, final), "all_tokens": accuracy(z, everywhere),
               "by_position": {str(-j): accuracy(z, from_end == -j) for j in range(1, k + 1)}}
        results[choice] = {"probe": row}
        print(f"{choice:20s} probe: final {row['final_token']:.3f}, all tokens {row['all_tokens']:.3f}, "
              f"last positions {[round(v, 3) for v in row['by_position'].values()]} "
              f"[{time.perf_counter() - started:.0f} s]", flush=True)
    test_share = float(labels[~is_train].double().mean())

    def hooked(choice: str):
        if choice == "per_position":
            @contextlib.contextmanager
            def each():
                with contextlib.ExitStack() as stack:
                    for j, eraser in per_position.items():
                        stack.enter_context(eraser.apply(loaded, positions=[-j]))
                    yield
            return each
        if choice == "final_last_only":
            return lambda: erasers["final"].apply(loaded, positions=[-1])
        return lambda: erasers[choice].apply(loaded)

    neutral = data.neutral_texts(loaded.model, loaded.tokenizer, args.neutral, max_new_tokens=64,
                                 cache_key=loaded.fingerprint)
    held_out = [texts[i] for i in test]
    interventions = {c: hooked(c) for c in choices if c != "none"}
    for name, corpus in (("neutral", neutral), ("statements", held_out)):
        found = side_effects_many(loaded, None, corpus, interventions, max_length=64, batch_size=8)
        for choice, cost in found.items():
            results[choice][name] = {"kl": cost.kl, "delta_ce": cost.delta_ce, "ce_base": cost.ce_base,
                                     "tokens": cost.n_tokens}
            print(f"{choice:20s} on {name}: KL {cost.kl:.3f}, ΔCE {cost.delta_ce:+.3f} "
                  f"[{time.perf_counter() - started:.0f} s]", flush=True)
    out = {"machine": machine_info(), "args": vars(args), "layer": layer, "tokens": int(x.shape[0]),
           "fit_rows": {k: int(v.numel()) for k, v in fit_rows.items()},
           "chance": max(test_share, 1 - test_share), "results": results,
           "ranks": {k: list(v.ranks) for k, v in erasers.items()},
           "seconds": time.perf_counter() - started, "load_average_at_end": load_average()}
    print(f"written {write_json('leace-tokens' + ('-known' if args.known else ''), out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
