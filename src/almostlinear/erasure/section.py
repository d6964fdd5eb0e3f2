"""Audit section: LEACE erasure of truth (true/false city statements): guardedness and cost.

Guardedness reuses the activations of the shared pass over the statements (no extra forward): at a
few depths an eraser is fitted on half the cities and a fresh logistic probe is trained and tested
on the other half, before and after erasure. The cost is measured at the middle layer by running
neutral text with the eraser hooked in at every token: KL and cross-entropy change, for LEACE, for the
plain orthogonal projection along the same concept and, when there are fewer statements than dimensions
(so LEACE's covariance is shrunk), for the unshrunk LEACE as well.
"""

from __future__ import annotations

import torch

from ..core.collect import Batch
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.section import AuditContext, Need, Section
from ..core.sites import Site
from ..data import split
from ..steering.cost import side_effects_many
from .artifact import LeaceEraser
from .evaluate import probe_accuracy

LEACE_SOURCE = "arXiv 2306.03819"
COST_SHARE = 6  # a sixth of the neutral texts (8 in quick mode), each run once plain and once per eraser
COST_MAX_LENGTH = 64
PROTOCOL_NOTE = (
    "Protocol behind these numbers: one eraser per depth, fitted on the statements' final token (where the probe "
    "reads truth) and hooked in at every token of other text, the harshest test of an oblique eraser. Fitting on "
    f"every token instead ({LEACE_SOURCE}'s concept scrubbing pools positions) guards the pooled tokens but not the "
    "final one and costs more on other text; one eraser per position where the concept lives, applied there only, "
    "guards every position at a small cost (benchmarks/bench_leace_tokens.py)."
)


def _depths(n_layers: int) -> list[int]:
    return sorted({round(f * (n_layers - 1)) for f in (0.25, 0.5, 0.75)})


class ErasureSection(Section):
    id = "erasure"
    title = "Concept erasure (LEACE)"

    def applicable(self, ctx: AuditContext) -> str | None:
        if not ctx.causal:
            return "the statements and the cross-entropy cost need a causal language model"
        return None

    def needs(self, ctx: AuditContext) -> list[Need]:
        self.layers = _depths(ctx.structure.n_layers)
        self.cost_layer = self.layers[len(self.layers) // 2]
        self.sites = tuple(Site("resid_post", i) for i in self.layers)
        self.rows: list[torch.Tensor] = []
        self.index: list[torch.Tensor] = []
        # The cost runs its own hooked passes over the neutral texts in ``finish``: the source is asked
        # for by name only, so the audit builds it (shared with other sections) and collects nothing.
        return [Need("cities", self.sites, positions="last"), Need("neutral")]

    def consume(self, source: str, batch: Batch) -> None:
        if source == "cities":
            self.rows.append(torch.stack([batch.activations[s].double().cpu() for s in self.sites]))
            self.index.append(batch.text_index.cpu())

    def finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        statements = ctx.items("cities")
        acts = torch.cat(self.rows, dim=1)  # [depths, n, d]
        order = torch.cat(self.index).tolist()
        labels = torch.tensor([int(statements[i].label) for i in order])
        subjects = [statements[i].subject for i in order]
        train, test = split(list(range(len(order))), 0.5, seed=ctx.seed, key=lambda i: subjects[i])
        train, test = torch.tensor(train), torch.tensor(test)
        share = float(labels[test].double().mean())
        chance = max(share, 1 - share)
        before, after, ranks, erasers = [], [], [], {}
        # Fewer statements than dimensions leave the covariance singular and its small eigenvalues noisy;
        # whitening by them makes an eraser that is exact on the statements but wild on other tokens. The
        # distribution-free linear shrinkage of arXiv 1308.2608 (the estimator concept-erasure offers) keeps
        # the guarantee, since the shrunk covariance is full rank, and only trades away least-squares optimality.
        shrink = len(train) < acts.shape[-1]
        for k, layer in enumerate(self.layers):
            x = acts[k]
            eraser = LeaceEraser.fit(x[train], labels[train], site=self.sites[k], shrinkage=shrink,
                                     model_fingerprint=ctx.loaded.fingerprint)
            erased = eraser(x)
            before.append(probe_accuracy(x[train], labels[train], x[test], labels[test]))
            after.append(probe_accuracy(erased[train], labels[train], erased[test], labels[test]))
            ranks.append(eraser.ranks[0])
            if layer == self.cost_layer:
                erasers = {"leace": eraser,
                           "orth": LeaceEraser.fit(x[train], labels[train], site=self.sites[k], method="orth")}
                if shrink:  # the unshrunk eraser too, so the cost of the exact sample-covariance LEACE is on record
                    erasers["leace_unshrunk"] = LeaceEraser.fit(x[train], labels[train], site=self.sites[k])
            result.metrics += [
                Metric("erasure_probe_accuracy_before", before[-1], "fraction", layer=layer),
                Metric("erasure_probe_accuracy_after", after[-1], "fraction", chance, LEACE_SOURCE, layer=layer,
                       note="guardedness: no linear classifier beats a constant after LEACE"),
            ]
        worst = max(range(len(after)), key=lambda i: after[i])
        result.metrics += [
            Metric("erasure_chance_accuracy", chance, "fraction", note="majority class of the test cities"),
            Metric("erasure_max_probe_accuracy_after", after[worst], "fraction", chance, LEACE_SOURCE,
                   note=f"highest held-out accuracy after erasure, at block {self.layers[worst]}"),
            Metric("erasure_statements_train", int(len(train)), "statements"),
            Metric("erasure_statements_test", int(len(test)), "statements"),
        ]
        result.figures.append(Figure(
            "erasure_guardedness", "Held-out logistic-probe accuracy before and after LEACE erasure", "block",
            "accuracy", [Series("before erasure", self.layers, before), Series("after erasure", self.layers, after)],
            reference=chance))
        self._cost(ctx, result, erasers)
        result.notes += [
            f"Truth of 'The city of X is in Y.' statements, read at the final token after blocks {self.layers}. "
            f"LEACE erasers (rank {max(ranks)}, arXiv 2306.03819"
            + (", covariance shrunk toward the identity (arXiv 1308.2608) since there are fewer statements "
               f"than the {acts.shape[-1]} dimensions" if shrink else "")
            + f") are fitted on {len(train)} statements and a fresh "
            f"L2 logistic probe is trained and tested on erased activations ({len(test)} test statements about "
            "other cities). After erasure the probe should sit at chance: that is LEACE's guarantee on the fitting "
            "distribution; held-out cities test how well it carries over.",
            PROTOCOL_NOTE,
        ]
        return result

    def _cost(self, ctx: AuditContext, result: SectionResult, erasers: dict) -> None:
        texts = ctx.texts("neutral")[:max(4, ctx.budget.neutral_texts // COST_SHARE)]
        if not texts:
            result.notes.append("no neutral text: the cost of erasure was not measured")
            return
        layer = self.cost_layer

        def hooked(eraser: LeaceEraser):
            return lambda: eraser.apply(ctx.loaded)

        found = side_effects_many(ctx.loaded, None, texts, {k: hooked(e) for k, e in erasers.items()},
                                  max_length=COST_MAX_LENGTH, batch_size=ctx.budget.batch_size)
        labels = {"leace": "LEACE" + (" (shrunk covariance)" if "leace_unshrunk" in erasers else ""),
                  "orth": "orthogonal projection", "leace_unshrunk": "LEACE (unshrunk sample covariance)"}
        for name, cost in found.items():
            result.metrics += [
                Metric(f"erasure_{name}_kl", cost.kl, "nats/token", layer=layer,
                       note=f"KL(base || erased) with the {labels[name]} eraser at every token"),
                Metric(f"erasure_{name}_delta_ce", cost.delta_ce, "nats/token", layer=layer,
                       note=f"cross-entropy {cost.ce_base:.3f} -> {cost.ce_intervened:.3f}"),
            ]
        result.metrics.append(Metric("erasure_cost_tokens", found["leace"].n_tokens, "tokens"))
        measured = "; ".join(f"{labels[n]}: KL {c.kl:.3f}, ΔCE {c.delta_ce:+.3f}" for n, c in found.items())
        result.notes.append(
            f"Cost: {len(texts)} model-generated neutral texts (up to {COST_MAX_LENGTH} tokens, "
            f"{found['leace'].n_tokens} predictions) with the block-{layer} eraser hooked in at every token "
            f"(nats/token). {measured}. LEACE is affine and oblique, fitted on the statements' final tokens; on "
            "other tokens it can move activations further than the orthogonal projection does, which is what a "
            "large gap between the two shows.")
