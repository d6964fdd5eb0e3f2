"""Audit section: sentiment steering dose-response, how linear it is, and what it costs.

A mean-difference vector from the project's sentiment contrast pairs is added to the residual
stream at one block; the behaviour is the next-token log-odds of positive against negative words
after neutral sentence openings, measured at several strengths; the cost is the KL divergence and
cross-entropy change on the model's own neutral text at each strength.
"""

from __future__ import annotations

import torch

from ..core.errors import EmptyDataError
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.section import AuditContext, Need, Section
from ..core.sites import Site
from ..data import FALLBACK_TEXTS
from ..data.sentiment import NEGATIVE_WORDS, NEUTRAL_PROMPTS, POSITIVE_WORDS, SENTIMENT_PAIRS
from .behaviour import TokenPreference
from .directions import extract
from .dose import dose_response, linear_fit
from .fit import read_pairs, vectors_from_activations

CAA_SOURCE = "arXiv 2312.06681"
TAN_SOURCE = "arXiv 2407.12404"
REFUSAL_SOURCE = "arXiv 2406.11717"
# CAA's sycophancy vector on Llama-2-7B-chat, layer 13: p(behaviour) at multipliers -1..1 (the
# authors' committed result files behind their behaviour-vs-multiplier figure).
CAA_MULTIPLIERS = (-1.0, -0.5, 0.0, 0.5, 1.0)
CAA_SYCOPHANCY = (0.638, 0.697, 0.757, 0.797, 0.816)
CAA_R2 = float(linear_fit(torch.tensor(CAA_MULTIPLIERS), torch.tensor(CAA_SYCOPHANCY))[2])
STRENGTHS = (-0.2, -0.1, -0.05, 0.0, 0.05, 0.1, 0.2)
QUICK_STRENGTHS = (-0.2, -0.1, 0.0, 0.1, 0.2)
KL_BUDGET = 0.1
ACTADD_SOURCE = "arXiv 2308.10248"
PROTOCOL_NOTE = (
    f"Protocol behind this verdict: contrastive activation addition ({CAA_SOURCE}), one mean-difference vector "
    "from many pairs added at every position, scored by next-token log-odds. It is not ActAdd's protocol "
    f"({ACTADD_SOURCE}: the per-position difference of one prompt pair injected at the front of the prompt, "
    "swept over layers and coefficients and scored on sampled text), which steering.ActivationAddition implements "
    "and benchmarks/bench_actadd.py runs on the topic example."
)


class SteeringSection(Section):
    id = "steering"
    title = "Steering: sentiment dose-response and side effects"

    def __init__(self, pairs=SENTIMENT_PAIRS, prompts=NEUTRAL_PROMPTS, positive=POSITIVE_WORDS,
                 negative=NEGATIVE_WORDS) -> None:
        self.pairs, self.prompts = tuple(pairs), tuple(prompts)
        self.positive, self.negative = tuple(positive), tuple(negative)

    def applicable(self, ctx: AuditContext) -> str | None:
        if not ctx.causal:
            return "steering is scored by next-token probabilities, which need a causal language model"
        try:
            TokenPreference(self.positive, self.negative).token_ids(ctx.loaded.tokenizer)
        except EmptyDataError as error:
            return f"the sentiment words cannot be scored with this tokenizer: {error}"
        return None

    def _plan(self, ctx: AuditContext) -> dict:
        quick = ctx.quick
        n = ctx.structure.n_layers
        return {"layer": max(0, min(n - 1, round(0.3 * n))), "pairs": 24 if quick else len(self.pairs),
                "prompts": 12 if quick else len(self.prompts), "neutral": 4 if quick else 16,
                "max_length": 48 if quick else 96,
                "strengths": QUICK_STRENGTHS if quick else STRENGTHS}

    def needs(self, ctx: AuditContext) -> list[Need]:
        # The section runs its own steered passes in ``finish``; it only asks the audit to build the
        # neutral texts (shared with other sections), which it reads there for the side effects.
        self.plan = self._plan(ctx)
        return [Need("neutral")]

    def finish(self, ctx: AuditContext) -> SectionResult:
        plan = getattr(self, "plan", None) or self._plan(ctx)
        result = SectionResult(self.id, self.title)
        loaded = ctx.loaded
        model, tokenizer = loaded.model, loaded.tokenizer
        layer = plan["layer"]
        pairs = list(self.pairs[: plan["pairs"]])
        prompts = list(self.prompts[: plan["prompts"]])
        neutral = [t for t in ctx.texts("neutral") if isinstance(t, str) and t][: plan["neutral"]]
        neutral = neutral or list(FALLBACK_TEXTS[: plan["neutral"]])
        site = Site("resid_post", layer)
        # forward passes only: every thread helps (no small LAPACK calls to guard here)
        acts = read_pairs(model, tokenizer, pairs, [site], batch_size=ctx.budget.batch_size)
        vector = vectors_from_activations(acts, model_fingerprint=loaded.fingerprint)[site]
        behaviour = TokenPreference(self.positive, self.negative, batch_size=ctx.budget.batch_size)
        dose = dose_response(loaded, tokenizer, vector, prompts, plan["strengths"], behaviour, neutral=neutral,
                             max_length=plan["max_length"], batch_size=ctx.budget.batch_size)
        strengths = dose.strengths
        mean, err = dose.mean_effect, dose.stderr
        whole, small = dose.linearity(), dose.linearity(within=0.1)
        anti = dose.anti_steerable()
        kls, dces = dose.kl, dose.delta_ce
        m = result.metrics
        m += [
            Metric("steering_layer", layer, "block", note="resid_post of this block, about 30% of the depth"),
            Metric("steering_slope", whole["slope"], "log-odds per unit strength",
                   note="mean next-token log-odds (positive vs negative words) against strength; strength 1 = the "
                        f"median residual norm here ({vector.norms['residual_median']:.1f})"),
            Metric("steering_linearity_r2", whole["r2"], "R^2", round(CAA_R2, 3), CAA_SOURCE,
                   note=f"linear fit of the mean score over strengths {list(strengths)}; reference: R^2 of CAA's "
                        "sycophancy curve (Llama-2-7B-chat, multipliers -1..1), computed from the authors' results"),
            Metric("steering_linearity_r2_small", small["r2"], "R^2", round(CAA_R2, 3), CAA_SOURCE,
                   note="the same for |strength| <= 0.1"),
            Metric("steering_anti_steerable_fraction", anti, "fraction", "up to about 0.5 on some datasets",
                   TAN_SOURCE, note=f"share of the {len(prompts)} prompts whose own slope is negative"),
            Metric("steering_baseline_score", float(dose.baseline.mean()), "log-odds",
                   note="unsteered mean log-odds of positive against negative next words"),
        ]
        for s, e, kl, dce in zip(strengths, mean, kls, dces):
            if s == 0.0:
                continue
            m.append(Metric("steering_effect", e, "log-odds", note=f"strength {s:+g}"))
            m.append(Metric("steering_kl", kl, "nats/token", KL_BUDGET, REFUSAL_SOURCE,
                            note=f"strength {s:+g}; reference: the KL filter used to select refusal directions"))
            m.append(Metric("steering_delta_ce", dce, "nats/token",
                            "+0.12 to +0.37 for activation addition on 2B-8B chat models", REFUSAL_SOURCE,
                            note=f"strength {s:+g}"))
        within = [s for s, kl in zip(strengths, kls) if s > 0 and kl is not None and kl <= KL_BUDGET]
        best = max(within) if within else None
        m.append(Metric("steering_max_strength_within_kl_budget", best, "strength",
                        note=f"largest positive strength tried with KL <= {KL_BUDGET} nats/token"))
        if best is not None:
            m.append(Metric("steering_effect_within_kl_budget", mean[strengths.index(best)], "log-odds"))
        cos = self._method_agreement(acts, site, vector.direction)
        for name, value in cos.items():
            m.append(Metric(f"steering_cosine_mean_diff_{name}", value, "cosine",
                            "mean difference is the best extractor" if name == "pca" else None,
                            "arXiv 2502.02716" if name == "pca" else None))
        offset = whole["intercept"] - float(dose.baseline.mean())  # the fit, as a change from unsteered
        result.figures += [
            Figure("steering_dose_response", f"Sentiment steering at block {layer}: effect against strength",
                   "strength (x median residual norm)", "change in log-odds",
                   [Series("mean effect", strengths, mean),
                    Series("mean - s.e.", strengths, [a - b for a, b in zip(mean, err)]),
                    Series("mean + s.e.", strengths, [a + b for a, b in zip(mean, err)]),
                    Series("linear fit", strengths, [whole["slope"] * s + offset for s in strengths])],
                   reference=0.0),
            Figure("steering_side_effects", "Side effects on neutral text", "strength (x median residual norm)",
                   "nats per token", [Series("KL(base || steered)", strengths, kls),
                                      Series("cross-entropy change", strengths, dces)], reference=KL_BUDGET),
        ]
        n_side = dose.side[0].n_tokens if dose.side and dose.side[0] is not None else 0
        result.notes += [
            f"Vector: mean difference of {len(pairs)} hand-written sentiment pairs (positive minus negative), read at "
            f"each sentence's last token at resid_post.{layer}; added at every position of {len(prompts)} neutral "
            f"sentence openings. Score: log P(positive words) - log P(negative words) for the next token.",
            f"Side effects: KL and cross-entropy change over {n_side} predicted tokens of {len(neutral)} neutral "
            f"texts per strength (each measured with and without the vector).",
            f"Slope {whole['slope']:.2f} log-odds per unit strength with R^2 {whole['r2']:.3f} over the whole range "
            f"and {small['r2']:.3f} within |strength| <= 0.1; {anti:.0%} of prompts move the wrong way.",
            PROTOCOL_NOTE,
        ]
        return result

    @staticmethod
    def _method_agreement(acts, site, direction: torch.Tensor) -> dict:
        pos, neg = acts.pos[site], acts.neg[site]
        unit = direction.double() / direction.double().norm()
        out = {}
        for name, method in (("pca", "pca"), ("pca_uncentred", "pca_uncentred")):
            try:
                other = extract(pos, neg, method).double()
            except ValueError:
                continue
            out[name] = float(unit @ (other / other.norm()))
        return out
