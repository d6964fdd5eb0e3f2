"""Audit section: the logit lens, the affine lens and (with a token budget) the tuned lens per layer,
on held-out text.

Texts are split by index: the first few (those the planner computes logits for) are held out for
evaluation; the rest fit the affine lens from streamed moments (every 4th of them validates the
ridge). The held-out states are kept (``lens_tokens`` x states x ``d_model`` floats) because they
arrive before the fitting texts; every lens is scored on them in ``finish``. The moments are kept
per state and fitted as soon as their group of layers is done, so the runner can serve the section a
few layers per pass; the last state (the target every map predicts) is then read in the first pass
and kept for the fitting rows of later ones. The bias-only lens joins outside ``--quick``; the tuned
lens (SGD through the unembedding, the costly one) trains on ``budget.tuned_lens_tokens`` tokens.
"""

from __future__ import annotations

import statistics

import torch

from ..core.artifact import Provenance
from ..core.collect import Batch
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.section import AuditContext, CausalSection, LayeredSection, Need
from ..core.errors import EmptyDataError, ShapeError
from .affine import AffineLensFitter
from .artifact import LENS_WHERE, AffineLens
from .evaluate import LensEvaluation, LensScorer
from .logit import LogitLens, kl_and_agreement, lens_sites

SOURCE = "arXiv 2303.08112"
VALIDATION_EVERY = 4
FALLBACK_RIDGE = 1e-1
NAMES = {"logit": "logit lens", "affine": "affine lens", "bias": "bias-only lens", "tuned": "tuned lens"}


def tuned_steps(tokens: int) -> int:
    """Tokens per SGD step for a tuned-lens budget: the library's 256, or a quarter of a small budget
    so that the learning-rate schedule still has a few steps."""
    return min(256, max(16, tokens // 4))


class LogitLensSection(CausalSection, LayeredSection):
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

    def layer_state_bytes(self, ctx: AuditContext) -> int:
        d = ctx.structure.d_model
        # training and validation moments (sxx, sxy, means, trace of syy), and the float32 map kept for scoring
        return 2 * 8 * (2 * d * d + 2 * d + 1) + 4 * d * (d + 1)

    def layer_needs(self, ctx: AuditContext, layers: range) -> list[Need]:
        s = ctx.structure
        last = s.n_layers  # the target state: the residual the model's own head decodes
        if layers.start == 0:
            self.lens = LogitLens.from_structure(s)
            self.sites = lens_sites(s)
            self.max_tokens = ctx.budget.lens_tokens
            self.held_out: dict[int, list[torch.Tensor]] = {}
            self.n = 0
            self.last_kl = 0.0  # convention check: KL(model ‖ lens) at the last block
            per_text = max(ctx.budget.neutral_new_tokens, 16)
            self.eval_texts = max(1, -(-self.max_tokens // per_text))
            self.fit_tokens = self.validation_tokens = 0
            self.A = self.b = self.bias_b = None
            self.ridges: list[float | None] = [None] * (last + 1)
            self.fit_notes: list[str] = []
            self.targets: torch.Tensor | None = None
        first, final = layers.start == 0, layers.stop == last
        self.group = list(layers)  # state s is the input of block s
        self.scored = self.group + ([last] if first and final else [])  # the first pass holds the target
        self.fitter = AffineLensFitter(len(self.group) + 1, s.d_model)
        self.keep_targets = first and not final  # later passes take the target from here
        self.target_parts: list[torch.Tensor] = []
        self.target_at = 0
        self.group_n = 0
        self.with_logits = first
        sites = [self.sites[i] for i in self.group] + ([self.sites[last]] if first or final else [])
        return [Need("neutral", tuple(sites), positions="all", logits_texts=self.eval_texts if first else 0,
                     skip_first=True)]

    def _target(self, batch: Batch, rows: torch.Tensor) -> torch.Tensor:
        site = self.sites[-1]
        if site in batch.activations:
            return batch.activations[site][rows.to(batch.activations[site].device)]
        if self.targets is None or self.target_at + len(rows) > len(self.targets):
            raise ShapeError("a later pass brought more fitting rows than the first: the passes disagree")
        part = self.targets[self.target_at:self.target_at + len(rows)]
        self.target_at += len(rows)
        return part

    @torch.inference_mode()
    def consume(self, source: str, batch: Batch) -> None:
        held = batch.text_index < self.eval_texts
        fit = (~held).nonzero()[:, 0]
        if fit.numel():
            states = [batch.activations[self.sites[i]][fit.to(batch.activations[self.sites[i]].device)]
                      for i in self.group]
            target = self._target(batch, fit)
            if self.keep_targets:
                self.target_parts.append(target.float().cpu())
            self.fitter.update(states + [target],
                               validation=batch.text_index[fit] % VALIDATION_EVERY == VALIDATION_EVERY - 1)
        rows = held.nonzero()[:, 0][: max(self.max_tokens - self.group_n, 0)]
        if not rows.numel():
            return
        states = {i: batch.activations[self.sites[i]][rows.to(batch.activations[self.sites[i]].device)].float().cpu()
                  for i in self.scored}
        if self.with_logits:
            if batch.logits is None:
                return  # held-out texts are scored only where the first pass computed logits
            target = self._target(batch, rows).float().cpu()
            kl, _ = kl_and_agreement(batch.logits[rows.to(batch.logits.device)], self.lens(target))
            self.last_kl += float(kl.double().sum())
            if self.sites[-1] not in {self.sites[i] for i in self.scored}:
                self.held_out.setdefault(len(self.sites) - 1, []).append(target)
        for i, state in states.items():
            self.held_out.setdefault(i, []).append(state)
        self.group_n += rows.numel()

    def _fit(self, fitter: AffineLensFitter) -> AffineLens:
        try:
            return fitter.result()
        except EmptyDataError:
            note = (f"Too few validation texts to choose the ridge; the affine lens uses a fixed relative "
                    f"ridge of {FALLBACK_RIDGE}.")
            if note not in self.fit_notes:
                self.fit_notes.append(note)
            return fitter.result(ridge=FALLBACK_RIDGE)

    def reduce_layers(self, ctx: AuditContext, layers: range) -> None:
        fitter, self.fitter = self.fitter, None
        last = ctx.structure.n_layers
        if self.keep_targets:
            self.targets = torch.cat(self.target_parts) if self.target_parts else torch.zeros(0, ctx.structure.d_model)
            self.target_parts = []
        elif self.targets is not None and 0 < layers.start and layers.stop < last and self.target_at != len(self.targets):
            raise ShapeError(f"a later pass brought {self.target_at} fitting rows, the first {len(self.targets)}")
        if layers.start == 0:
            self.n = self.group_n
            self.fit_tokens, self.validation_tokens = fitter.tokens, fitter.validation[0].n
        if layers.stop == last:
            self.targets = None
        if fitter.tokens < 2:
            return
        lens = self._fit(fitter)
        bias = None if ctx.quick else fitter.bias_only()
        del fitter
        if len(self.group) == last:  # every state in one group: the fitter's lens is the whole lens
            self.A, self.b, self.ridges = lens.A, lens.b, list(lens.ridge)
            self.bias_b = None if bias is None else bias.b
            return
        d = ctx.structure.d_model
        if self.A is None:
            self.A, self.b = torch.zeros(last + 1, d, d), torch.zeros(last + 1, d)
            self.bias_b = None if bias is None else torch.zeros(last + 1, d)
        for k, s in enumerate(self.group):
            self.A[s], self.b[s], self.ridges[s] = lens.A[k], lens.b[k], lens.ridge[k]
            if bias is not None:
                self.bias_b[s] = bias.b[k]

    def _tuned(self, ctx: AuditContext, init, notes: list[str]):
        from .tuned import TunedLensSettings, train_tuned_lens

        texts = ctx.texts("neutral")[self.eval_texts:]
        budget = ctx.budget.tuned_tokens
        if not texts or budget <= 0:
            return None
        per_step = tuned_steps(budget)  # CPU cost: see benchmarks/RESULTS-lens.md (seconds per SGD step)
        notes.append(f"Tuned lens: the paper's SGD recipe started from the affine lens, {budget} training tokens "
                     f"of the fitting texts in steps of {per_step} (the paper trains on ≈65M tokens, so expect only "
                     "part of its gain).")
        return train_tuned_lens(ctx.loaded.model, ctx.loaded.tokenizer, texts, structure=ctx.structure, init=init,
                                token_budget=budget, settings=TunedLensSettings(tokens_per_step=per_step),
                                batch_size=ctx.budget.batch_size, max_length=ctx.budget.max_length, seed=ctx.seed,
                                progress=False)

    def _held_out_batches(self):
        """The held-out states as ``(states, final logits)`` updates, batch by batch where every pass
        batched the rows alike, else in one piece."""
        count = len(self.sites)
        parts = [self.held_out[i] for i in range(count)]
        if len({tuple(p.shape[0] for p in state) for state in parts}) == 1:
            groups = [list(states) for states in zip(*parts)]
        else:
            groups = [[torch.cat(state) for state in parts]]
        for states in groups:
            yield states, self.lens(states[-1])

    def report(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        if self.n == 0:
            result.status = "failed"
            result.notes.append("no tokens with logits were collected")
            return result
        notes: list[str] = list(self.fit_notes)
        lenses = {"logit": self.lens}
        if self.A is not None:
            affine = AffineLens(self.A, self.b, method="ridge", ridge=self.ridges, tokens=self.fit_tokens,
                                provenance=Provenance(where=LENS_WHERE, method="affine lens (ridge)"))
            lenses["affine"] = affine.bind(self.lens)
            # outside --quick: the bias-only baseline costs one more unembedding per state and token
            if self.bias_b is not None:
                bias = AffineLens(None, self.bias_b, method="bias", tokens=self.fit_tokens,
                                  provenance=Provenance(where=LENS_WHERE, method="affine lens (bias)"))
                lenses["bias"] = bias.bind(self.lens)
            tuned = self._tuned(ctx, affine, notes)
            if tuned is not None:
                lenses["tuned"] = tuned.bind(self.lens)
        else:
            notes.append("No texts were left to fit the affine lens after the held-out ones; only the logit lens is shown.")
        scorer = LensScorer(lenses)
        with torch.inference_mode():
            for states, final in self._held_out_batches():
                scorer.update(states, final)
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
                Metric("share_of_states_where_affine_beats_logit", wins / max(len(kl) - 1, 1), "fraction", 1.0,
                       SOURCE, note="the count above as a share, so one threshold fits every depth"),
                Metric("affine_fit_tokens", self.fit_tokens, "tokens",
                       note=f"{self.validation_tokens} of them validate the ridge"),
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
                f"on {self.fit_tokens} tokens of the other texts (ridge per layer chosen on every "
                f"{VALIDATION_EVERY}th text). Median KL {statistics.median(affine[:-1]):.2f} nats against "
                f"{statistics.median(kl[:-1]):.2f} for the logit lens. "
                + ("It beats the logit lens at every layer before the last, in line with the paper's finding that "
                   "a learned affine translator is 'more predictive' than the logit lens (abstract)."
                   if not losing else
                   f"Unlike the paper's tuned lens ('more predictive' than the logit lens), it does not beat the "
                   f"logit lens at block(s) {losing} (-1 = embeddings): a squared-error fit on few tokens is not a KL fit.")
            )
        return notes + extra
