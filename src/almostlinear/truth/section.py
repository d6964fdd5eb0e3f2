"""Audit section: truth directions without labels (CCS, contrast PCA) against supervised baselines,
the model's own zero-shot answer, and the distractor sanity check, per layer."""

from __future__ import annotations

import torch

from ..core.collect import Batch
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.section import AuditContext, CausalSection, Need, SiteRows, last_token_rows
from ..core.sites import Site
from ..core.threads import one_thread
from ..data import split
from .distractor import ALL_METHODS, UNSUPERVISED, distractor_check, fit_methods
from .prompts import CLEAN, DISTRACTOR, ContrastPrompt
from .zero_shot import answer_logit_gap, calibrated_accuracy, raw_accuracy

SOURCE_NAME = "cities_contrast"
CCS_PAPER = "arXiv 2212.03827"
FARQUHAR = "arXiv 2312.10029"
LABELS = {"ccs": "CCS", "contrast_pca": "contrast PCA", "mean_difference": "mean difference (supervised)",
          "logistic": "logistic (supervised)"}
RESTARTS = 10
PROTOCOL_NOTE = (
    f"Protocol behind this verdict: one question template answered both ways, each side normalised by its training "
    f"pairs, CCS fitted by L-BFGS with an L2 penalty, {RESTARTS} restarts, lowest loss kept. Checked against the "
    f"paper's protocol ({CCS_PAPER}; benchmarks/bench_ccs.py): its optimiser (AdamW), per-dimension scaling and "
    "normalising test pairs by their own statistics move held-out accuracy by less than its standard error; the "
    "prompt template moves it most, and the lowest-loss restart is often not the most accurate one."
)


class TruthDirectionsSection(CausalSection):
    id = "truth_directions"
    title = "Truth directions without labels"
    causal_reason = "the statements are filtered by what the model itself answers, which needs a causal language model"

    def needs(self, ctx: AuditContext) -> list[Need]:
        self.last = SiteRows(Site("resid_post", i) for i in range(ctx.structure.n_layers))  # at the answer token
        self.penultimate: list[torch.Tensor] = []  # [texts, d]: last block, one token before the end
        self.tokens: dict[int, list[int]] = {}
        # positions="all" so that the token before the answer is seen too (for the zero-shot answer);
        # only two rows per text are kept.
        return [Need(SOURCE_NAME, self.last.sites, positions="all")]

    def consume(self, source: str, batch: Batch) -> None:
        rows = last_token_rows(batch)
        prev = (rows - 1).clamp_min(0)
        same_text = (batch.text_index[prev] == batch.text_index[rows]) & (rows > 0)
        self.last.add(batch, rows)
        final = batch.activations[self.last.sites[-1]]
        self.penultimate.append(torch.where(same_text[:, None], final[prev].float().cpu(), float("nan")))
        for text in batch.text_index.unique().tolist():
            self.tokens[text] = batch.token_ids[batch.text_index == text].tolist()

    def finish(self, ctx: AuditContext) -> SectionResult:
        with one_thread():
            return self._finish(ctx)

    def _finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        prompts: list[ContrastPrompt] = ctx.items(SOURCE_NAME)
        last, index = self.last.result()
        order = index.argsort()
        acts = last[:, order]  # [layers, texts, d] in text order
        penultimate = torch.cat(self.penultimate)[order]
        clean = _pairs(prompts, CLEAN)
        n_layers = acts.shape[0]
        train, test = _split(clean["subjects"], ctx.seed)
        x_pos, x_neg, labels = acts[:, clean["pos"]], acts[:, clean["neg"]], clean["labels"]
        fits = fit_methods(x_pos[:, train], x_neg[:, train], labels[train], restarts=RESTARTS, seed=ctx.seed)
        curves = {m: fit.accuracy(x_pos[:, test], x_neg[:, test], labels[test]).tolist() for m, fit in fits.items()}
        best = {m: max(range(n_layers), key=lambda i, m=m: curves[m][i]) for m in curves}
        for method in ALL_METHODS:
            for layer, value in enumerate(curves[method]):
                result.metrics.append(Metric(f"truth_{method}_accuracy", value, "fraction", layer=layer))
        for layer, value in enumerate(fits["ccs"].loss.tolist()):
            result.metrics.append(Metric("ccs_loss", value, "loss", layer=layer))
        for method in ALL_METHODS:
            kind = "sign-free, max(acc, 1 - acc)" if method in UNSUPERVISED else "labels fix the sign"
            result.metrics.append(Metric(f"truth_{method}_best_accuracy", curves[method][best[method]], "fraction",
                                         note=f"at block {best[method]}; {kind}; best block chosen on the test pairs"))
        zero_shot = self._zero_shot(ctx, clean, penultimate, train, test)
        ccs_best = curves["ccs"][best["ccs"]]
        if zero_shot is not None:
            calibrated, raw = zero_shot
            result.metrics += [
                Metric("zero_shot_accuracy", calibrated, "fraction",
                       note="the model's own Yes/No answer, threshold at the median gap of the training pairs"),
                Metric("zero_shot_accuracy_uncalibrated", raw, "fraction", note="logit(Yes) > logit(No)"),
                Metric("ccs_minus_zero_shot", ccs_best - calibrated, "fraction", 0.04, CCS_PAPER,
                       note=f"paper: average over 6 models and 10 QA datasets; here one dataset, CCS at its best "
                            f"block; each accuracy has a standard error of about {_standard_error(len(test)):.2f}"),
            ]
        chosen = best["logistic"]
        checks = self._distractor(ctx, prompts, acts[chosen], result, chosen)
        result.metrics += [
            Metric("chance_accuracy", 0.5, "fraction", note="half the statements are true by construction"),
            Metric("pairs_train", int(len(train)), "pairs"),
            Metric("pairs_test", int(len(test)), "pairs"),
        ]
        layers = list(range(n_layers))
        series = [Series(LABELS[m], layers, curves[m]) for m in ALL_METHODS]
        if zero_shot is not None:
            series.append(Series("zero-shot answer (no layer)", layers, [zero_shot[0]] * n_layers))
        result.figures.append(Figure("truth_direction_accuracy", "Held-out accuracy of truth directions per block",
                                     "block", "accuracy", series, reference=0.5))
        known = "cities_meta" in ctx.sources  # the audit's own statements: facts the model completes correctly
        result.notes += _notes(curves, best, zero_shot, checks, chosen, fits["ccs"].loss.tolist(), known, len(test))
        return result

    def _zero_shot(self, ctx, clean, penultimate, train, test):
        yes_ids, no_ids = [], []
        for p, n in zip(clean["pos"].tolist(), clean["neg"].tolist()):
            a, b = self.tokens[p], self.tokens[n]
            if len(a) < 2 or a[:-1] != b[:-1] or a[-1] == b[-1]:
                return None  # the answers are not single final tokens after a shared prefix
            yes_ids.append(a[-1])
            no_ids.append(b[-1])
        hidden = penultimate[clean["pos"]]
        if not torch.isfinite(hidden).all():
            return None
        gap = answer_logit_gap(ctx.structure, hidden, torch.tensor(yes_ids), torch.tensor(no_ids))
        labels = clean["labels"]
        return calibrated_accuracy(gap[train], gap[test], labels[test]), raw_accuracy(gap[test], labels[test])

    def _distractor(self, ctx, prompts, acts, result, layer):
        pairs = _pairs(prompts, DISTRACTOR)
        if pairs["pos"].numel() < 8:
            result.notes.append("too few distractor pairs for the sanity check of arXiv 2312.10029; skipped")
            return []
        train, test = _split(pairs["subjects"], ctx.seed)
        checks = distractor_check(acts[pairs["pos"]], acts[pairs["neg"]], pairs["labels"], pairs["flags"],
                                  train=train, test=test, restarts=RESTARTS, seed=ctx.seed)
        for check in checks:
            unsupervised = check.method in UNSUPERVISED
            reference = ("unsupervised methods can predict a prominent feature other than knowledge"
                         if unsupervised else None)
            result.metrics += [
                Metric(f"distractor_{check.method}_truth_accuracy", check.truth_accuracy, "fraction",
                       layer=layer, note="with the distractor planted"),
                Metric(f"distractor_{check.method}_distractor_accuracy", check.distractor_accuracy, "fraction",
                       reference, FARQUHAR if unsupervised else None, layer=layer,
                       note=f"follows: {check.follows}"),
            ]
        following = sum(c.follows == "distractor" for c in checks if c.method in UNSUPERVISED)
        result.metrics.append(Metric("unsupervised_methods_following_distractor", following, "methods",
                                     "in the paper's experiments unsupervised methods predicted a prominent "
                                     "feature instead of knowledge",
                                     FARQUHAR, note=f"of {len(UNSUPERVISED)}, at block {layer}"))
        result.metrics.append(Metric("distractor_pairs_test", int(len(test)), "pairs"))
        return checks


def _pairs(prompts: list[ContrastPrompt], variant: str) -> dict:
    pos, neg = {}, {}
    for i, p in enumerate(prompts):
        if p.variant == variant:
            (pos if p.positive else neg)[p.pair] = i
    keys = sorted(set(pos) & set(neg))
    first = [prompts[pos[k]] for k in keys]
    return {"pos": torch.tensor([pos[k] for k in keys], dtype=torch.long),
            "neg": torch.tensor([neg[k] for k in keys], dtype=torch.long),
            "labels": torch.tensor([p.label for p in first], dtype=torch.bool),
            "flags": torch.tensor([bool(p.distractor) for p in first], dtype=torch.bool),
            "subjects": [p.subject for p in first]}


def _split(subjects: list[str], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    train, test = split(list(range(len(subjects))), 0.5, seed=seed, key=lambda i: subjects[i])
    return torch.tensor(train, dtype=torch.long), torch.tensor(test, dtype=torch.long)


def _standard_error(n: int) -> float:
    """Binomial standard error of an accuracy near one half on ``n`` pairs."""
    return (0.25 / max(n, 1)) ** 0.5


def _notes(curves, best, zero_shot, checks, chosen, ccs_loss, known: bool, n_test: int) -> list[str]:
    top = {m: curves[m][best[m]] for m in curves}
    notes = [
        "Each known city statement is asked as '<statement> Is this true?' and answered both ways ('Yes' / 'No'), "
        "as CCS builds its contrast pairs; the residual stream after each block is read at the answer token. "
        "Each side is centred on its own training mean and divided by its average per-dimension spread; "
        "train and test hold different cities.",
        f"CCS: consistency + confidence loss with an L2 penalty, {RESTARTS} seeded restarts per block solved "
        "independently, lowest loss kept. Contrast PCA: top principal component of the normalised pair "
        "differences. Both are unsupervised, so their sign is arbitrary: their accuracy is max(acc, 1 - acc) on the "
        "test pairs, as the CCS paper reports it, which spends one bit of the test labels. Mean difference and "
        "logistic regression are supervised baselines on the same differences and the same split. Best blocks "
        "are chosen on the test pairs, which flatters every method alike.",
        f"Best held-out accuracy: CCS {top['ccs']:.2f} (block {best['ccs']}), contrast PCA {top['contrast_pca']:.2f} "
        f"(block {best['contrast_pca']}), mean difference {top['mean_difference']:.2f} (block "
        f"{best['mean_difference']}), logistic {top['logistic']:.2f} (block {best['logistic']}).",
    ]
    unsupervised, supervised = max(top["ccs"], top["contrast_pca"]), top["logistic"]
    notes.append(PROTOCOL_NOTE)
    if supervised - unsupervised > 0.1:
        notes.append(f"Truth is linearly readable here (supervised {supervised:.2f}) but the unsupervised methods "
                     f"reach only {unsupervised:.2f}: truth is not the most prominent consistent feature of these "
                     "pairs, the failure mode arXiv 2312.10029 describes.")
    if max(ccs_loss) < 0.1 and top["ccs"] < 0.7:
        notes.append(f"CCS's training loss is low at every block (at most {max(ccs_loss):.3f}) while its held-out "
                     "accuracy stays low: the consistency objective is met by features other than truth, which "
                     "arXiv 2312.10029 proves any binary feature of the pairs can do.")
    if zero_shot is not None:
        diff = top["ccs"] - zero_shot[0]
        facts = " although every statement is one whose country the model itself completes correctly" if known else ""
        notes.append(f"The model's own Yes/No answer is right on {zero_shot[0]:.2f} of test pairs (threshold at the "
                     f"training median; {zero_shot[1]:.2f} with logit(Yes) > logit(No)){facts}. CCS minus zero-shot: "
                     f"{diff:+.2f}, against +0.04 on average across 6 models and 10 QA datasets in the CCS paper "
                     f"({CCS_PAPER}); with {n_test} test pairs each accuracy has a standard error of about "
                     f"{_standard_error(n_test):.2f}.")
    else:
        notes.append("No zero-shot baseline: the two answers are not single final tokens after a shared prefix.")
    if checks:
        described = "; ".join(f"{LABELS[c.method]} follows {c.follows} (truth {c.truth_accuracy:.2f}, "
                              f"distractor {c.distractor_accuracy:.2f})" for c in checks)
        notes.append(f"Distractor check at block {chosen} (the logistic probe's best): each statement is followed by "
                     "'Banana.' on the Yes side and 'Shed.' on the No side or the reverse, chosen per city so that "
                     f"it is independent of truth, and every method is refitted. {described}. Farquhar et al. "
                     f"({FARQUHAR}) show that unsupervised methods can follow such a feature instead of truth. "
                     "The supervised methods never see the distractor's labels; if one follows it anyway, the "
                     "feature's sheer size dragged its direction (the unwhitened mean difference is the most "
                     "exposed).")
    return notes
