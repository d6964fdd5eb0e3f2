"""How the audit's statistics and ROME's key statistics grow with width and depth, extrapolated.

Random-weight Llamas (no download) of growing width at fixed depth and growing depth at fixed
width; each point runs in its own subprocess so its peak RSS (``ru_maxrss``) is that run's alone.
Two measurements per shape, each in a separate process:

* ``audit``: ``run_audit(quick=True)`` on the sections whose state grows as depth x width²
  (interlayer_linearity, block_linearity, logit_lens) with a small fixed neutral text budget;
* ``keys``: ``editing.key_statistics`` at one middle layer (state grows as d_mlp²).

The audit serves its layered sections a group of layers per forward pass when all layers' statistics
would exceed ``Budget.state_bytes`` (10 GB by default: 3 layers a group at d = 4096). Each point
here sets ``state_bytes`` to ``--group-layers`` layers' worth at its own width, so the small shapes
are grouped as the 8B shape is by default. Peak RSS over the process's baseline (model built,
forward warmed up) is fitted by least squares to ``a·g·d² + c·L·d² + b·d²`` (``g`` = layers per
group; the ``L·d²`` term is what stays per layer: the lens maps and the tuned lens) or
``a·d_mlp²`` (+ constant) (keys), and extrapolated to the shapes of Llama-3-8B and Llama-3-70B with
``g`` as the default budget gives there. State size does not depend on the token count, so a small
budget is enough for memory; the times are for this fixed small budget and say nothing about a real
run's.

    python benchmarks/bench_scale.py                 # default sweep, ~5-10 min on 2 cores
    python benchmarks/bench_scale.py --write-md      # also write benchmarks/results_scale.md
    python benchmarks/bench_scale.py --group-layers 0  # no grouping (every layer in one pass)
    python benchmarks/bench_scale.py --write-md --report benchmarks/out/scale-STAMP.json  # tables from saved rows
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECTIONS = ["interlayer_linearity", "block_linearity", "logit_lens"]
WIDTHS = (128, 256, 512, 1024, 2048)   # at DEPTH layers
DEPTH = 4
DEPTHS = (8, 16)                 # at WIDTH_FOR_DEPTH (plus the shared (512, 4) point)
WIDTH_FOR_DEPTH = 512
GROUP_LAYERS = 3                 # layers per group at every point: what the default budget gives at 8B
TARGETS = {"Llama-3-8B": (4096, 14336, 32), "Llama-3-70B": (8192, 28672, 80)}
GB = 1e9


def d_mlp_for(d: int) -> int:
    return int(round(3.5 * d / 64) * 64)


# ---------------------------------------------------------------------------------------------
# one point, in a child process


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def _texts(n: int) -> list[str]:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import ENGLISH_TEXTS

    return [ENGLISH_TEXTS[i % len(ENGLISH_TEXTS)] + f" Note {i}." for i in range(n)]


def run_point(what: str, d: int, d_mlp: int, layers: int, n_texts: int, n_tokens: int, threads: int,
              group_layers: int) -> dict:
    import dataclasses

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import EOS_ID, PAD_ID, make_tokenizer

    import almostlinear.audit
    import almostlinear.editing
    from almostlinear.audit.registry import make_sections
    from almostlinear.core.models import LoadedModel
    from almostlinear.core.section import AuditContext, Budget

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    config = LlamaConfig(hidden_size=d, intermediate_size=d_mlp, num_hidden_layers=layers,
                         num_attention_heads=max(1, d // 64), num_key_value_heads=max(1, d // 64),
                         max_position_embeddings=512, vocab_size=len(tokenizer), pad_token_id=PAD_ID,
                         eos_token_id=EOS_ID, bos_token_id=None)
    model = LlamaForCausalLM(config).eval()
    loaded = LoadedModel(model, tokenizer, f"random-llama-d{d}-L{layers}", "memory", "causal-lm")
    texts = _texts(n_texts)
    with torch.no_grad():  # warm up allocator and kernels so the baseline includes a forward
        model(**tokenizer(texts[:2], return_tensors="pt", padding=True))
    budget = Budget.quick()
    per_layer = sum(s.layer_state_bytes(AuditContext(loaded, budget)) for s in make_sections(SECTIONS))
    if group_layers > 0:
        budget = dataclasses.replace(budget, state_bytes=group_layers * per_layer)
    group = min(layers, max(1, budget.state_bytes // per_layer)) if per_layer * layers > budget.state_bytes else layers
    baseline = _rss_bytes()
    began = time.perf_counter()
    statuses = {}
    if what == "audit":
        report = almostlinear.audit.run_audit(loaded, quick=True, sections=SECTIONS, texts={"neutral": texts},
                                              budget=budget, progress=lambda *a, **k: None)
        statuses = {s.id: s.status for s in report.sections}
    else:
        almostlinear.editing.key_statistics(model, tokenizer, layers // 2, texts=texts, n_tokens=n_tokens,
                                            cache=False)
    elapsed = time.perf_counter() - began
    peak = _rss_bytes()
    return dict(what=what, d=d, d_mlp=d_mlp, layers=layers, group=group, per_layer_state=per_layer,
                baseline=baseline, peak=peak, extra=peak - baseline, seconds=elapsed, statuses=statuses,
                params=sum(p.numel() for p in model.parameters()))


def spawn(what: str, d: int, layers: int, args) -> dict:
    cmd = [sys.executable, __file__, "--point", what, str(d), str(d_mlp_for(d)), str(layers),
           "--texts", str(args.texts), "--tokens", str(args.tokens), "--threads", str(args.threads),
           "--group-layers", str(args.group_layers)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"point {what} d={d} L={layers} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# fits


def fit(rows: list[dict], features, target: str):
    """Least-squares coefficients of ``target`` on ``features(row)``, each point weighted by 1/value so
    that the small shapes count by their relative error rather than vanishing next to the largest;
    also the largest relative residual."""
    import numpy as np

    X = np.array([features(r["d"], r["d_mlp"], r["layers"], r.get("group", r["layers"])) for r in rows], dtype=float)
    y = np.array([r[target] for r in rows], dtype=float)
    w = 1.0 / np.maximum(np.abs(y), 1e-9)
    coef, *_ = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)
    pred = X @ coef
    worst = float(np.max(np.abs(pred - y) / np.maximum(np.abs(y), 1e-9)))
    return coef, worst


AUDIT_RSS = (("g·d²", lambda d, m, L, g: g * d * d), ("L·d²", lambda d, m, L, g: L * d * d),
             ("d²", lambda d, m, L, g: d * d))
AUDIT_RSS_UNGROUPED = (("L·d²", lambda d, m, L, g: L * d * d), ("d²", lambda d, m, L, g: d * d))
AUDIT_TIME = (("1", lambda d, m, L, g: 1.0), ("L·d²", lambda d, m, L, g: L * d * d),
              ("L·d³", lambda d, m, L, g: L * d ** 3))
KEYS_RSS = (("1", lambda d, m, L, g: 1.0), ("d_mlp²", lambda d, m, L, g: m * m))
KEYS_TIME = (("1", lambda d, m, L, g: 1.0), ("d_mlp²", lambda d, m, L, g: m * m))  # fixed tokens: n·d_mlp² products


STATE_BYTES = 48 + 36 + 96  # bytes per layer·d² the three sections declare (interlayer, lens, block)
DEFAULT_STATE_BYTES = 10 * 10**9  # Budget.state_bytes


def default_group(d: int, L: int) -> int:
    """Layers per group that the default budget gives at width d (the sections' declared state)."""
    per_layer = STATE_BYTES * d * d
    return L if per_layer * L <= DEFAULT_STATE_BYTES else max(1, DEFAULT_STATE_BYTES // per_layer)


def per_unit(r: dict) -> float:
    return r["extra"] / (r.get("group", r["layers"]) * r["d"] ** 2 if r["what"] == "audit" else r["d_mlp"] ** 2)


def law(terms, coef, unit: str, scale: float) -> str:
    return " + ".join(f"{c / scale:.3g}{unit}·{name}" if name != "1" else f"{c / scale:.3g}{unit}"
                      for (name, _), c in zip(terms, coef))


def predict(terms, coef, shape) -> float:
    d, m, L = shape
    g = default_group(d, L)
    return float(sum(c * f(d, m, L, g) for (_, f), c in zip(terms, coef)))


# ---------------------------------------------------------------------------------------------
# main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--point", nargs=4, metavar=("WHAT", "D", "D_MLP", "L"), help=argparse.SUPPRESS)
    p.add_argument("--texts", type=int, default=16, help="neutral texts (about 20 word tokens each)")
    p.add_argument("--tokens", type=int, default=256, help="key-statistics token cap")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--group-layers", type=int, default=GROUP_LAYERS,
                   help="layers per group at every point (0: the default budget, one group at these sizes)")
    p.add_argument("--depth-width", type=int, default=WIDTH_FOR_DEPTH)
    p.add_argument("--audit-only", action="store_true", help="measure the audit only (no key statistics)")
    p.add_argument("--report", type=Path, help="only write the tables, from a run's benchmarks/out/scale-*.json")
    p.add_argument("--widths", type=int, nargs="*", default=list(WIDTHS))
    p.add_argument("--depths", type=int, nargs="*", default=list(DEPTHS))
    p.add_argument("--write-md", action="store_true")
    args = p.parse_args()
    if args.point:
        what, d, m, L = args.point
        print(json.dumps(run_point(what, int(d), int(m), int(L), args.texts, args.tokens, args.threads,
                                   args.group_layers)))
        return

    load = os.getloadavg()
    args.argv = sys.argv[1:]
    started = _dt.datetime.now(_dt.timezone.utc)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    (HERE / "out").mkdir(exist_ok=True)
    saved = HERE / "out" / f"scale-{stamp}.json"
    if args.report:  # write the tables from the rows of an earlier (possibly partial) run
        record = json.loads(args.report.read_text())
        rows, load, args.argv = record["rows"], tuple(record["load"]), record.get("argv", [])
        started = _dt.datetime.fromisoformat(record["started"])
    else:
        shapes = [(d, DEPTH) for d in args.widths] + [(args.depth_width, L) for L in args.depths]
        shapes.sort(key=lambda shape: shape[1] * shape[0] ** 3)  # cheapest first (finishing costs L·d³)
        rows = []
        for d, L in shapes:
            for what in ("audit",) if args.audit_only else ("audit", "keys"):
                r = spawn(what, d, L, args)
                rows.append(r)
                # saved point by point: a sweep cut short still leaves its measurements
                saved.write_text(json.dumps({"rows": rows, "load": load, "started": started.isoformat(),
                                             "argv": sys.argv[1:]}, indent=1))
                print(f"{what:5s} d={d:5d} d_mlp={r['d_mlp']:5d} L={L:3d} g={r['group']:3d}: +{r['extra'] / 1e6:8.1f} MB "
                      f"over {r['baseline'] / 1e6:7.1f} MB, {r['seconds']:6.1f} s {r['statuses'] or ''}", flush=True)
    md = report(rows, args, load, started)
    print(md)
    if args.write_md:
        (HERE / "results_scale.md").write_text(md)


def report(rows, args, load, started) -> str:
    audit = [r for r in rows if r["what"] == "audit"]
    keys = [r for r in rows if r["what"] == "keys"]
    audit_rss = AUDIT_RSS if args.group_layers > 0 else AUDIT_RSS_UNGROUPED

    def features(terms):
        return lambda d, m, L, g: [f(d, m, L, g) for _, f in terms]

    fits = {
        "audit peak RSS over baseline": (audit_rss, *fit(audit, features(audit_rss), "extra"), GB, " GB"),
        "audit time (fixed text budget)": (AUDIT_TIME, *fit(audit, features(AUDIT_TIME), "seconds"), 1.0, " s"),
    }
    if len(keys) >= 2:
        fits["key statistics peak RSS over baseline (1 layer)"] = (KEYS_RSS, *fit(keys, features(KEYS_RSS), "extra"), GB, " GB")
        fits["key statistics time (1 layer, fixed tokens)"] = (KEYS_TIME, *fit(keys, features(KEYS_TIME), "seconds"), 1.0, " s")
    cmd = "python benchmarks/bench_scale.py " + " ".join(a for a in args.argv)
    grouping = (f"`state_bytes` set to {args.group_layers} layers' declared state at each width, so layers are "
                f"served {args.group_layers} per pass (g below)" if args.group_layers > 0 else
                "the default `state_bytes` (10 GB: one group of all layers at every measured shape)")
    lines = [
        "# Scale: audit statistics and ROME key statistics vs width and depth",
        "",
        f"Command: `{cmd.strip()}`",
        "",
        f"Machine: {os.cpu_count()} CPUs, {args.threads} torch thread(s), load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {started.isoformat(timespec='seconds')}. Random-weight Llamas "
        f"(float32, head size 64, d_mlp = 3.5·d rounded to 64, word-level tokenizer of 100 tokens); audit sections "
        f"{', '.join(SECTIONS)} with the quick budget (tuned lens included) on {args.texts} neutral texts, "
        f"{grouping}; key statistics at layer L//2 with n_tokens={args.tokens}, cache off. One subprocess per "
        f"measurement; peak = `ru_maxrss`, baseline = `ru_maxrss` after building the model and one warm-up forward.",
        "",
        "## Measured",
        "",
        "| measurement | d | d_mlp | L | g | baseline MB | peak over baseline MB | bytes per g·d² (audit) or per d_mlp² (keys) | s | sections |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        st = ", ".join(f"{k}={v}" for k, v in r["statuses"].items()) if r["statuses"] else ""
        g = r.get("group", r["layers"]) if r["what"] == "audit" else ""
        lines.append(f"| {r['what']} | {r['d']} | {r['d_mlp']} | {r['layers']} | {g} | {r['baseline'] / 1e6:.0f} | "
                     f"{r['extra'] / 1e6:.1f} | {per_unit(r):.0f} | {r['seconds']:.1f} | {st} |")
    groups = " | ".join(str(default_group(d, L)) for d, m, L in TARGETS.values())
    lines += ["", "## Fitted laws and extrapolation", "",
              f"Layers per group that the default budget gives at the target shapes (g): {groups}.", "",
              "| quantity | fitted law (least squares) | worst relative residual | points | "
              + " | ".join(TARGETS) + " |",
              "|---|---|---|---|" + "---|" * len(TARGETS)]
    for name, (terms, coef, worst, scale, unit) in fits.items():
        n = len(audit) if name.startswith("audit") else len(keys)
        preds = " | ".join(f"{predict(terms, coef, s) / scale:,.1f}{unit}" for s in TARGETS.values())
        lines.append(f"| {name} | {law(terms, coef, unit, scale)} | {worst:.2f} | {n} | {preds} |")
    big = max(audit, key=lambda r: r.get("group", r["layers"]) * r["d"] ** 2)
    preds = " | ".join(f"{per_unit(big) * default_group(d, L) * d * d / GB:,.1f} GB" for d, m, L in TARGETS.values())
    lines.append(f"| audit peak RSS, proportional to the largest point's g·d² (d={big['d']}, L={big['layers']}) | "
                 f"{per_unit(big):.0f} B·g·d² | — | 1 | {preds} |")
    preds = " | ".join(f"{STATE_BYTES * default_group(d, L) * d * d / GB:,.1f} GB" for d, m, L in TARGETS.values())
    lines.append(f"| declared statistics of one group (interlayer 48 + lens 36 + block 96 B·g·d²) | "
                 f"{STATE_BYTES} B·g·d² | — | — | {preds} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
