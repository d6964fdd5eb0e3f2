"""LEACE fit time: almostlinear's streaming fitter vs the ``concept-erasure`` package, same data.

Work: stream ``[n, d]`` float32 activations with binary labels through each fitter in batches of
512 rows, then compute the eraser (covariance eigendecomposition and the SVD of the whitened
cross-covariance). Variants, run interleaved in one process with the same thread count:

* ``almostlinear``: the defaults (float64 products and sums);
* ``almostlinear float32``: each batch's centred products in float32 (the activations' precision),
  sums in float64;
* ``concept-erasure float64``: concept-erasure with float64 statistics and the same settings (no
  shrinkage, no trace constraint): the same eraser, checked before timing;
* ``concept-erasure defaults``: float32 statistics, shrinkage and the trace constraint.

The target is ``almostlinear`` no slower than ``concept-erasure float64`` (the same maths at the
same precision); the other pairs are reported beside it.

Cases:

* ``smollm2``: the residual stream after block 15 of SmolLM2-135M (d = 576) at every token of
  true/false city statements, labelled by the statement's truth (collected once, cached);
* ``synthetic``: Gaussian data of width ``--width`` (default 1024, a 0.3-0.5B model's width) with a
  shifted class mean, to see the scaling.

With ``--levers`` it instead measures what the write levers do and cost on SmolLM2: held-out truth
probe accuracy after LEACE / orthogonal erasure at ``resid_post.15`` and after ablating the
mean-difference truth direction at every layer, KL and cross-entropy change on neutral text, and
the largest logit difference between baked and hooked ablation.

    python benchmarks/bench_erasure.py --levers [--statements 160] [--neutral 8]
    python benchmarks/bench_erasure.py [--statements 600] [--synthetic 20000] [--width 1024] [--threads 1]
                                       [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleave, machine_info, set_threads, write_json  # noqa: E402

BATCH = 512


def smollm2_activations(n: int, log) -> tuple[torch.Tensor, torch.Tensor]:
    """``resid_post.15`` at every token of ``n`` statements and each token's statement label (cached)."""
    import almostlinear
    from almostlinear import data
    from almostlinear.core.collect import collect
    from almostlinear.core.paths import cache_dir

    key = hashlib.sha256(f"smollm2-135m:erasure:{n}:v1".encode()).hexdigest()[:12]
    path = cache_dir("bench") / f"erasure-acts-{key}.pt"
    if path.is_file():
        payload = torch.load(path)
        return payload["x"], payload["z"]
    loaded = almostlinear.load("smollm2-135m")
    statements = data.city_statements(n, seed=0)
    log(f"collecting resid_post.15 over {n} statements (once; cached in {path})")
    acts = collect(loaded.model, loaded.tokenizer, [s.text for s in statements], ["resid_post.15"],
                   positions="all", batch_size=32)
    labels = torch.tensor([int(s.label) for s in statements])
    x, z = acts["resid_post.15"].float(), labels[acts.text_index]
    torch.save({"x": x, "z": z}, path)
    return x, z


def ours(x: torch.Tensor, z: torch.Tensor, batch_dtype=torch.float64):
    from almostlinear.erasure import LeaceFitter

    fitter = LeaceFitter(x.shape[1], batch_dtype=batch_dtype)
    for start in range(0, len(x), BATCH):
        fitter.update(x[start:start + BATCH], z[start:start + BATCH])
    return fitter.factors()


def reference(x: torch.Tensor, z: torch.Tensor, **settings):
    from concept_erasure import LeaceFitter

    options = {"dtype": torch.float64, "shrinkage": False, "constrain_cov_trace": False, **settings}
    fitter = LeaceFitter(x.shape[1], 1, **options)
    for start in range(0, len(x), BATCH):
        fitter.update(x[start:start + BATCH], z[start:start + BATCH])
    return fitter.eraser


def agreement(x: torch.Tensor, z: torch.Tensor, batch_dtype=torch.float64) -> float:
    """Largest absolute difference between the two erasers' outputs on the data, relative to its scale."""
    from almostlinear.erasure import erase

    left, right, mean = ours(x, z, batch_dtype)
    mine = erase(x.double(), left, right, mean)
    theirs = reference(x, z)(x.double())
    return float((mine - theirs).abs().max() / x.double().abs().max())


def run_case(name: str, x: torch.Tensor, z: torch.Tensor, repeats: int, log) -> dict:
    gap = agreement(x, z)
    gap_float32 = agreement(x, z, torch.float32)
    log(f"[{name}] n={len(x)} d={x.shape[1]}: erasers agree with concept-erasure (float64) to {gap:.1e} "
        f"(relative; {gap_float32:.1e} with float32 batch products)")
    timed = interleave({"almostlinear": lambda _: ours(x, z),
                        "almostlinear float32": lambda _: ours(x, z, torch.float32),
                        "concept-erasure": lambda _: reference(x, z),
                        "concept-erasure defaults": lambda _: reference(x, z, dtype=torch.float32, shrinkage=True,
                                                                         constrain_cov_trace=True)},
                       1, repeats=repeats, log=log)
    ratio = timed.ratio("concept-erasure", "almostlinear")
    ratio32 = timed.ratio("concept-erasure defaults", "almostlinear float32")
    ratio_defaults = timed.ratio("concept-erasure defaults", "almostlinear")
    log(f"[{name}] almostlinear {timed.median_total('almostlinear'):.3f}s, almostlinear float32 "
        f"{timed.median_total('almostlinear float32'):.3f}s, concept-erasure float64 "
        f"{timed.median_total('concept-erasure'):.3f}s, concept-erasure defaults "
        f"{timed.median_total('concept-erasure defaults'):.3f}s; speed-ups: {ratio:.2f}x (target, both float64), "
        f"{ratio32:.2f}x (both float32 products), {ratio_defaults:.2f}x (defaults)")
    return {"n": len(x), "d": int(x.shape[1]), "relative_max_difference": gap,
            "relative_max_difference_float32_products": gap_float32, "timing": timed.summary(),
            "speedup_reference_float64_over_ours": ratio, "speedup_reference_defaults_over_ours_float32": ratio32,
            "speedup_reference_defaults_over_ours": ratio_defaults}


def measure_levers(n_statements: int, n_neutral: int, log) -> dict:
    """Guardedness and cost of erasure and ablation on SmolLM2 (see the module docstring)."""
    import almostlinear
    from almostlinear import data
    from almostlinear.core.collect import collect
    from almostlinear.erasure import LeaceEraser
    from almostlinear.erasure.evaluate import probe_accuracy
    from almostlinear.steering.ablation import ablate, baked_ablation
    from almostlinear.steering.cost import side_effects_many

    lm = almostlinear.load("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    train, test = data.split(data.city_statements(n_statements, seed=0), 0.5, seed=0)
    texts = [s.text for s in train + test]
    y, n = torch.tensor([int(s.label) for s in train + test]), len(train)
    acts = collect(model, tok, texts, ["resid_pre.15", "resid_post.15"], positions="last")
    pre, post = acts["resid_pre.15"].double(), acts["resid_post.15"].double()
    mean_diff = pre[:n][y[:n] == 1].mean(0) - pre[:n][y[:n] == 0].mean(0)
    random_dir = torch.randn(pre.shape[1], generator=torch.Generator().manual_seed(0)).double()
    out = {"n_train": n, "n_test": len(test), "probe_before": probe_accuracy(post[:n], y[:n], post[n:], y[n:])}
    with ablate(lm, mean_diff):
        ablated = collect(model, tok, texts, ["resid_post.15"], positions="last")["resid_post.15"].double()
    out["probe_after_mean_diff_ablation_all_layers"] = probe_accuracy(ablated[:n], y[:n], ablated[n:], y[n:])
    erasers = {"leace_exact": LeaceEraser.fit(post[:n], y[:n], site="resid_post.15"),
               "leace_shrunk": LeaceEraser.fit(post[:n], y[:n], site="resid_post.15", shrinkage=True),
               "orth": LeaceEraser.fit(post[:n], y[:n], site="resid_post.15", method="orth")}
    for name, eraser in erasers.items():
        erased = eraser(post.float()).double()
        out[f"probe_after_{name}"] = probe_accuracy(erased[:n], y[:n], erased[n:], y[n:])
    log(f"probe accuracies: {out}")
    neutral = data.neutral_texts(model, tok, 48, max_new_tokens=80, cache_key=lm.fingerprint)[:n_neutral]
    levers = {"ablate_mean_diff_all_layers": lambda: ablate(lm, mean_diff),
              "ablate_random_all_layers": lambda: ablate(lm, random_dir)}
    levers.update({f"erase_{k}": (lambda e=e: e.apply(lm)) for k, e in erasers.items()})
    costs = side_effects_many(lm, None, neutral, levers, max_length=64)
    out["costs"] = {k: v.as_dict() for k, v in costs.items()}
    for name, cost in costs.items():
        log(f"{name}: {cost}")
    tok.padding_side = "right"
    inputs = tok(neutral[:4], return_tensors="pt", padding=True, truncation=True, max_length=64)
    mask = inputs["attention_mask"].bool()
    with torch.no_grad():
        with ablate(lm, mean_diff):
            hooked = model(**inputs).logits
        with baked_ablation(lm, mean_diff):
            baked = model(**inputs).logits
    out["baked_vs_hooked_max_abs_logit_diff"] = float((baked - hooked)[mask].abs().max())
    out["logit_max_abs"] = float(hooked[mask].abs().max())
    log(f"baked vs hooked ablation: max |logit difference| {out['baked_vs_hooked_max_abs_logit_diff']:.2e} "
        f"(logits up to {out['logit_max_abs']:.1f})")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--statements", type=int, default=600)
    parser.add_argument("--synthetic", type=int, default=20_000, help="rows of the synthetic case (0: skip)")
    parser.add_argument("--width", type=int, default=1024, help="width d of the synthetic case")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--levers", action="store_true", help="measure guardedness and cost instead of fit time")
    parser.add_argument("--neutral", type=int, default=8, help="neutral texts for the cost (with --levers)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    log = print
    info = machine_info()
    began = time.perf_counter()
    if args.levers:
        levers = measure_levers(args.statements, args.neutral, log)
        path = write_json("erasure-levers", {"machine": info, "args": vars(args), "levers": levers,
                                             "elapsed_s": time.perf_counter() - began})
        log(f"wrote {path}")
        return 0
    x, z = smollm2_activations(args.statements, log)
    cases = {"smollm2": run_case("smollm2", x, z, args.repeats, log)}
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        zs = torch.randint(0, 2, (args.synthetic,), generator=g)
        shift = torch.randn(args.width, generator=g) * 0.3
        xs = torch.randn(args.synthetic, args.width, generator=g) + zs[:, None] * shift
        cases["synthetic"] = run_case(f"synthetic-{args.width}", xs, zs, args.repeats, log)
    path = write_json("erasure", {"machine": info, "args": vars(args), "cases": cases,
                                  "elapsed_s": time.perf_counter() - began})
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
