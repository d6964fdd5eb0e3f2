"""Steering on SmolLM2-135M: steered against unsteered generation speed, and fit / generate times
against the reference libraries ``steering-vectors`` and ``repeng`` on the same contrast pairs.

Work: the project's 40 sentiment contrast pairs, read at the last token of ``resid_post.9`` (the
output of block 9, which is where both reference libraries hook a "layer 9" vector); greedy
generation of exactly ``--new-tokens`` tokens (``min_new_tokens`` = ``max_new_tokens``, so a
vector that makes the model stop early cannot look fast) for 8 neutral prompts in left-padded
batches of 4.

1. almostlinear, in this process, interleaved batch by batch: unsteered ``generate``; steered with
   position policy ``all``; steered with ``generated`` (the prompt lengths are handed to the hook).
   Target: steered tokens/s >= 97 % of unsteered.
2. The reference libraries need transformers 4.x, so they run in ``.venv-ref`` as a subprocess (the
   script below), on the same float32 weights (the cached safetensors folder), threads and pairs:
   fit with ``train_steering_vector`` (mean aggregator) and ``ControlVector.train`` (``pca_diff``,
   repeng's default), and their steered and unsteered generation, interleaved the same way.
   Directions are compared with almostlinear's (cosine) as a correctness check.

Seconds from different processes (and transformers versions) are compared as ratios of medians;
each library's steered/unsteered ratio comes from its own process.

    python benchmarks/bench_steering.py [--threads 1] [--repeats 3] [--new-tokens 32]
    python benchmarks/bench_steering.py --demo      # behaviour: dose-response, cost, composition, samples
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REF_PYTHON = HERE.parent / ".venv-ref" / "bin" / "python"

REFERENCE_SCRIPT = r'''
import json, os, sys, time
import numpy as np
if not hasattr(np, "float_"):
    np.float_ = np.float64  # repeng 0.5 still names this NumPy 1 alias
import torch
sys.path.insert(0, sys.argv[2])
from common import interleave, median

cfg = json.load(open(sys.argv[1]))
torch.set_num_threads(cfg["threads"])
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(cfg["folder"], dtype=torch.float32).eval()
try:
    tok = AutoTokenizer.from_pretrained(cfg["folder"])
except ValueError:  # a tokenizer folder written by transformers 5 names a class 4.x lacks
    from transformers import PreTrainedTokenizerFast
    special = json.load(open(os.path.join(cfg["folder"], "tokenizer_config.json")))
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(cfg["folder"], "tokenizer.json"),
                                  **{k: special[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                                     if special.get(k)})
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
pairs, layer, repeats = [tuple(p) for p in cfg["pairs"]], cfg["layer"], cfg["repeats"]
out = {"versions": {}}
import steering_vectors, repeng, transformers
from importlib import metadata
for d in ("steering-vectors", "repeng", "transformers", "torch"):
    out["versions"][d] = metadata.version(d)

from steering_vectors import train_steering_vector
from repeng import ControlModel, ControlVector, DatasetEntry

def fit_sv():
    return train_steering_vector(model, tok, pairs, layers=[layer], layer_type="decoder_block",
                                 read_token_index=-1, batch_size=cfg["batch_size"])

def fit_repeng(wrapped):
    return ControlVector.train(wrapped, tok, [DatasetEntry(p, n) for p, n in pairs], hidden_layers=[layer],
                               batch_size=cfg["batch_size"], method="pca_diff")

tok.padding_side = "right"
fit_times = {"steering_vectors": [], "repeng": []}
sv = fit_sv()  # warm-up
for _ in range(repeats):
    t = time.perf_counter(); sv = fit_sv(); fit_times["steering_vectors"].append(time.perf_counter() - t)
wrapped = ControlModel(model, [layer])
cv = fit_repeng(wrapped)
for _ in range(repeats):
    t = time.perf_counter(); cv = fit_repeng(wrapped); fit_times["repeng"].append(time.perf_counter() - t)
out["fit_s"] = {k: median(v) for k, v in fit_times.items()}
out["fit_all_s"] = fit_times
out["sv_vector"] = sv.layer_activations[layer].float().tolist()
out["repeng_vector"] = cv.directions[layer].tolist()

tok.padding_side = "left"
prompts, bs, n_new = cfg["prompts"], cfg["gen_batch"], cfg["new_tokens"]
batches = [prompts[i:i + bs] for i in range(0, len(prompts), bs)]
encoded = [tok(b, return_tensors="pt", padding=True, return_token_type_ids=False) for b in batches]
settings = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=tok.pad_token_id)
inner = wrapped.model  # ControlModel wraps the model; with no control set it adds nothing

def plain(u):
    wrapped.reset()
    return inner.generate(**encoded[u], **settings)

def steered_sv(u):
    wrapped.reset()
    with sv.apply(inner, multiplier=cfg["sv_multiplier"]):
        return inner.generate(**encoded[u], **settings)

def steered_repeng(u):
    wrapped.set_control(cv, cfg["repeng_coeff"])
    try:
        return inner.generate(**encoded[u], **settings)
    finally:
        wrapped.reset()

runs = interleave({"unsteered": plain, "steering_vectors": steered_sv, "repeng": steered_repeng},
                  len(batches), repeats=repeats, log=lambda m: print(m, file=sys.stderr))
out["generate"] = runs.summary()
out["generate_tokens_per_pass"] = n_new * len(prompts)
json.dump(out, open(sys.argv[3], "w"))
'''


def demo(args) -> int:
    """Sentiment and topic steering on SmolLM2-135M: dose-response (next-token log-odds and VADER on
    generated text), linearity, steerability, side effects, layer/strength choice under a KL budget,
    extraction methods at matched strength, composition, and samples."""
    import torch

    sys.path.insert(0, str(HERE))
    from common import machine_info, set_threads, write_json

    import almostlinear
    from almostlinear import data
    from almostlinear.data import sentiment as S
    from almostlinear.steering import (GeneratedScore, TokenPreference, additivity, choose_layer_and_strength,
                                       cross_effects, dose_response, fit_steering, generate_steered)

    set_threads(args.threads)
    info = machine_info()
    t0 = time.perf_counter()
    loaded = almostlinear.load("smollm2-135m")
    neutral = data.neutral_texts(loaded.model, loaded.tokenizer, 16, max_new_tokens=64, cache_key=loaded.fingerprint)
    prompts = list(S.NEUTRAL_PROMPTS)
    layer = args.layer
    out: dict = {"layer": layer, "neutral_texts": len(neutral)}
    sentiment = TokenPreference(S.POSITIVE_WORDS, S.NEGATIVE_WORDS)
    topic = TokenPreference(S.WEDDING_WORDS, S.PLAIN_WORDS)
    vec = fit_steering(loaded, pairs=S.SENTIMENT_PAIRS, layer=layer)
    wed = fit_steering(loaded, pairs=S.WEDDING_PAIRS, layer=layer)
    out["norms"] = vec.norms

    def summary(dose, sign=1):
        return {**dose.as_dict(), "anti_steerable": dose.anti_steerable(sign),
                "linearity_small": dose.linearity(within=0.1), "n_prompts": int(dose.scores.shape[1])}

    strengths = [-0.3, -0.2, -0.1, -0.05, 0.05, 0.1, 0.2, 0.3]
    print("sentiment dose-response (log-odds)", file=sys.stderr)
    out["sentiment_logodds"] = summary(dose_response(loaded, None, vec, prompts, strengths, sentiment,
                                                     neutral=neutral, max_length=96))
    print("sentiment dose-response (VADER on generated text)", file=sys.stderr)
    vader = GeneratedScore(S.vader_scores, max_new_tokens=24, keep_texts=True)
    dose_v = dose_response(loaded, None, vec, prompts[:12], [-0.3, -0.2, -0.1, 0.1, 0.2, 0.3], vader)
    out["sentiment_vader"] = summary(dose_v)
    out["sentiment_vader"]["mean_score"] = dose_v.scores.mean(1).tolist()
    out["sentiment_vader"]["share_positive"] = (dose_v.scores > 0.05).double().mean(1).tolist()
    print("topic dose-response", file=sys.stderr)
    out["weddings_logodds"] = summary(dose_response(loaded, None, wed, prompts, strengths, topic, neutral=neutral,
                                                    max_length=96))
    print("methods at matched strength", file=sys.stderr)
    methods = {}
    base = sentiment(loaded.model, loaded.tokenizer, prompts)
    for method in ("mean_diff", "pca", "pca_uncentred", "probe"):
        v = vec if method == "mean_diff" else fit_steering(loaded, pairs=S.SENTIMENT_PAIRS, layer=layer, method=method)
        with v.apply(loaded, 0.1):
            effect = float((sentiment(loaded.model, loaded.tokenizer, prompts) - base).mean())
        methods[method] = {"cosine_with_mean_diff": v.cosine(vec), "effect_at_0.1": effect}
    out["methods"] = methods
    print("composition", file=sys.stderr)
    cross = cross_effects(loaded, None, {"sentiment": vec, "weddings": wed}, {"sentiment": sentiment, "weddings": topic},
                          prompts, strength=0.1)
    out["composition"] = {"cosine": float(cross.cosine[0, 1]), "cross_effects": cross.matrix.tolist(),
                          "rows": cross.vectors, "columns": cross.behaviours}
    for name, beh in (("sentiment", sentiment), ("weddings", topic)):
        add = additivity(loaded, None, vec, wed, beh, prompts, (0.1, 0.1))
        out["composition"][f"additivity_{name}"] = {"first": add.effect_first, "second": add.effect_second,
                                                    "joint": add.effect_joint, "sum": add.sum_of_effects,
                                                    "ratio": add.ratio, "r2": add.r2}
    print("layer and strength under a KL budget", file=sys.stderr)
    choice = choose_layer_and_strength(loaded, None, S.SENTIMENT_PAIRS, prompts, sentiment, neutral[:8],
                                       layers=[3, 6, 9, 12, 15, 18, 21], strengths=[0.05, 0.1, 0.2, 0.3],
                                       kl_budget=0.1, max_length=64)
    out["choice"] = {"layer": choice.layer, "strength": choice.strength, "test_effect": choice.test_effect,
                     "test_kl": choice.test_kl, "grid": choice.grid, "validation_prompts": choice.validation_prompts,
                     "test_prompts": choice.test_prompts}
    samples = []
    for p in prompts[:3]:
        row = {"prompt": p}
        for s in (0.0, 0.15, -0.15):
            row[f"{s:+g}"] = generate_steered(loaded, prompts=[p], vectors=vec, strength=s, max_new_tokens=24)[0]
        row["weddings +0.15"] = generate_steered(loaded, prompts=[p], vectors=wed, strength=0.15, max_new_tokens=24)[0]
        samples.append(row)
    out["samples"] = samples
    out["elapsed_s"] = time.perf_counter() - t0
    path = write_json("steering-demo", {"machine": info, "settings": vars(args), "demo": out})
    print(json.dumps({k: v for k, v in out.items() if k != "choice"} | {"choice": {k: v for k, v in out["choice"].items()
                                                                                  if k != "grid"}}, indent=1))
    print(f"wrote {path}")
    return 0


def hook_cost_us(model, vector, prompt_mask, new_tokens: int, calls: int = 2000) -> float:
    """Microseconds a decode step spends in the steering hook: a forward hook on one block whose
    edit is the library's own (position mask from the attention mask, then the add), timed on its
    own with a one-token activation, as ``generate`` with a KV cache calls it."""
    import torch

    from almostlinear.core.hooks import position_mask

    d = vector.d
    hidden = torch.randn(prompt_mask.shape[0], 1, d)
    mask = torch.cat([prompt_mask, torch.ones(prompt_mask.shape[0], new_tokens // 2, dtype=prompt_mask.dtype)], 1)
    value = vector.added(0.1)

    def step():
        chosen = position_mask("all", mask, tuple(hidden.shape[:2]), hidden.device)
        return hidden + chosen[..., None].to(hidden.dtype) * value

    for _ in range(100):
        step()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--strength", type=float, default=0.1, help="almostlinear strength (x median residual norm)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--demo", action="store_true", help="run the behaviour demonstration instead of timings")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.demo:
        return demo(args)

    import torch

    sys.path.insert(0, str(HERE))
    from common import interleave, machine_info, median, set_threads, write_json

    import almostlinear
    from almostlinear.data.sentiment import NEUTRAL_PROMPTS, SENTIMENT_PAIRS
    from almostlinear.steering import fit_steering, generate_steered

    set_threads(args.threads)
    info = machine_info()
    loaded = almostlinear.load("smollm2-135m")
    _ = loaded.fingerprint
    pairs = list(SENTIMENT_PAIRS)
    prompts = list(NEUTRAL_PROMPTS[:8])

    # fit: mean difference (default) and centred PCA, one layer, after a warm-up
    fit_times: dict[str, list[float]] = {"mean_diff": [], "pca": []}
    vectors = {}
    for method in fit_times:
        vectors[method] = fit_steering(loaded, pairs=pairs, layer=args.layer, method=method)
        for _ in range(args.repeats):
            start = time.perf_counter()
            vectors[method] = fit_steering(loaded, pairs=pairs, layer=args.layer, method=method)
            fit_times[method].append(time.perf_counter() - start)
    vector = vectors["mean_diff"]

    batches = [prompts[i:i + 4] for i in range(0, len(prompts), 4)]
    model, tok = loaded.model, loaded.tokenizer
    from almostlinear.core.collect import model_device
    from almostlinear.data._batching import left_padded

    encoded = []
    with left_padded(model, tok):
        for batch in batches:
            encoded.append(tok(batch, return_tensors="pt", padding=True).to(model_device(model)))
    settings = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                    pad_token_id=tok.pad_token_id or tok.eos_token_id)

    def plain(u):
        with torch.inference_mode():
            return model.generate(**encoded[u], **settings)

    def steered(policy):
        def run(u):
            lengths = encoded[u]["attention_mask"].sum(-1)
            with torch.inference_mode(), vector.apply(model, args.strength, positions=policy, prompt_lengths=lengths):
                return model.generate(**encoded[u], **settings)
        return run

    cpu: dict[str, list[float]] = {}

    def cpu_timed(name, fn):
        # process CPU time as well as wall time: steadier when other processes share the cores
        def run(u):
            start = time.process_time()
            result = fn(u)
            cpu.setdefault(name, []).append(time.process_time() - start)
            return result
        return run

    variants = {"unsteered": plain, "steered_all": steered("all"), "steered_generated": steered("generated")}
    runs = interleave({k: cpu_timed(k, f) for k, f in variants.items()}, len(batches), repeats=args.repeats,
                      log=lambda m: print(m, file=sys.stderr))
    warm = len(batches[:1])  # interleave's warm-up calls come first

    def cpu_total(name):
        timed = cpu[name][warm:]
        return sum(timed) / max(1, len(timed) // len(batches))
    tokens = args.new_tokens * len(prompts)
    hook_us = hook_cost_us(model, vector, encoded[0]["attention_mask"], args.new_tokens)
    ours = {
        "hook_us_per_decode_step": hook_us,
        "hook_share_of_decode_step": hook_us * 1e-6 * args.new_tokens * len(batches)
        / max(1e-9, cpu_total("unsteered")),
        "fit_s": {k: median(v) for k, v in fit_times.items()},
        "fit_all_s": fit_times,
        "generate": runs.summary(),
        "tokens_per_pass": tokens,
        "speed_ratio_all": runs.ratio("unsteered", "steered_all"),
        "speed_ratio_generated": runs.ratio("unsteered", "steered_generated"),
        "paired_speed_ratio_all": runs.paired_ratio("unsteered", "steered_all"),
        "paired_speed_ratio_generated": runs.paired_ratio("unsteered", "steered_generated"),
        "cpu_speed_ratio_all": cpu_total("unsteered") / cpu_total("steered_all"),
        "cpu_speed_ratio_generated": cpu_total("unsteered") / cpu_total("steered_generated"),
        "cpu_s_per_pass": {k: cpu_total(k) for k in variants},
        "tokens_per_s_unsteered": tokens / runs.median_total("unsteered"),
        "tokens_per_s_steered_all": tokens / runs.median_total("steered_all"),
    }
    sample = {"prompt": prompts[0],
              "unsteered": generate_steered(loaded, prompts=prompts[:1], vectors=None, max_new_tokens=24)[0],
              "steered_+0.15": generate_steered(loaded, prompts=prompts[:1], vectors=vector, strength=0.15,
                                                max_new_tokens=24)[0],
              "steered_-0.15": generate_steered(loaded, prompts=prompts[:1], vectors=vector, strength=-0.15,
                                                max_new_tokens=24)[0]}
    payload = {"machine": info, "settings": vars(args), "almostlinear": ours, "sample": sample}

    if not args.skip_reference and REF_PYTHON.exists():
        folder = loaded.path if hasattr(loaded, "path") else None
        raw = vector.added(args.strength)  # the same added vector for every library
        cfg = {"folder": str(folder), "pairs": pairs, "layer": args.layer, "repeats": args.repeats,
               "threads": args.threads, "batch_size": 8, "prompts": prompts, "gen_batch": 4,
               "new_tokens": args.new_tokens, "sv_multiplier": float(raw.norm() / vector.norms["diff_norm"]),
               "repeng_coeff": float(raw.norm())}
        with tempfile.TemporaryDirectory() as tmp:
            cfg_path, script, result = Path(tmp, "cfg.json"), Path(tmp, "ref.py"), Path(tmp, "out.json")
            cfg_path.write_text(json.dumps(cfg))
            script.write_text(REFERENCE_SCRIPT)
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
            proc = subprocess.run([str(REF_PYTHON), str(script), str(cfg_path), str(HERE), str(result)], env=env,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                payload["reference_error"] = proc.stderr[-3000:]
            else:
                ref = json.loads(result.read_text())
                sv_vec = torch.tensor(ref.pop("sv_vector"), dtype=torch.float64)
                rp_vec = torch.tensor(ref.pop("repeng_vector"), dtype=torch.float64)

                def cos(a, b):
                    return float(a @ b / (a.norm() * b.norm()))

                ref["cosine_sv_vs_mean_diff"] = cos(sv_vec, vector.direction.double())
                ref["cosine_repeng_vs_pca"] = cos(rp_vec, vectors["pca"].direction.double())
                ref["sv_norm_vs_diff_norm"] = float(sv_vec.norm()) / vector.norms["diff_norm"]
                gen = ref["generate"]
                ref["speed_ratio_sv"] = median(gen["unsteered"]["totals_s"]) / median(gen["steering_vectors"]["totals_s"])
                ref["speed_ratio_repeng"] = median(gen["unsteered"]["totals_s"]) / median(gen["repeng"]["totals_s"])
                ref["fit_ratio_sv_over_ours"] = ref["fit_s"]["steering_vectors"] / ours["fit_s"]["mean_diff"]
                ref["fit_ratio_repeng_over_ours_pca"] = ref["fit_s"]["repeng"] / ours["fit_s"]["pca"]
                ref["steered_generate_ratio_sv_over_ours"] = (
                    median(gen["steering_vectors"]["totals_s"]) / runs.median_total("steered_all"))
                ref["steered_generate_ratio_repeng_over_ours"] = (
                    median(gen["repeng"]["totals_s"]) / runs.median_total("steered_all"))
                ref["unsteered_generate_ratio_ref_venv_over_ours"] = (
                    median(gen["unsteered"]["totals_s"]) / runs.median_total("unsteered"))
                payload["reference"] = ref
    path = write_json("steering", payload)
    summary = {"almostlinear": {k: v for k, v in ours.items() if k not in ("generate", "fit_all_s")},
               "reference": {k: v for k, v in payload.get("reference", {}).items()
                             if k not in ("generate", "fit_all_s")},
               "sample": sample}
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
