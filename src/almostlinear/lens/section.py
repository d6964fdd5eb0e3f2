"""Audit section: the logit lens per layer, KL to the final distribution and top-1 agreement."""

from __future__ import annotations

import torch

from ..audit.plan import AuditContext, Need, Section
from ..audit.schema import Figure, Metric, SectionResult, Series
from ..core.collect import Batch
from ..core.sites import Site
from .logit import LogitLens, kl_and_agreement

SOURCE = "arXiv 2303.08112"


class LogitLensSection(Section):
    id = "logit_lens"
    title = "Logit lens"

    def applicable(self, ctx: AuditContext) -> str | None:
        if not ctx.causal:
            return "the model has no output head, so there is no next-token distribution to read"
        if ctx.structure.final_norm is None:
            return "the model has no final norm; the lens convention used here needs one"
        return None

    def needs(self, ctx: AuditContext) -> list[Need]:
        s = ctx.structure
        self.lens = LogitLens.from_structure(s)
        self.states = [Site("resid_pre", 0)] + [Site("resid_post", i) for i in range(s.n_layers)]
        self.max_tokens = ctx.budget.lens_tokens
        self.kl = torch.zeros(len(self.states), dtype=torch.float64)
        self.agree = torch.zeros(len(self.states), dtype=torch.float64)
        self.n = 0
        per_text = max(ctx.budget.neutral_new_tokens, 16)
        texts = max(1, -(-self.max_tokens // per_text))
        return [Need("neutral", tuple(self.states), positions="all", logits_texts=texts, skip_first=True)]

    @torch.inference_mode()
    def consume(self, source: str, batch: Batch) -> None:
        if batch.logits is None or self.n >= self.max_tokens:
            return
        take = min(len(batch), self.max_tokens - self.n)
        final = batch.logits[:take]
        for i, site in enumerate(self.states):
            kl, agree = kl_and_agreement(final, self.lens(batch.activations[site][:take]))
            self.kl[i] += kl.double().sum().cpu()
            self.agree[i] += agree.double().sum().cpu()
        self.n += take

    def finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        if self.n == 0:
            result.status = "failed"
            result.notes.append("no tokens with logits were collected")
            return result
        kl = (self.kl / self.n).tolist()
        agree = (self.agree / self.n).tolist()
        labels = ["embeddings"] + [f"block {i}" for i in range(len(kl) - 1)]
        for i, (k, a) in enumerate(zip(kl, agree)):
            layer = i - 1  # -1 = the embeddings (input of block 0)
            result.metrics.append(Metric("logit_lens_kl", k, "nats", "decreases with depth", SOURCE, layer=layer))
            result.metrics.append(Metric("logit_lens_top1_agreement", a, "fraction", "rises with depth", SOURCE,
                                         layer=layer))
        half = len(kl) // 2
        first_close = next((i - 1 for i, k in enumerate(kl) if k < 1.0), None)
        result.metrics += [
            Metric("logit_lens_kl_mid_depth", kl[half], "nats", note=labels[half]),
            Metric("logit_lens_kl_last_block", kl[-1], "nats", 0.0,
                   note="must be 0: at the last block the lens is the model's own head (convention check)"),
            Metric("first_block_with_kl_below_1_nat", first_close, "layer"),
            Metric("tokens", self.n, "tokens"),
        ]
        x = list(range(-1, len(kl) - 1))
        result.figures.append(Figure("logit_lens_kl", "Logit lens: KL(final ‖ lens) per layer", "block (-1 = embeddings)",
                                     "KL (nats)", [Series("logit lens", x, kl)]))
        result.figures.append(Figure("logit_lens_top1", "Logit lens: top-1 agreement with the final prediction",
                                     "block (-1 = embeddings)", "fraction", [Series("logit lens", x, agree)]))
        monotone = sum(1 for a, b in zip(kl, kl[1:]) if b <= a + 1e-9) / max(len(kl) - 1, 1)
        result.notes += [
            "Convention: logits_l = W_U · norm_f(h_l), the model's own final norm (learned scale included) "
            "applied to the residual stream after each block, as in the tuned-lens library; no bias. "
            f"{self.n} tokens of neutral text, each scored against the model's final distribution.",
            f"KL falls from one layer to the next at {monotone:.0%} of steps; mid-depth ({labels[half]}) KL is "
            f"{kl[half]:.2f} nats" + (f"; it first drops below 1 nat at block {first_close}." if first_close is not None
                                      else "; it never drops below 1 nat before the last block."),
        ]
        return result
