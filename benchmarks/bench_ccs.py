"""CCS on SmolLM2-135M checked against the paper's protocol (arXiv 2212.03827): which differences matter.

The audit's CCS (one question template, both answers, each side centred and scaled by its average
spread on the training pairs, an L2-penalised L-BFGS fit, 10 restarts, the lowest loss kept) reaches
about 0.68 held-out accuracy where the supervised mean difference reaches 0.90. The paper differs in
several ways, each switched on here one at a time on the same cached activations:

* optimiser: AdamW (lr 1e-3, weight decay 0.01, 1000 full-batch epochs, the defaults of the paper's
  code) instead of the penalised L-BFGS;
* normalisation: per dimension (mean and standard deviation of every feature) instead of one scale;
* test statistics: the paper's code normalises the test pairs with their own mean and spread;
* templates: several prompt templates with both answers, pooled, each normalised on its own;
* restarts: 1 against 10, and how well the lowest-loss restart is chosen (the loss's rank
  correlation with accuracy over restarts).

Statements are the audit's: city facts the model completes correctly (``data.known_facts``), split
by city. Activations are read at the answer token after every block, once, and cached.

    python benchmarks/bench_ccs.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Templates written for this check, each ending with the answer whose token is read.
TEMPLATES = (
    ("{statement} Is this true? {answer}", ("Yes", "No")),  # the audit's template
    ("Is the following statement correct? {statement} Answer: {answer}", ("Yes", "No")),
    ("{statement} True or false? {answer}", ("True", "False")),
    ("Claim: {statement}\nThe claim is {answer}", ("true", "false")),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--statements", type=int, default=160)
    parser.add_argument("--candidates", type=int, default=400, help="city facts checked for being known")
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--layers", default="8-26", help="blocks to fit (a range)")
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(HERE))
    from common import OUT_DIR, load_average, machine_info, set_threads, write_json

    import almostlinear
    from almostlinear import data
    from almostlinear.core.collect import collect
    from almostlinear.core.sites import Site
    from almostlinear.truth.ccs import ccs_loss, fit_ccs
    from almostlinear.truth.methods import fit_contrast_pca, fit_logistic_difference, fit_mean_difference
    from almostlinear.truth.normalise import PairNormaliser, sign_free_accuracy
    from almostlinear.truth.prompts import contrast_prompts, whole_subjects

    set_threads(args.threads)
    started = time.perf_counter()
    loaded = almostlinear.load()
    first, last = (int(v) for v in args.layers.split("-"))
    layers = list(range(first, last + 1))
    cache = OUT_DIR / f"ccs-acts-{loaded.fingerprint.split(':')[-1][:12]}-{args.statements}-{args.candidates}.pt"
    if cache.exists():
        saved = torch.load(cache)
        statements, acts = saved["statements"], saved["acts"]
    else:
        known = data.known_facts(loaded.model, loaded.tokenizer, data.city_country_facts()[: args.candidates], top_k=1)
        n = min(2 * len(known), args.statements * 2)
        statements = whole_subjects(data.city_statements(n - n % 2, seed=0, facts=known), args.statements)
        sites = [Site("resid_post", i) for i in range(loaded.structure.n_layers)]
        acts = []  # per template: [2, layers, n, d] (Yes side, No side)
        for template, answers in TEMPLATES:
            prompts = contrast_prompts(statements, distractor_pairs=0, question=template, answers=answers)
            read = collect(loaded.model, loaded.tokenizer, [p.text for p in prompts], sites, positions="last",
                           batch_size=16, max_length=64)
            stacked = torch.stack([read[s] for s in sites]).float()  # [layers, 2n, d], Yes/No alternating
            acts.append(torch.stack([stacked[:, 0::2], stacked[:, 1::2]]))
            print(f"template read: {template!r} [{time.perf_counter() - started:.0f} s]", flush=True)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        torch.save({"statements": statements, "acts": acts}, cache)
    labels = torch.tensor([bool(s.label) for s in statements])
    subjects = [s.subject for s in statements]
    train, test = data.split(list(range(len(statements))), 0.5, seed=0, key=lambda i: subjects[i])
    train, test = torch.tensor(train), torch.tensor(test)
    acts = [a[:, layers].double() for a in acts]  # [2, L, n, d] per template
    print(f"{len(statements)} statements ({len(train)} train / {len(test)} test), {len(TEMPLATES)} templates, "
          f"blocks {first}-{last} [{time.perf_counter() - started:.0f} s]", flush=True)

    def part(t: int, rows: torch.Tensor):
        return acts[t][0][:, rows], acts[t][1][:, rows]

    def normalised(templates, *, per_dimension: bool, test_own_stats: bool):
        """Training and test pairs, each template normalised on its own (by its training pairs, or the
        test pairs by their own statistics as in the paper's code), then pooled."""
        tr_pos, tr_neg, te_pos, te_neg = [], [], [], []
        for t in templates:
            p, n = part(t, train)
            norm = PairNormaliser.fit(p, n, per_dimension=per_dimension)
            zp, zn = norm(p, n)
            tr_pos.append(zp)
            tr_neg.append(zn)
            p, n = part(t, test)
            if test_own_stats:
                norm = PairNormaliser.fit(p, n, per_dimension=per_dimension)
            zp, zn = norm(p, n)
            te_pos.append(zp)
            te_neg.append(zn)
        cat = lambda xs: torch.cat(xs, dim=1)  # noqa: E731
        return cat(tr_pos), cat(tr_neg), cat(te_pos), cat(te_neg)

    def pooled_plain(templates):
        """Templates pooled before normalising (one normaliser for all of them)."""
        p = torch.cat([part(t, train)[0] for t in templates], 1)
        n = torch.cat([part(t, train)[1] for t in templates], 1)
        norm = PairNormaliser.fit(p, n)
        tp = torch.cat([part(t, test)[0] for t in templates], 1)
        tn = torch.cat([part(t, test)[1] for t in templates], 1)
        return (*norm(p, n), *norm(tp, tn))

    def test_labels(k: int) -> torch.Tensor:
        return labels[test].repeat(k)

    def adamw_ccs(z_pos, z_neg, te_pos, te_neg, k: int, restarts: int, seed: int = 0):
        """The paper's optimiser, every (layer, restart) an independent probe in one batch; returns the
        sign-free test accuracy and the final training loss, both ``[layers, restarts]``."""
        n_layers, _, d = z_pos.shape
        g = torch.Generator().manual_seed(seed)
        bound = d ** -0.5  # nn.Linear's default initialisation range
        w = ((torch.rand(n_layers, restarts, d, generator=g) * 2 - 1) * bound).requires_grad_()
        b = ((torch.rand(n_layers, restarts, generator=g) * 2 - 1) * bound).requires_grad_()
        zp, zn = z_pos.float(), z_neg.float()
        opt = torch.optim.AdamW([w, b], lr=1e-3, weight_decay=0.01)
        for _ in range(args.epochs):
            opt.zero_grad()
            pp = torch.sigmoid(torch.einsum("lnd,lkd->lkn", zp, w) + b[..., None])
            pn = torch.sigmoid(torch.einsum("lnd,lkd->lkn", zn, w) + b[..., None])
            ccs_loss(pp, pn).sum().backward()
            opt.step()
        with torch.no_grad():
            pp = torch.sigmoid(torch.einsum("lnd,lkd->lkn", zp, w) + b[..., None])
            pn = torch.sigmoid(torch.einsum("lnd,lkd->lkn", zn, w) + b[..., None])
            score = torch.einsum("lnd,lkd->lkn", (te_pos - te_neg).float(), w)
            return sign_free_accuracy(score > 0, test_labels(k)), ccs_loss(pp, pn).double()

    def lbfgs_ccs(z_pos, z_neg, te_pos, te_neg, k: int, restarts: int):
        """The library's CCS with every restart kept (one fit per seed), to study the selection."""
        accs, losses = [], []
        for seed in range(restarts):
            fit = fit_ccs(z_pos, z_neg, restarts=1, seed=seed)
            accs.append(fit.accuracy(te_pos, te_neg, test_labels(k)))
            losses.append(fit.restart_objectives[:, 0])
        return torch.stack(accs, 1), torch.stack(losses, 1)

    def summarise(name: str, acc, losses, note: str) -> dict:
        chosen = losses.argmin(-1)
        picked = acc[torch.arange(len(layers)), chosen]  # lowest-loss restart per layer
        rank_corr = _spearman(losses, acc)
        row = {"variant": name, "note": note,
               "best_layer": layers[int(picked.argmax())], "best_accuracy": float(picked.max()),
               "mean_accuracy_over_layers": float(picked.mean()), "first_restart_best": float(acc[:, 0].max()),
               "mean_restart_best": float(acc.mean(-1).max()), "oracle_restart_best": float(acc.max(-1).values.max()),
               "loss_accuracy_spearman": rank_corr, "per_layer": [round(float(v), 3) for v in picked]}
        print(f"{name:42s} best {row['best_accuracy']:.3f} (block {row['best_layer']}), mean over blocks "
              f"{row['mean_accuracy_over_layers']:.3f}; one restart {row['first_restart_best']:.3f}, oracle restart "
              f"{row['oracle_restart_best']:.3f}, loss-accuracy rank corr {rank_corr:+.2f} "
              f"[{time.perf_counter() - started:.0f} s]", flush=True)
        return row

    rows = []
    only = [0]
    every = list(range(len(TEMPLATES)))
    audit = normalised(only, per_dimension=False, test_own_stats=False)
    # Supervised and closed-form references on the audit's pairs.
    for name, fitter in (("mean difference (supervised)", fit_mean_difference),
                         ("logistic (supervised)", fit_logistic_difference), ("contrast PCA", fit_contrast_pca)):
        fit = fitter(audit[0], audit[1], labels[train]) if name != "contrast PCA" else fitter(audit[0], audit[1])
        acc = fit.accuracy(audit[2], audit[3], labels[test])
        rows.append({"variant": name, "best_accuracy": float(acc.max()), "best_layer": layers[int(acc.argmax())],
                     "mean_accuracy_over_layers": float(acc.mean()), "per_layer": [round(float(v), 3) for v in acc]})
        print(f"{name:42s} best {float(acc.max()):.3f} (block {layers[int(acc.argmax())]}), mean over blocks "
              f"{float(acc.mean()):.3f}", flush=True)
    r = args.restarts

    def both(name_lbfgs, name_adamw, data4, k, note_lbfgs, note_adamw):
        if name_lbfgs:
            rows.append(summarise(name_lbfgs, *lbfgs_ccs(*data4, k, r), note_lbfgs))
        if name_adamw:
            rows.append(summarise(name_adamw, *adamw_ccs(*data4, k, r), note_adamw))

    both("audit: 1 template, L-BFGS + L2", "1 template, AdamW (paper's optimiser)", audit, 1,
         "today's audit protocol", "optimiser only")
    per_dim = normalised(only, per_dimension=True, test_own_stats=False)
    both("1 template, per-dimension scale, L-BFGS", "1 template, per-dimension scale, AdamW", per_dim, 1,
         "normalisation only", "normalisation + optimiser")
    own = normalised(only, per_dimension=True, test_own_stats=True)
    both("1 template, paper norm. incl. test, L-BFGS", "1 template, paper norm. incl. test, AdamW", own, 1,
         "test pairs normalised with their own statistics, as the paper's code", "the same with AdamW")
    for t in range(1, len(TEMPLATES)):
        both(f"template {t} alone, L-BFGS", None, normalised([t], per_dimension=False, test_own_stats=False), 1,
             TEMPLATES[t][0], None)
    k = len(TEMPLATES)
    pooled = normalised(every, per_dimension=False, test_own_stats=False)
    both(f"{k} templates, per-template norm, L-BFGS", f"{k} templates, per-template norm, AdamW", pooled, k,
         "templates pooled, each normalised on its own", "templates + optimiser")
    both(f"{k} templates, one normaliser, L-BFGS", None, pooled_plain(every), k,
         "templates pooled without per-template normalisation", None)
    both(None, f"{k} templates, paper protocol (all of it)", normalised(every, per_dimension=True, test_own_stats=True),
         k, None, "per-template per-dimension normalisation incl. test, AdamW, lowest loss")
    md = fit_mean_difference(pooled[0], pooled[1], labels[train].repeat(k))
    acc = md.accuracy(pooled[2], pooled[3], test_labels(k))
    rows.append({"variant": f"mean difference, {k} templates (supervised)", "best_accuracy": float(acc.max()),
                 "best_layer": layers[int(acc.argmax())], "mean_accuracy_over_layers": float(acc.mean())})
    print(f"mean difference, {k} templates: best {float(acc.max()):.3f}", flush=True)
    out = {"machine": machine_info(), "args": vars(args), "layers": layers, "statements": len(statements),
           "pairs_train": int(len(train)), "pairs_test": int(len(test)), "templates": [t for t, _ in TEMPLATES],
           "rows": rows, "seconds": time.perf_counter() - started, "load_average_at_end": load_average()}
    print(f"written {write_json('ccs', out)}")
    return 0


def _spearman(losses, accuracy) -> float:
    """Mean over layers of the rank correlation between restart loss and accuracy (negative: lower loss,
    higher accuracy, so choosing by loss helps)."""
    import torch

    def ranks(x):
        return x.argsort(-1).argsort(-1).double()

    a, b = ranks(losses), ranks(accuracy)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    corr = (a * b).sum(-1) / ((a.pow(2).sum(-1) * b.pow(2).sum(-1)).sqrt() + 1e-12)
    return float(torch.nan_to_num(corr).mean())


if __name__ == "__main__":
    raise SystemExit(main())
