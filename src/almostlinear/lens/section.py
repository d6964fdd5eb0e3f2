"""Audit section: the logit lens and the affine lens per layer, on held-out text.

Texts are split by index: the first few (those the planner computes logits for) are held out for
evaluation; the rest fit the affine lens from streamed moments (every 4th of them validates the
ridge). The held-out states are kept (``lens_tokens`` x states x ``d_model`` floats) because they
arrive before the fitting texts; the affine lens is scored on them in ``finish``. The bias-only
lens and the tuned lens (SGD, CPU-expensive) join outside ``--quick``.
"""

from __future__ import annotations

import statistics

import torch

from ..core.collect import Batch
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.section import AuditContext, CausalSection, Need
from ..core.errors import EmptyDataError
from .affine import AffineLensFitter
from .evaluate import LensEvaluation, LensScorer
from .logit import LogitLens, kl_and_agreement, lens_sites

SOURCE = "arXiv 2303.08112"
VALIDATION_EVERY = 4
FALLBACK_RIDGE = 1e-1
NAMES = {"logit": "logit lens", "affine": "affine lens", "bias": "bias-only lens", "tuned": "tuned lens"}


class LogitLensSection(CausalSection):
    id = "logit_lens"
    title = "Lenses"
    causal_reason = "the model has no output head, so there is no next-token distribution to read"

    def applicable(self, ctx: AuditContext) -> str | None:
        reason = super().applicable(ctx)
        if reason is not None:
            return reason
        if ctx.structure.final_norm is None:
            return "the model has no final norm; the lens convention used here needs one"
        return None

    def needs(self, ctx: AuditContext) -> list[Need]:
        s = ctx.structure
        self.lens = LogitLens.from_structure(s)
        self.states = lens_sites(s)
        self.max_tokens = ctx.budget.lens_tokens
        self.fitter = AffineLensFitter(len(self.states), s.d_model)
        self.held_out: list[list[torch.Tensor]] = []
        self.n = 0
        self.last_kl = 0.0  # convention check: KL(model ‖ lens) at the last block
        per_text = max(ctx.budget.neutral_new_tokens, 16)
        self.eval_texts = max(1, -(-self.max_tokens // per_text))
        return [Need("neutral", tuple(self.states), positions="all", logits_texts=self.eval_texts, skip_first=True)]

    @torch.inference_mode()
    def consume(self, source: str, batch: Batch) -> None:
        held = batch.text_index < self.eval_texts
        fit = (~held).nonzero()[:, 0]
        if fit.numel():
            states = [batch.activations[site][fit.to(batch.activations[site].device)] for site in self.states]
            self.fitter.update(states, validation=batch.text_index[fit] % VALIDATION_EVERY == VALIDATION_EVERY - 1)
        rows = held.nonzero()[:, 0][: max(self.max_tokens - self.n, 0)]
        if batch.logits is None or not rows.numel():
            return
        states = [batch.activations[site][rows.to(batch.activations[site].device)].float().cpu() for site in self.states]
        kl, _ = kl_and_agreement(batch.logits[rows.to(batch.logits.device)], self.lens(states[-1]))
        self.last_kl += float(kl.double().sum())
        self.held_out.append(states)
        self.n += rows.numel()

    def _fit(self, notes: list[str]):
        try:
            return self.fitter.result()
        except EmptyDataError:
            notes.append(f"Too few validation texts to choose the ridge; the affine lens uses a fixed relative "
                         f"ridge of {FALLBACK_RIDGE}.")
            return self.fitter.result(ridge=FALLBACK_RIDGE)

    def _tuned(self, ctx: AuditContext, init, notes: list[str]):
        from .tuned import train_tuned_lens

        texts = ctx.texts("neutral")[self.eval_texts:]
        if not texts:
            return None
        budget = self.max_tokens  # CPU cost: see benchmarks/RESULTS-lens.md (seconds per SGD step)
        notes.append(f"Tuned lens: the paper's SGD recipe started from the affine lens, {budget} training tokens "
                     "of the fitting texts (the paper trains on ≈65M tokens, so expect only part of its gain).")
        return train_tuned_lens(ctx.loaded.model, ctx.loaded.tokenizer, texts, structure=ctx.structure, init=init,
                                token_budget=budget, batch_size=ctx.budget.batch_size,
                                max_length=ctx.budget.max_length, seed=ctx.seed, progress=False)

    def finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        if self.n == 0:
            result.status = "failed"
            result.notes.append("no tokens with logits were collected")
            return result
        notes: list[str] = []
        lenses = {"logit": self.lens}
        affine = None
        if self.fitter.tokens >= 2:
            affine = self._fit(notes)
            lenses["affine"] = affine.bind(self.lens)
            # outside --quick: the bias-only baseline costs one more unembedding per state and token, the
            # tuned lens about three per state and training token
            if not ctx.quick:
                lenses["bias"] = self.fitter.bias_only().bind(self.lens)
                tuned = self._tuned(ctx, affine, notes)
                if tuned is not None:
                    lenses["tuned"] = tuned.bind(self.lens)
        else:
            notes.append("No texts were left to fit the affine lens after the held-out ones; only the logit lens is shown.")
        scorer = LensScorer(lenses)
        with torch.inference_mode():
            for states in self.held_out:
                scorer.update(states, self.lens(states[-1]))
        scores = scorer.result()
        self._metrics(result, scores)
        self._figures(result, scores)
        result.notes += self._notes(scores, notes)
        return result

    def _metrics(self, result: SectionResult, scores: dict[str, LensEvaluation]) -> None:
        for name, score in scores.items():
            prefix = f"{name}_lens"
            for layer, k, a in zip(score.layers, score.kl, score.top1):
                result.metrics.append(Metric(f"{prefix}_kl", k, "nats", "decreases with depth", SOURCE, layer=layer))
                result.metrics.append(Metric(f"{prefix}_top1_agreement", a, "fraction", "rises with depth", SOURCE,
                                             layer=layer))
        logit = scores["logit"]
        kl = logit.kl
        half = len(kl) // 2
        first_close = next((layer for layer, k in zip(logit.layers, kl) if k < 1.0), None)
        result.metrics += [
            Metric("logit_lens_kl_mid_depth", kl[half], "nats", note=f"block {half - 1}"),
            Metric("logit_lens_kl_last_block", self.last_kl / self.n, "nats", 0.0,
                   note="must be 0: at the last block the lens is the model's own head (convention check)"),
            Metric("first_block_with_kl_below_1_nat", first_close, "layer"),
            Metric("tokens", self.n, "tokens", note="held-out tokens every lens is scored on"),
            Metric("median_logit_lens_kl", statistics.median(kl[:-1]), "nats", note="over all states but the last"),
        ]
        if "affine" in scores:
            affine = scores["affine"].kl
            wins = sum(a < g for a, g in zip(affine[:-1], kl[:-1]))
            expected = f"all {len(kl) - 1}: tuned lens 'more predictive'"
            result.metrics += [
                Metric("median_affine_lens_kl", statistics.median(affine[:-1]), "nats",
                       "below the logit lens's", SOURCE, note="over all states but the last"),
                Metric("layers_where_affine_beats_logit", wins, "states", expected, SOURCE,
                       note=f"out of the {len(kl) - 1} states before the last, on held-out text; the paper's "
                            "abstract finds its tuned lens, which the affine lens stands in for, 'more predictive' "
                            "than the logit lens"),
                Metric("affine_fit_tokens", self.fitter.tokens, "tokens",
                       note=f"{self.fitter.validation[0].n} of them validate the ridge"),
            ]
        if "tuned" in scores:
            result.metrics.append(Metric("median_tuned_lens_kl", statistics.median(scores["tuned"].kl[:-1]), "nats",
                                         "below the logit lens's", SOURCE))

    def _figures(self, result: SectionResult, scores: dict[str, LensEvaluation]) -> None:
        x = scores["logit"].layers
        result.figures.append(Figure("lens_kl", "Lenses on held-out text: KL(final ‖ lens) per layer",
                                     "block (-1 = embeddings)", "KL (nats)",
                                     [Series(NAMES[n], x, s.kl) for n, s in scores.items()]))
        result.figures.append(Figure("lens_top1", "Lenses: top-1 agreement with the final prediction",
                                     "block (-1 = embeddings)", "fraction",
                                     [Series(NAMES[n], x, s.top1) for n, s in scores.items()]))

    def _notes(self, scores: dict[str, LensEvaluation], extra: list[str]) -> list[str]:
        kl = scores["logit"].kl
        monotone = sum(1 for a, b in zip(kl, kl[1:]) if b <= a + 1e-9) / max(len(kl) - 1, 1)
        half = len(kl) // 2
        notes = [
            "Logit lens convention: logits_l = W_U · norm_f(h_l), the model's own final norm (learned scale "
            "included) applied to the residual stream after each block, as in the tuned-lens library; no bias. "
            f"Every lens is scored on the same {self.n} held-out tokens of neutral text (the first "
            f"{self.eval_texts} texts) against the model's final distribution.",
            f"Logit lens: KL falls from one layer to the next at {monotone:.0%} of steps; mid-depth (block "
            f"{half - 1}) KL is {kl[half]:.2f} nats.",
        ]
        blocks = kl[1:-1]
        peak = max(range(len(blocks)), key=blocks.__getitem__) if blocks else 0
        if blocks and peak > 0 and blocks[peak] > blocks[0] + 1.0:
            notes.append(
                "Unlike the gradual convergence reported for GPT-2 (nostalgebraist, 'interpreting GPT: the logit "
                f"lens', LessWrong 2020), the logit lens's KL here rises from {blocks[0]:.1f} nats after block 0 to "
                f"{blocks[peak]:.1f} after block {peak} before it falls: on this model the intermediate residual "
                "stream is far from the output basis, the brittleness the tuned-lens paper describes ('often "
                "brittle', abstract).")
        if "affine" in scores:
            affine = scores["affine"].kl
            losing = [layer for layer, a, g in zip(scores["logit"].layers[:-1], affine[:-1], kl[:-1]) if a >= g]
            notes.append(
                f"Affine lens: ridge regression h_l → h_last (pre final norm) in residual form, fitted in closed form "
                f"on {self.fitter.tokens} tokens of the other texts (ridge per layer chosen on every "
                f"{VALIDATION_EVERY}th text). Median KL {statistics.median(affine[:-1]):.2f} nats against "
                f"{statistics.median(kl[:-1]):.2f} for the logit lens. "
                + ("It beats the logit lens at every layer before the last, in line with the paper's finding that "
                   "a learned affine translator is 'more predictive' than the logit lens (abstract)."
                   if not losing else
                   f"Unlike the paper's tuned lens ('more predictive' than the logit lens), it does not beat the "
                   f"logit lens at block(s) {losing} (-1 = embeddings): a squared-error fit on few tokens is not a KL fit.")
            )
        return notes + extra
