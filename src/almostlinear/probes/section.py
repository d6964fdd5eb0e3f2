"""Audit section: truth probes per layer on generated city/country statements."""

from __future__ import annotations

import torch

from ..audit.plan import AuditContext, Need, Section
from ..audit.schema import Figure, Metric, SectionResult, Series
from ..core.collect import Batch
from ..core.sites import Site
from ..data import split
from .linear import accuracy, fit_logistic, fit_mass_mean

SMALL_MODEL_NOTE = (
    "71–83% for OPT-6.7B and LLaMA-2-7B on true/false statements (arXiv 2304.13734, abstract); "
    "arXiv 2310.06824 finds truth linearly represented only 'at sufficient scale' (7B and up). No published "
    "value for a model this small was found."
)


class TruthProbes(Section):
    id = "truth_probes"
    title = "Truth probes"

    def applicable(self, ctx: AuditContext) -> str | None:
        if not ctx.causal:
            return "statement filtering by the model's own knowledge needs a causal language model"
        return None

    def needs(self, ctx: AuditContext) -> list[Need]:
        n = ctx.structure.n_layers
        self.sites = tuple(Site("resid_post", i) for i in range(n))
        self.rows: list[torch.Tensor] = []
        self.index: list[torch.Tensor] = []
        return [Need("cities", self.sites, positions="last")]

    def consume(self, source: str, batch: Batch) -> None:
        self.rows.append(torch.stack([batch.activations[s].float().cpu() for s in self.sites]))
        self.index.append(batch.text_index)

    def finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        statements = ctx.sources["cities"]
        acts = torch.cat(self.rows, dim=1)  # [layers, n, d]
        order = torch.cat(self.index)
        labels = torch.tensor([statements[i].label for i in order.tolist()])
        subjects = [statements[i].subject for i in order.tolist()]
        positions = list(range(len(subjects)))
        train, test = split(positions, 0.5, seed=ctx.seed, key=lambda i: subjects[i])
        train, test = torch.tensor(train), torch.tensor(test)
        x_tr, x_te, y_tr, y_te = acts[:, train], acts[:, test], labels[train], labels[test]
        curves = {}
        w, b = fit_logistic(x_tr, y_tr, l2=1e-2)
        curves["logistic"] = accuracy(w, b, x_te, y_te).tolist()
        w, b = fit_mass_mean(x_tr, y_tr)
        curves["mass_mean"] = accuracy(w, b, x_te, y_te).tolist()
        w, b = fit_mass_mean(x_tr, y_tr, whiten=True)
        curves["mass_mean_whitened"] = accuracy(w, b, x_te, y_te).tolist()
        for kind, values in curves.items():
            for layer, value in enumerate(values):
                result.metrics.append(Metric(f"truth_{kind}_accuracy", value, "fraction",
                                             layer=layer))
            best = max(range(len(values)), key=lambda i: values[i])
            result.metrics.append(Metric(f"truth_{kind}_best_accuracy", values[best], "fraction", [0.71, 0.83],
                                         "arXiv 2304.13734", note=f"at block {best}; reference is for 7B models"))
        meta = ctx.sources.get("cities_meta", {})
        result.metrics += [
            Metric("chance_accuracy", 0.5, "fraction", note="classes are balanced by construction"),
            Metric("statements_train", int(len(train)), "statements"),
            Metric("statements_test", int(len(test)), "statements"),
        ]
        if meta:
            result.metrics.append(Metric(
                "known_fact_share", meta["known_share"], "fraction",
                note=f"of the {meta['candidates']} most populous candidate cities, the share whose country the "
                     "model ranks first among all countries"))
        layers = list(range(len(curves["logistic"])))
        result.figures.append(Figure(
            "truth_probe_accuracy", "Held-out accuracy of truth probes per block", "block", "accuracy",
            [Series("logistic", layers, curves["logistic"]), Series("mass-mean", layers, curves["mass_mean"]),
             Series("mass-mean, whitened (LDA)", layers, curves["mass_mean_whitened"])], reference=0.5))
        best_lr = max(curves["logistic"])
        result.notes += [
            f"Statements 'The city of X is in Y.', true and false in pairs about the same city, kept only for "
            f"cities the model itself places in the right country. Probes read the residual stream after each "
            f"block at the final token ('.'); train and test hold different cities.",
            "Logistic: L2-penalised (1e-2 on standardised features). Mass-mean: difference of class means, "
            "threshold half-way (arXiv 2310.06824); whitened = Fisher's discriminant.",
            f"Reference: {SMALL_MODEL_NOTE}",
            f"Best held-out logistic accuracy {best_lr:.2f}: "
            + ("truth is linearly readable in this model." if best_lr >= 0.7 else
               "weak linear truth signal at this scale, as the literature leads one to expect."),
        ]
        return result
