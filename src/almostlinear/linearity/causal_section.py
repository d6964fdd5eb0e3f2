"""Audit section: concept directions in the unembedding, under the causal and the Euclidean inner
product (arXiv 2311.03658). Reads only the output head's weights: no forward pass."""

from __future__ import annotations

import torch

from ..core.section import AuditContext, Section
from ..core.report import Figure, Metric, SectionResult, Series
from .causal import (CONCEPT_PAIRS, causal_whitening, concept_directions, off_diagonal_abs_cosine, single_token_pairs,
                     slug)

SOURCE = "arXiv 2311.03658"
MIN_PAIRS = 2


class CausalInnerProductSection(Section):
    id = "causal_inner_product"
    title = "Causal inner product of the unembedding"

    def applicable(self, ctx: AuditContext) -> str | None:
        head = ctx.structure.unembedding
        if head is None or getattr(head, "weight", None) is None:
            return "the model has no output head, so there are no unembedding vectors"
        if ctx.loaded.tokenizer is None:
            return "no tokenizer: the concept word pairs cannot be turned into tokens"
        return None

    def finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        gamma = ctx.structure.unembedding.weight.detach().float().cpu()
        whitening = causal_whitening(gamma)
        pairs = {name: single_token_pairs(ctx.loaded.tokenizer, words) for name, words in CONCEPT_PAIRS.items()}
        kept = {name: ids for name, ids in pairs.items() if len(ids) >= MIN_PAIRS}
        for name, ids in pairs.items():
            result.metrics.append(Metric(f"pairs_{slug(name)}", len(ids), "single-token pairs",
                                         note=f"of {len(CONCEPT_PAIRS[name])} written"))
        if len(kept) < 2:
            result.status = "skipped"
            result.notes.append(f"fewer than two concepts have {MIN_PAIRS} single-token pairs under this tokenizer")
            return result
        names, causal = concept_directions(whitening(gamma), kept)
        _, euclid = concept_directions(gamma, kept)
        cos_causal, cos_euclid = off_diagonal_abs_cosine(causal), off_diagonal_abs_cosine(euclid)
        whitened_cov = whitening.inv_sqrt @ whitening.covariance @ whitening.inv_sqrt
        identity_error = float((whitened_cov - torch.eye(len(whitened_cov), dtype=torch.float64)).abs().max())
        result.metrics += [
            Metric("mean_abs_cos_causal", float(cos_causal.mean()), "|cos|",
                   "near 0 between causally separable concepts (qualitative)", SOURCE),
            Metric("mean_abs_cos_euclidean", float(cos_euclid.mean()), "|cos|",
                   "larger than under the causal inner product (qualitative)", SOURCE),
            Metric("max_abs_cos_causal", float(cos_causal.max()), "|cos|"),
            Metric("max_abs_cos_euclidean", float(cos_euclid.max()), "|cos|"),
            Metric("concepts", len(names), "concepts"),
            Metric("whitening_identity_error", identity_error, "max |Cov(g) − I|",
                   note="check: the whitened unembedding has identity covariance"),
            Metric("cov_gamma_condition_number", float(whitening.eigenvalues[-1] / whitening.eigenvalues[0]), "ratio"),
        ]
        labels = [f"{a} / {b}" for i, a in enumerate(names) for b in names[i + 1:]]
        x = list(range(len(labels)))
        result.figures.append(Figure(
            "concept_cosines", "|cos| between directions of different concepts (pair index; see notes)",
            "concept pair", "|cos|",
            [Series("causal inner product", x, cos_causal.tolist()), Series("Euclidean", x, cos_euclid.tolist())]))
        ratio = float(cos_causal.mean() / cos_euclid.mean()) if float(cos_euclid.mean()) > 0 else float("nan")
        result.notes += [
            f"Concept directions: the normalised mean difference of unembedding vectors over counterfactual "
            f"single-token word pairs (leading space), for {len(names)} concepts: "
            + ", ".join(f"{n} ({len(kept[n])} pairs)" for n in names)
            + ". Causal: after whitening by Cov(γ)^(-1/2) over all vocabulary rows; Euclidean: raw rows.",
            "Concept pairs in the figure, in order: " + "; ".join(f"{i}: {label}" for i, label in enumerate(labels)),
            f"Mean |cos| between different concepts is {float(cos_causal.mean()):.3f} under the causal inner product "
            f"and {float(cos_euclid.mean()):.3f} under the Euclidean one (ratio {ratio:.2f}). "
            + ("As in arXiv 2311.03658 (LLaMA-2-7B), the causal inner product makes unrelated concepts closer "
               "to orthogonal." if ratio < 1 else
               "Unlike arXiv 2311.03658 (LLaMA-2-7B), whitening does not make unrelated concepts more orthogonal "
               "in this model."),
        ]
        return result
