"""Do the levers give the CPU's results on an accelerator, and how long do they take there?

Random-weight Llamas (no download), built once in float32 with a fixed seed and cast to ``--dtype``:
``tiny`` (d=64, 2 layers) and ``smollm2`` (SmolLM2-135M's shape: d=576, d_mlp=1536, 30 layers, 9
heads, 3 key-value heads, 49,152-token vocabulary). For each shape the same five jobs run on
``--device`` and on the CPU, from the same weights in the same dtype:

* ``collect``: residual stream and MLP keys at the middle block;
* ``fit_eraser``: LEACE at the middle block's residual (labels: text index parity), its projection;
* ``rome``: one rank-one edit with key statistics read from the same texts, its ``ΔW = b a``;
* ``train_sae``: a TopK SAE trained on the device (``train_sae(device=...)``), its FVU on held-out text;
* ``weight_matching``: two random models aligned, the share of permutation entries equal to the CPU's.

Each comparison is a relative Frobenius error ``‖x_dev - x_cpu‖ / ‖x_cpu‖`` (for the SAE, the absolute
FVU difference; for matching, one minus the share of equal entries), checked against ``--tol``. Half
precision rounds at 2⁻⁸ relative, so bf16 activations agree only to a few 1e-3 element-wise; the
statistics and fits average that out. Timings are wall-clock seconds per job (after one warm-up of the
model's forward) on each side, and the ratio CPU/device.

    python benchmarks/gpu_check.py                                  # cuda, bf16, both shapes
    python benchmarks/gpu_check.py --device cpu --shapes tiny       # the script's own check, anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=128),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152),
}


def build(shape: str, dtype: torch.dtype, device: str, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_models import EOS_ID, PAD_ID

    torch.manual_seed(seed)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=256, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
                         bos_token_id=None, tie_word_embeddings=shape == "smollm2")
    model = LlamaForCausalLM(config).eval()
    if shape == "tiny":  # random init of the norms is the identity: perturb so a skipped norm shows
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return model.to(dtype=dtype, device=device)


def texts(n: int, length: int = 24, seed: int = 0) -> list[str]:
    from tiny_models import WORDS

    g = torch.Generator().manual_seed(seed)
    words = [w for w in WORDS if w not in ".,!?"]
    return [" ".join(words[int(i)] for i in torch.randint(0, len(words), (length,), generator=g)) for _ in range(n)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    sync(device)
    began = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - began


# ------------------------------------------------------------------------------------------------
# the jobs: each returns the tensor (or number) compared between devices


def job_collect(model, tok, data, layer):
    import almostlinear as al

    acts = al.collect(model, tok, data, [f"resid_post.{layer}", f"mlp_key.{layer}"])
    return torch.cat([acts.activations[s].float().cpu().reshape(-1) for s in acts.activations])


def job_eraser(model, tok, data, layer):
    import almostlinear as al

    labels = torch.tensor([i % 2 for i in range(len(data))])
    eraser = al.fit_eraser(model, tok, data, labels, f"resid_post.{layer}", positions="all")
    # the map x -> x - (x - mean) Rᵀ Lᵀ: its low-rank part L R and its mean
    left, right = eraser.left[0].double().cpu(), eraser.right[0].double().cpu()
    return torch.cat([(left @ right).reshape(-1), eraser.mean[0].double().cpu()])


def job_rome(model, tok, data, layer):
    from almostlinear.editing import EditRequest, hparams_for, key_statistics, rome

    stats = key_statistics(model, tok, layer, texts=data, n_tokens=4096, cache=False)
    hp = hparams_for(model, layer=layer, v_steps=6, n_prefixes=2, prefix_lengths=(3,), clamp_norm_factor=1e4,
                     v_weight_decay=0.0, z_clamp_norm_factor=1e4, ridge=1e-4, v_lr=0.5, seed=0)
    edit = rome(model, tok, EditRequest("{} is the capital of", "Paris", "Italy"), layer=layer, stats=stats, hparams=hp)
    return (edit.b.double().cpu() @ edit.a.double().cpu()).reshape(-1)


def job_sae(model, tok, data, layer, device):
    from almostlinear.sae import evaluate_sae, train_sae

    d = model.config.hidden_size
    sae = train_sae(model, tok, data[:-8], f"resid_post.{layer}", 4 * d, k=8, batch_size=128,
                    buffer_tokens=1024, seed=0, device=device)
    return torch.tensor(evaluate_sae(sae, model, tok, data[-8:], site=f"resid_post.{layer}").fvu)


def job_matching(model_a, model_b):
    from almostlinear.connectivity import transformer_spec, weight_matching

    perm = weight_matching(model_a, model_b, transformer_spec(model_a), max_iter=3)
    return perm.indices.cpu()


def agree(a, b) -> float:
    """One minus the share of permutation entries equal between two results."""
    if a.shape != b.shape:
        return 1.0
    return 1 - float((a == b).double().mean())


def run_shape(shape: str, device: str, dtype: torch.dtype, tol: float, n_texts: int) -> list[dict]:
    from tiny_models import make_tokenizer

    tok = make_tokenizer()
    data = texts(n_texts)
    layer = SHAPES[shape]["num_hidden_layers"] // 2
    rows = []
    models = {dev: build(shape, dtype, dev) for dev in ("cpu", device)}
    others = {dev: build(shape, dtype, dev, seed=1) for dev in ("cpu", device)}
    for dev, model in models.items():  # warm-up: kernels, allocator
        with torch.no_grad():
            model(**{k: v.to(dev) for k, v in tok(data[:2], return_tensors="pt", padding=True).items()})
    jobs = {
        "collect": lambda dev: job_collect(models[dev], tok, data, layer),
        "fit_eraser": lambda dev: job_eraser(models[dev], tok, data, layer),
        "rome": lambda dev: job_rome(models[dev], tok, data, layer),
        "train_sae": lambda dev: job_sae(models[dev], tok, data, layer, dev),
        "weight_matching": lambda dev: job_matching(models[dev], others[dev]),
    }
    for name, job in jobs.items():
        row = dict(shape=shape, job=name, device=device, dtype=str(dtype).replace("torch.", ""))
        try:
            ref, cpu_s = timed("cpu", lambda: job("cpu"))
            out, dev_s = timed(device, lambda: job(device))
            if name == "weight_matching":
                error = agree(out, ref)
            elif name == "train_sae":
                error = abs(float(out) - float(ref))
            else:
                error = rel(out, ref)
            row.update(error=error, ok=bool(error <= tol), cpu_s=cpu_s, device_s=dev_s,
                       speedup=cpu_s / max(dev_s, 1e-9))
        except Exception as exc:  # noqa: BLE001 - report every job, even when one breaks
            row.update(ok=False, failure=f"{type(exc).__name__}: {exc}"[:500])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--shapes", default="tiny,smollm2")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--texts", type=int, default=48)
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16))
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu to check the script itself", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = []
    for shape in args.shapes.split(","):
        rows += run_shape(shape.strip(), args.device, dtype, args.tol, args.texts)
    print()
    print(f"| shape | job | {args.device} s | cpu s | cpu/{args.device} | error | ok |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "failure" in r:
            print(f"| {r['shape']} | {r['job']} | — | — | — | {r['failure']} | no |")
        else:
            print(f"| {r['shape']} | {r['job']} | {r['device_s']:.2f} | {r['cpu_s']:.2f} | {r['speedup']:.1f}x | "
                  f"{r['error']:.2e} | {'yes' if r['ok'] else 'no'} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
