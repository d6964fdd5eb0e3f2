"""TopK SAE training throughput (tokens per second): almostlinear vs SAELens, on the same activations.

Work: SmolLM2-135M residual-stream activations at ``resid_post.15`` (neutral text, first token of
each text skipped) are collected once and saved to a file. Each side then trains a TopK SAE on that
file with the same settings: width, k, batch size, Adam with the same learning rate, AuxK loss with
coefficient 1/32, input scaling estimated from the data, unit-norm decoder. SAELens runs its own
``SAETrainer.fit`` (``TopKTrainingSAE``, logging off, no checkpoints) in a subprocess with the
interpreter of the reference environment, fed by an iterator over shuffled minibatches of the
file with its defaults (``--sae-lens-sparse`` adds its ``use_sparse_activations=True`` option, whose
backward fails on CPU here); almostlinear runs ``SAETrainer.step`` on the same minibatches in a subprocess of the main
environment. Each child warms up on a few steps, then times ``--steps`` steps. Children alternate
(ours, theirs, ours, ...) with the same thread count; the reported ratio is the median of the
paired ratios. Both also report the training-batch FVU at the end, as a check that they learn
alike.

    python benchmarks/bench_sae.py [--steps 30] [--width 4608] [--k 32] [--batch 1024] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REF_PYTHON = HERE.parent / ".venv-ref" / "bin" / "python"
sys.path.insert(0, str(HERE))

OURS = r"""
import json, sys, time, torch
from safetensors.torch import load_file
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
x = load_file(cfg["acts"])["acts"].float()
from almostlinear.sae import SAETrainer
def batches(seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(x.shape[0], generator=g)
        for s in range(0, x.shape[0] - cfg["batch"] + 1, cfg["batch"]):
            yield x[order[s:s + cfg["batch"]]]
def make():
    return SAETrainer(x.shape[1], cfg["width"], k=cfg["k"], lr=cfg["lr"], batch_size=cfg["batch"],
                      dead_tokens=cfg["dead_tokens"], seed=0)
warm = make(); source = batches(1)
for _ in range(cfg["warmup"]):
    warm.step(next(source))
trainer = make(); source = batches(0)
first = next(source)
start = time.perf_counter()
trainer.step(first)
for _ in range(cfg["steps"] - 1):
    trainer.step(next(source))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "tokens": cfg["steps"] * cfg["batch"], "fvu_last": trainer.log.fvu[-1],
                  "l0_last": trainer.log.l0[-1]}))
"""

THEIRS = r"""
import json, sys, time, os, warnings, logging
warnings.filterwarnings("ignore")
os.environ["TQDM_DISABLE"] = "1"
import torch
from safetensors.torch import load_file
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
x = load_file(cfg["acts"])["acts"].float()
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import LoggingConfig
from sae_lens.training.sae_trainer import SAETrainer, SAETrainerConfig
def batches(seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(x.shape[0], generator=g)
        for s in range(0, x.shape[0] - cfg["batch"] + 1, cfg["batch"]):
            yield x[order[s:s + cfg["batch"]]]
def make(steps, seed):
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=cfg["width"], k=cfg["k"],
                                                aux_loss_coefficient=1 / 32, dtype="float32", device="cpu",
                                                use_sparse_activations=cfg.get("sparse", False),
                                                normalize_activations="expected_average_only_in"))
    tcfg = SAETrainerConfig(total_training_samples=steps * cfg["batch"], train_batch_size_samples=cfg["batch"],
                            lr=cfg["lr"], lr_end=cfg["lr"], device="cpu", dead_feature_window=cfg["dead_tokens"] // cfg["batch"],
                            feature_sampling_window=10**9, n_batches_for_norm_estimate=1,
                            logger=LoggingConfig(log_to_wandb=False))
    return SAETrainer(tcfg, sae, batches(seed))
make(cfg["warmup"], 1).fit()
trainer = make(cfg["steps"], 0)
start = time.perf_counter()
sae = trainer.fit()
seconds = time.perf_counter() - start
with torch.no_grad():
    batch = next(batches(0))
    out = sae(batch)
    fvu = float(((batch - out) ** 2).sum() / ((batch - batch.mean(0)) ** 2).sum())
print(json.dumps({"seconds": seconds, "tokens": cfg["steps"] * cfg["batch"], "fvu_first_batch_after": fvu}))
"""


def _collect(path: Path, texts: int, threads: int) -> dict:
    import torch
    from safetensors.torch import save_file

    import almostlinear
    from almostlinear import data

    torch.set_num_threads(threads)
    loaded = almostlinear.load("smollm2-135m")
    site = "resid_post.15"
    sample = data.neutral_texts(loaded.model, loaded.tokenizer, texts, max_new_tokens=80, cache_key=loaded.fingerprint)
    acts = almostlinear.collect(loaded.model, loaded.tokenizer, sample, site, skip_first=True)[site].float()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"acts": acts.contiguous()}, str(path))
    return {"site": site, "texts": len(sample), "tokens": int(acts.shape[0]), "d": int(acts.shape[1])}


def _child(python: Path, code: str, cfg: dict, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([str(python), "-c", code, json.dumps(cfg)], capture_output=True, text=True, env=env,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--texts", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--acts", default=str(HERE / "out" / "sae_acts.safetensors"))
    parser.add_argument("--sae-lens-sparse", action="store_true",
                        help="also time SAELens with use_sparse_activations=True (its backward fails on CPU with "
                             "SAELens 6.54 and torch 2.x: aten::view has no SparseCPU kernel)")
    args = parser.parse_args()
    from common import machine_info, write_json

    acts = Path(args.acts)
    info = {}
    if not acts.is_file():
        info = _collect(acts, args.texts, args.threads)
    from safetensors import safe_open

    with safe_open(str(acts), framework="pt") as handle:
        info["shape"] = list(handle.get_slice("acts").get_shape())
    cfg = {"acts": str(acts), "steps": args.steps, "warmup": args.warmup, "width": args.width, "k": args.k,
           "batch": args.batch, "lr": args.lr, "threads": args.threads, "dead_tokens": 10 * args.batch}
    runs = {"almostlinear": [], "sae_lens": []}
    if args.sae_lens_sparse:
        runs["sae_lens_sparse"] = []
    for _ in range(args.repeats):
        runs["almostlinear"].append(_child(Path(sys.executable), OURS, cfg, args.threads))
        runs["sae_lens"].append(_child(REF_PYTHON, THEIRS, cfg, args.threads))
        if args.sae_lens_sparse:
            runs["sae_lens_sparse"].append(_child(REF_PYTHON, THEIRS, {**cfg, "sparse": True}, args.threads))
    rate = {name: [r["tokens"] / r["seconds"] for r in rs] for name, rs in runs.items()}
    paired = [a / b for a, b in zip(rate["almostlinear"], rate["sae_lens"])]
    paired_sparse = [a / b for a, b in zip(rate["almostlinear"], rate.get("sae_lens_sparse", []))]
    result = {
        "settings": cfg, "activations": info, "runs": runs,
        "tokens_per_s": {name: statistics.median(v) for name, v in rate.items()},
        "speedup_ours_over_sae_lens": statistics.median(paired), "paired_ratios": paired,
        "speedup_ours_over_sae_lens_sparse": statistics.median(paired_sparse) if paired_sparse else None,
        "paired_ratios_sparse": paired_sparse,
        "machine": machine_info(),
        "sae_lens_version": subprocess.run([str(REF_PYTHON), "-c", "import sae_lens; print(sae_lens.__version__)"],
                                           capture_output=True, text=True).stdout.strip(),
    }
    write_json("sae", result)
    keys = ("tokens_per_s", "speedup_ours_over_sae_lens", "paired_ratios", "speedup_ours_over_sae_lens_sparse",
            "paired_ratios_sparse")
    print(json.dumps({k: result[k] for k in keys}, indent=1))
    for name, rs in runs.items():
        print(name, [{k: round(v, 4) for k, v in r.items()} for r in rs])


if __name__ == "__main__":
    main()
