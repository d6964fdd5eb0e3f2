"""Cost of reading activations with almostlinear, against a bare forward pass and nnsight.

    python benchmarks/bench_collect.py [--prompts 64] [--tokens 64] [--batch-size 8] [--repeats 3]
                                       [--device cpu|cuda] [--random-weights] [--threads N]

Variants, all run interleaved batch by batch in one process (see ``common.interleave``):

  bare_hidden   (a)  ``model(**batch, output_hidden_states=True)`` under ``torch.inference_mode``
  bare_logits   (a') ``model(**batch)``: the plain forward, logits only
  bare_body_hidden (a0) ``model.base_model(**batch, output_hidden_states=True)``: the same without
                     the unembedding (the final norm is still applied), a like-for-like baseline for (b)
  al_all        (b)  ``almostlinear.collect`` of ``resid_pre.0`` + ``resid_post.0..29`` at every real
                     token. Like every ``collect`` without ``logits=True`` it stops the forward pass
                     after the deepest site, so it skips the final norm and the unembedding.
  al_record     (b2) diagnostic: ``almostlinear.record`` of the same 31 sites around a full forward
                     (no early stop, logits computed): the pure cost of the hooks, apples to apples
                     with (a)
  nnsight       (c)  ``LanguageModel.trace`` saving ``model.layers[i].output`` for all 30 layers
  al_early      (d)  ``almostlinear.collect`` of ``resid_post.0..15``: stops after block 15

Fairness: every variant gets the same 8 texts per unit and tokenizes them itself, the same way
(right padding, truncation at ``--tokens``), inside the timed region: ``collect`` tokenizes per
batch internally, so the baselines do too. (Tokenization of 8 x 64 tokens costs about a
millisecond; it is timed separately and printed.) ``collect`` is called once per batch of 8 with
the model's ``Structure`` passed in, so the interleaving can alternate variants batch by batch;
a single ``collect`` over all 64 texts runs the very same loop. The baselines return padded
``[batch, seq, d]`` tensors; almostlinear returns the real tokens only (``[n_tokens, d]``): the cost
of that extraction done by hand on HF's hidden states is also timed and printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SENTENCES = (
    "The old bridge across the river was built from grey stone in the spring of that year.",
    "Most people who keep bees will tell you that the hardest part is the first winter.",
    "A good loaf of bread needs flour, water, salt, yeast and a great deal of patience.",
    "When the train finally arrived, the platform was crowded with tired travellers.",
    "Under a microscope, a single drop of pond water turns out to be full of life.",
    "The committee met on Tuesday to discuss the budget for the new public library.",
    "My grandfather used to say that a tidy workshop is the sign of a careful mind.",
    "Rainfall in the region has been lower than usual for the third year in a row.",
    "Learning to play the violin takes years of practice and a very forgiving family.",
    "In the early morning, the harbour is quiet except for the calls of the gulls.",
    "The recipe calls for two cups of rice, one onion and a handful of fresh herbs.",
    "Winter in the mountains brings deep snow, short days and very clear starry nights.",
    "After the storm passed, the neighbours gathered to clear the fallen branches.",
    "A simple way to fix a squeaky door is to put a little oil on each of its hinges.",
    "The first thing you notice about the town is the smell of the sea in the air.",
    "Children at the school planted a small garden of beans, carrots and sunflowers.",
)

LLAMA_135M = dict(  # SmolLM2-135M, for --random-weights when the converted cache is absent
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0,
    rms_norm_eps=1e-5, max_position_embeddings=8192, hidden_act="silu", bos_token_id=0,
    eos_token_id=0, pad_token_id=None,
)


class IdTokenizer:
    """A stand-in tokenizer for random weights: a text is its token ids written as decimals."""

    pad_token = eos_token = "<pad>"
    unk_token = None
    pad_token_id = 0
    padding_side = "right"

    def __call__(self, texts, return_tensors="pt", padding=True, truncation=True, max_length=None):
        import torch

        rows = [[int(t) for t in text.split()][: max_length if truncation else None] for text in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            sl = slice(0, len(row)) if self.padding_side == "right" else slice(width - len(row), width)
            ids[i, sl] = torch.tensor(row)
            mask[i, sl] = 1
        return {"input_ids": ids, "attention_mask": mask}


def make_texts(tokenizer, n: int, tokens: int, random_ids: bool, vocab: int) -> list[str]:
    """``n`` deterministic texts of ``tokens - (7 i mod 13)`` tokens (so batches carry padding)."""
    import torch

    lengths = [tokens - (7 * i) % 13 for i in range(n)]
    if random_ids:
        g = torch.Generator().manual_seed(0)
        return [" ".join(str(int(t)) for t in torch.randint(1, vocab, (length,), generator=g))
                for length in lengths]
    texts = []
    for i, length in enumerate(lengths):
        k = i % len(SENTENCES)
        body = " ".join(SENTENCES[k:] + SENTENCES[:k]) * 2
        ids = tokenizer(body)["input_ids"][:length]
        texts.append(tokenizer.decode(ids))
    return texts


def build_model(args):
    import torch

    import almostlinear

    dtype = getattr(torch, args.dtype)
    if not args.random_weights:
        loaded = almostlinear.load(args.model, device=args.device, dtype=dtype)
        return loaded.model, loaded.tokenizer, "embedded " + args.model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = None
    with contextlib.suppress(Exception):
        from almostlinear.core.models import EMBEDDED, _gguf_cache_folder

        entry = EMBEDDED[args.model]
        folder = _gguf_cache_folder(entry, entry.source())
        if (folder / "config.json").is_file():
            config = LlamaConfig.from_pretrained(folder)
    origin = "random init, config from the converted cache"
    if config is None:
        config = LlamaConfig(**LLAMA_135M)
        origin = "random init, config from known SmolLM2-135M values"
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device=args.device, dtype=dtype).eval()
    return model, IdTokenizer(), origin


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64, help="longest prompt, in tokens")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-batches", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    parser.add_argument("--early-layer", type=int, default=15, help="deepest layer of variant (d)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new timing round once this many seconds would be passed")
    parser.add_argument("--skip", default="", help="comma-separated variants to leave out")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    import almostlinear
    from almostlinear.core.hooks import record

    threads = common.set_threads(args.threads)
    info = common.machine_info(args.device)
    print(f"threads {threads}, load average at start {info['load_average_at_start']}")
    sync = common.synchronizer(args.device)

    t0 = time.perf_counter()
    model, tok, origin = build_model(args)
    load_s = time.perf_counter() - t0
    structure = almostlinear.locate(model)
    n_layers = structure.n_layers
    print(f"model: {origin} ({n_layers} layers) in {load_s:.1f}s")

    vocab = model.config.vocab_size
    texts = make_texts(tok, args.prompts, args.tokens, args.random_weights, vocab)
    chunks = [texts[i:i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
    if getattr(tok, "pad_token", None) is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"

    def encode(chunk):
        tok.padding_side = "right"  # nnsight's LanguageModel switches it to "left" for causal models
        enc = tok(list(chunk), return_tensors="pt", padding=True, truncation=True, max_length=args.tokens)
        return {k: enc[k].to(args.device) for k in ("input_ids", "attention_mask")}

    n_real = sum(int(encode(c)["attention_mask"].sum()) for c in chunks)
    n_slots = sum(int(encode(c)["attention_mask"].numel()) for c in chunks)
    print(f"{len(texts)} texts, {len(chunks)} batches, {n_real} real tokens ({n_slots} with padding)")

    all_sites = ["resid_pre.0"] + [f"resid_post.{i}" for i in range(n_layers)]
    early_sites = [f"resid_post.{i}" for i in range(args.early_layer + 1)]
    out_device = args.device  # collect's result stays where the model is (no GPU->CPU copy timed)

    def bare_hidden(u):
        with torch.inference_mode():
            return model(**encode(chunks[u]), output_hidden_states=True)

    def bare_body_hidden(u):
        with torch.inference_mode():
            return model.base_model(**encode(chunks[u]), output_hidden_states=True)

    def bare_logits(u):
        with torch.inference_mode():
            return model(**encode(chunks[u]))

    def al_all(u):
        return almostlinear.collect(model, tok, chunks[u], all_sites, positions="all",
                                    batch_size=args.batch_size, max_length=args.tokens,
                                    device=out_device, structure=structure)

    def al_record(u):
        enc = encode(chunks[u])
        with torch.inference_mode(), record(model, all_sites, positions="all", structure=structure) as rec:
            model(**enc)
        return {s: rec[s] for s in all_sites}

    def al_early(u):
        return almostlinear.collect(model, tok, chunks[u], early_sites, positions="all",
                                    batch_size=args.batch_size, max_length=args.tokens,
                                    device=out_device, structure=structure)

    variants = {"bare_hidden": bare_hidden, "bare_logits": bare_logits, "bare_body_hidden": bare_body_hidden,
                "al_all": al_all, "al_record": al_record}
    nnsight_info: dict = {"version": common.version_of("nnsight")}
    if "nnsight" not in args.skip.split(","):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from nnsight import LanguageModel, NNsight

                if isinstance(tok, IdTokenizer):
                    lm = NNsight(model)
                    nnsight_info["wrapper"] = "NNsight"
                else:
                    lm = LanguageModel(model, tokenizer=tok)
                    nnsight_info["wrapper"] = "LanguageModel"

            def run_nnsight(u):
                enc = encode(chunks[u])
                saved = []
                with torch.inference_mode(), lm.trace(**enc) if isinstance(tok, IdTokenizer) else lm.trace(enc):
                    for i in range(n_layers):
                        saved.append(lm.model.layers[i].output.save())
                return saved

            run_nnsight(0)
            variants["nnsight"] = run_nnsight
        except Exception as error:  # record the exact failure and go on without it
            nnsight_info["error"] = f"{type(error).__name__}: {error}"
            print(f"nnsight unavailable: {nnsight_info['error']}")
    variants["al_early"] = al_early
    for name in filter(None, args.skip.split(",")):
        variants.pop(name, None)

    # ---- correctness, once, on the first batch (outside the timings) --------------------------
    checks: dict = {}
    with torch.inference_mode():
        enc = encode(chunks[0])
        mask = enc["attention_mask"].bool()
        hs = model(**enc, output_hidden_states=True).hidden_states
        got = al_all(0)
        checks["tokens_equal_real_tokens"] = bool(len(got) == int(mask.sum()))
        diffs = {"resid_pre.0": (got["resid_pre.0"] - hs[0][mask]).abs().max().item()}
        for i in range(n_layers - 1):
            diffs[f"resid_post.{i}"] = (got[f"resid_post.{i}"] - hs[i + 1][mask]).abs().max().item()
        # HF's last hidden state is after the final norm; resid_post of the last block is before it
        normed = structure.final_norm(got[f"resid_post.{n_layers - 1}"]) if structure.final_norm else None
        if normed is not None:
            diffs[f"final_norm(resid_post.{n_layers - 1})"] = (normed - hs[n_layers][mask]).abs().max().item()
        checks["al_all_vs_hf_max_abs_diff"] = max(diffs.values())
        checks["al_all_vs_hf_per_site"] = diffs
        early = al_early(0)
        checks["al_early_vs_hf_max_abs_diff"] = max(
            (early[f"resid_post.{i}"] - hs[i + 1][mask]).abs().max().item() for i in range(args.early_layer + 1))
        rec = al_record(0)
        checks["al_record_vs_hf_max_abs_diff"] = max(
            (rec[f"resid_post.{i}"] - hs[i + 1][mask]).abs().max().item() for i in range(n_layers - 1))
        if "nnsight" in variants:
            saved = variants["nnsight"](0)
            checks["nnsight_vs_hf_max_abs_diff"] = max(
                (saved[i] - hs[i + 1]).abs().max().item() for i in range(n_layers - 1))
    print("checks:", {k: v for k, v in checks.items() if k != "al_all_vs_hf_per_site"})

    # ---- the interleaved timings ------------------------------------------------------------
    started = time.perf_counter()
    result = common.interleave(variants, len(chunks), repeats=args.repeats,
                               warmup_units=args.warmup_batches, sync=sync,
                               budget_s=args.budget_s)
    timed_s = time.perf_counter() - started

    # ---- small diagnostics: pieces of collect's bookkeeping, each next to a bare forward -----
    from almostlinear.core.hooks import position_mask

    diag_runs: dict[str, list[float]] = {}

    def diag_time(name, fn):
        diag_runs.setdefault(name, []).append(common.time_call(fn, sync)[0])

    with torch.inference_mode():
        enc0 = encode(chunks[0])
        m0 = enc0["attention_mask"].bool()
        for _ in range(3):
            out = None

            def forward():
                nonlocal out
                out = model(**enc0, output_hidden_states=True)

            diag_time("bare_hidden_forward_batch0", forward)
            hidden = out.hidden_states
            extracted = [h[m0] for h in hidden]
            diag_time("tokenize_batch", lambda: encode(chunks[0]))
            diag_time("locate", lambda: almostlinear.locate(model))
            diag_time("position_mask_x31", lambda: [position_mask("all", enc0["attention_mask"], tuple(m0.shape),
                                                                  m0.device) for _ in hidden])
            diag_time("extract_real_tokens_x31", lambda: [h.detach()[m0] for h in hidden])
            diag_time("isfinite_all_x31", lambda: [bool(torch.isfinite(x).all()) for x in extracted])
            # a one-pass alternative: NaN/inf propagate into the sum (an overflowing sum of finite
            # values would fall back to the exact check, so the answer is the same)
            diag_time("isfinite_via_sum_x31", lambda: [bool(torch.isfinite(x.sum())) for x in extracted])
            diag_time("cat_single_part_x31", lambda: [torch.cat([x]) for x in extracted])
    diag = {k: common.median(v) for k, v in diag_runs.items()}
    forward_s = diag["bare_hidden_forward_batch0"]
    diag_percent = {k: 100 * v / forward_s for k, v in diag.items() if k != "bare_hidden_forward_batch0"}

    ratios = {}
    pairs = {"b/a: al_all / bare_hidden": ("al_all", "bare_hidden"),
             "b/a0: al_all / bare_body_hidden": ("al_all", "bare_body_hidden"),
             "b2/a: al_record / bare_hidden": ("al_record", "bare_hidden"),
             "c/a: nnsight / bare_hidden": ("nnsight", "bare_hidden"),
             "d/a': al_early / bare_logits": ("al_early", "bare_logits"),
             "a/a': bare_hidden / bare_logits": ("bare_hidden", "bare_logits")}
    for label, (num, den) in pairs.items():
        if num in variants and den in variants:
            ratios[label] = {"ratio_of_medians": result.ratio(num, den),
                             "median_paired_ratio": result.paired_ratio(num, den)}

    print(f"\ntimed part {timed_s:.0f}s; load average now {common.load_average()}")
    print("\n| variant | median pass over all batches (s) | per-round totals (s) |\n|---|---|---|")
    for name in variants:
        totals = ", ".join(f"{t:.2f}" for t in result.totals(name))
        print(f"| {name} | {result.median_total(name):.3f} | {totals} |")
    print("\n| ratio | ratio of medians | median of paired per-batch ratios |\n|---|---|---|")
    for label, r in ratios.items():
        print(f"| {label} | {r['ratio_of_medians']:.3f} | {r['median_paired_ratio']:.3f} |")
    print("\ndiagnostics (median of 3, s):", {k: round(v, 5) for k, v in diag.items()})
    print("as % of the bare forward of the same batch:", {k: round(v, 2) for k, v in diag_percent.items()})

    payload = {
        "benchmark": "collect", "rounds_completed": len(result.times[result.names[0]]), "machine": info, "args": vars(args), "model": origin,
        "model_load_s": load_s, "n_texts": len(texts), "n_batches": len(chunks),
        "real_tokens": n_real, "token_slots": n_slots, "nnsight": nnsight_info, "checks": checks,
        "timings": result.summary(), "ratios": ratios, "diagnostics": diag, "diagnostics_percent_of_forward": diag_percent, "timed_s": timed_s,
        "load_average_at_end": common.load_average(), "peak_rss_mib": common.peak_rss_mib(),
    }
    path = common.write_json("bench_collect" + ("-random" if args.random_weights else ""), payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
