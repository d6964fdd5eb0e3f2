"""Audit section: what the model is and what ``locate`` found in it."""

from __future__ import annotations

from ..core.report import Metric, SectionResult
from ..core.section import AuditContext, Section


class ModelCard(Section):
    id = "model_card"
    title = "Model card"

    def finish(self, ctx: AuditContext) -> SectionResult:
        s = ctx.structure
        config = ctx.loaded.model.config
        vocab = getattr(config, "vocab_size", None)
        result = SectionResult(self.id, self.title)
        result.metrics += [
            Metric("parameters", s.n_params, "count"),
            Metric("blocks", s.n_layers, "count"),
            Metric("d_model", s.d_model, "features"),
            Metric("d_mlp", s.d_mlp, "features"),
            Metric("vocabulary", vocab, "tokens"),
            Metric("tied_embeddings", int(s.tied_embeddings), "bool"),
        ]
        summary = s.summary()
        from .run import model_source

        # The source as a kind, not a path: reports are shared, and a path names the user's machine.
        result.notes += [f"{ctx.loaded.name}: {type(ctx.loaded.model).__name__} ({s.model_type}), "
                         f"fingerprint {ctx.loaded.fingerprint}, source: {model_source(ctx.loaded)}."]
        result.notes += [f"{key}: {value}" for key, value in summary.items() if key != "notes"]
        result.notes += list(s.notes)
        return result
