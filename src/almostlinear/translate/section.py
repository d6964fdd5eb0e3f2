"""Audit section: how well one linear map translates the audited model's representations into those of
an independent sentence encoder (all-MiniLM-L6-v2) and back, on held-out texts (arXiv 2209.15162)."""

from __future__ import annotations

import importlib.util

import torch

from ..core.collect import Batch
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.section import AuditContext, CausalSection, Need
from ..core.models import EMBEDDED, load
from ..core.sites import Site
from ..core.threads import one_thread
from .cross import cross_model_scores
from .pool import pool_rows, text_vectors

LIMBER = "arXiv 2209.15162"
LIMBER_NOTE = "one linear layer maps a frozen image encoder into a frozen LM well enough for captioning/VQA"
SOURCES = ("neutral", "cities")


class CrossModelMaps(CausalSection):
    id = "translate"
    title = "Maps between models"
    causal_reason = "pairs a causal language model's states with a sentence encoder; this model is not causal"

    def __init__(self, partner: str = "minilm-l6") -> None:
        self.partner = partner

    def applicable(self, ctx: AuditContext) -> str | None:
        reason = super().applicable(ctx)
        if reason is not None:
            return reason
        entry = EMBEDDED.get(self.partner)
        if entry is not None and importlib.util.find_spec(entry.module) is None:
            return f"the partner model {self.partner} needs the package {entry.package}: {entry.install_command()}"
        return None

    def needs(self, ctx: AuditContext) -> list[Need]:
        self.site = Site("resid_post", ctx.structure.n_layers // 2)
        self.rows: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {s: [] for s in SOURCES}
        return [Need(source, (self.site,), positions="all") for source in SOURCES]

    def consume(self, source: str, batch: Batch) -> None:
        # mean over each text's tokens but the first (an attention sink with an outlying norm); summed here
        keep = batch.position > 0
        index = batch.text_index[keep].cpu()
        acts = batch.activations[self.site][keep.to(batch.activations[self.site].device)]
        texts = index.unique()  # sorted: a text's slot in this batch is its rank among them
        slot = torch.searchsorted(texts, index)
        self.rows[source].append((texts.clone(), pool_rows(acts.double(), slot, len(texts))))

    def _gather(self, ctx: AuditContext) -> tuple[list[str], torch.Tensor, list]:
        texts, vectors, groups = [], [], []
        seen: set[str] = set()  # a repeated text would sit on both sides of the split
        for source in SOURCES:
            if not self.rows[source]:
                continue
            index = torch.cat([i for i, _ in self.rows[source]])
            acts = torch.cat([a for _, a in self.rows[source]])
            items = ctx.items(source)
            order = index.argsort()
            for i, row in zip(index[order].tolist(), acts[order]):
                item = items[i]
                text = getattr(item, "text", item)
                if text in seen:
                    continue
                seen.add(text)
                texts.append(text)
                vectors.append(row)
                groups.append(f"{source}:{getattr(item, 'subject', i)}")
        return texts, torch.stack(vectors), groups

    def finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        texts, model_vectors, groups = self._gather(ctx)
        partner = load(self.partner, device=str(next(ctx.loaded.model.parameters()).device))
        partner_vectors = text_vectors(partner.model, partner.tokenizer, texts, kind=partner.kind,
                                       batch_size=32, structure=partner.structure).cpu()
        with one_thread():  # small least-squares fits, not forward passes
            scores = cross_model_scores(partner_vectors, model_vectors, names=(self.partner, ctx.loaded.name),
                                        groups=groups, seed=ctx.seed)
        for direction, label in ((scores.forward, "to_model"), (scores.backward, "to_partner")):
            for kind, held in direction.held_out.items():
                note = f"{direction.source} → {direction.target}; in-sample R² {direction.train_r2[kind]:.3f}"
                result.metrics.append(Metric(f"{label}_{kind}_r2_held_out", held.r2, "R²",
                                             "a single linear map suffices (qualitative)" if kind == "affine" else None,
                                             LIMBER if kind == "affine" else None, note=note))
                result.metrics.append(Metric(f"{label}_{kind}_top1_held_out", held.top1, "fraction",
                                             note=f"retrieval among {held.n} held-out texts; chance {held.chance_top1:.3f}"))
            result.metrics.append(Metric(f"{label}_affine_r2_in_sample", direction.train_r2["affine"], "R²",
                                         note="on the fitting rows; optimistic, for comparison only"))
            result.metrics.append(Metric(f"{label}_ridge", direction.ridge, "relative penalty",
                                         note="chosen on a validation fifth of the training rows"))
        result.metrics += [Metric("texts_train", scores.n_train, "texts"), Metric("texts_test", scores.n_test, "texts"),
                           Metric("retrieval_chance", 1.0 / scores.n_test, "fraction")]
        result.figures.append(Figure(
            "translate_rank", "Held-out R² of reduced-rank maps by rank", "rank", "R² (held out)",
            [Series(f"{d.source} → {d.target}", list(d.rank_r2), list(d.rank_r2.values()))
             for d in (scores.forward, scores.backward)]))
        best = scores.forward.held_out["affine"]
        back = scores.backward.held_out["affine"]
        result.notes += [
            f"Shared inputs: {len(texts)} texts ({', '.join(SOURCES)} sources). {ctx.loaded.name}: residual stream after "
            f"block {self.site.layer} (the middle), mean over each text's tokens but the first; {self.partner}: mean over tokens of "
            "the last block, L2-normalised, as sentence-transformers pools it.",
            f"Train/test split {scores.n_train}/{scores.n_test}, statements about one city kept on one side. Maps: "
            "ridge with the penalty chosen on held-back training rows, orthogonal Procrustes with one scale, and "
            "reduced-rank ridge. Every R² here is on the test texts except those marked in-sample.",
            f"Affine map {self.partner} → {ctx.loaded.name}: held-out R² {best.r2:.2f}, retrieval top-1 {best.top1:.2f}; "
            f"back: R² {back.r2:.2f}, top-1 {back.top1:.2f} (chance {best.chance_top1:.3f}). "
            f"Reference: {LIMBER_NOTE} ({LIMBER}); it reports task scores, not R², so there is no number to compare.",
        ]
        return result
