"""Audit section: truth probes per layer on generated city/country statements, with a control task
(selectivity, arXiv 1909.03368) and the gain of an MLP probe over the linear one."""

from __future__ import annotations

import torch

from ..core.collect import Batch
from ..core.report import Band, Figure, Metric, SectionResult, Series
from ..core.section import AuditContext, CausalSection, Need, SiteRows
from ..core.sites import Site
from ..data import split
from .control import selectivity
from .linear import accuracy, fit_logistic, fit_mass_mean
from .mlp import fit_mlp

L2 = 1e-2
CONTROL_SOURCE = "arXiv 1909.03368"
SMALL_MODEL_NOTE = (
    "71–83% for OPT-6.7B and LLaMA-2-7B on true/false statements (arXiv 2304.13734, abstract); "
    "arXiv 2310.06824 finds truth linearly represented only 'at sufficient scale' (7B and up). No published "
    "value for a model this small was found."
)


class TruthProbes(CausalSection):
    id = "truth_probes"
    title = "Truth probes"
    causal_reason = "statement filtering by the model's own knowledge needs a causal language model"

    def needs(self, ctx: AuditContext) -> list[Need]:
        self.rows = SiteRows(Site("resid_post", i) for i in range(ctx.structure.n_layers))
        return [Need("cities", self.rows.sites, positions="last")]

    def consume(self, source: str, batch: Batch) -> None:
        self.rows.add(batch)

    def finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        statements = ctx.items("cities")
        acts, order = self.rows.result()  # [layers, n, d], each row's statement
        labels = torch.tensor([statements[i].label for i in order.tolist()])
        subjects = [statements[i].subject for i in order.tolist()]
        positions = list(range(len(subjects)))
        train, test = split(positions, 0.5, seed=ctx.seed, key=lambda i: subjects[i])
        train, test = torch.tensor(train), torch.tensor(test)
        x_tr, x_te, y_tr, y_te = acts[:, train], acts[:, test], labels[train], labels[test]
        curves = {}
        w, b = fit_logistic(x_tr, y_tr, l2=L2)
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
        meta = ctx.sources.get("cities_meta", {})  # filled by the audit's own statement source only
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
             Series("mass-mean, whitened (LDA)", layers, curves["mass_mean_whitened"])], reference=0.5,
            reference_label="chance", bands=[Band(0.71, 0.83, "literature, 7B models", "arXiv 2304.13734")]))
        best_lr = max(curves["logistic"])
        self._selectivity(ctx, result, acts, labels, subjects)
        self._mlp_gap(ctx, result, (x_tr, y_tr, [subjects[i] for i in train.tolist()]), (x_te, y_te),
                      curves["logistic"])
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

    def _selectivity(self, ctx: AuditContext, result: SectionResult, acts, labels, subjects) -> None:
        """Control task over cities: each city gets one random label for both of its statements."""
        k = 5 if len(labels) >= 20 else 2
        found = selectivity(acts, labels, subjects, k=k, method="logistic", l2=L2, seed=ctx.seed)
        layers = list(range(acts.shape[0]))
        for layer in layers:
            result.metrics.append(Metric("truth_task_accuracy_ungrouped", float(found.task[layer]), "fraction",
                                         layer=layer))
            result.metrics.append(Metric("truth_control_accuracy", float(found.control[layer]), "fraction",
                                         layer=layer))
            result.metrics.append(Metric("truth_selectivity", float(found.selectivity[layer]), "accuracy points",
                                         "linear probes are selective (qualitative)", CONTROL_SOURCE, layer=layer))
        best = int(found.task.argmax())
        result.metrics.append(Metric(
            "truth_selectivity_at_best_layer", float(found.selectivity[best]), "accuracy points",
            "linear probes are selective (qualitative)", CONTROL_SOURCE,
            note=f"block {best}: task {float(found.task[best]):.2f}, control {float(found.control[best]):.2f}"))
        result.figures.append(Figure(
            "truth_selectivity", "Task vs control-task accuracy of the logistic probe (arXiv 1909.03368)",
            "block", "accuracy",
            [Series("task", layers, found.task.tolist()), Series("control task", layers, found.control.tolist()),
             Series("selectivity", layers, found.selectivity.tolist())], reference=0.5))
        result.notes.append(
            f"Control task: each city gets one random label (same balance as true/false) for both of its "
            f"statements; {k}-fold cross-validation over statements, not cities, so a city seen in training can "
            "recur in testing and a probe that memorises cities scores above chance on the control. Selectivity = "
            f"task − control accuracy on those folds; at block {best} it is {float(found.selectivity[best]):+.2f}. "
            + ("A probe memorising cities would score well on the control; this one stays close to chance, so "
               "its task accuracy is not memorisation." if float(found.control[best]) < 0.6 else
               "The control accuracy is well above chance: the probe can memorise cities, so part of its task "
               "accuracy may be memorisation."))

    def _mlp_gap(self, ctx: AuditContext, result: SectionResult, train, test, linear: list[float]) -> None:
        """A one-hidden-layer MLP probe at a few layers: how much a linear read misses."""
        x_tr, y_tr, groups = train
        x_te, y_te = test
        n_layers = x_tr.shape[0]
        best = max(range(n_layers), key=lambda i: linear[i])
        chosen = sorted({round(i * (n_layers - 1) / 3) for i in range(4)} | {best})
        probe = fit_mlp(x_tr[chosen], y_tr, groups=groups, seed=ctx.seed)
        mlp_acc = probe.accuracy(x_te[chosen], y_te).tolist()
        gaps = [m - linear[layer] for m, layer in zip(mlp_acc, chosen)]
        for layer, acc, gap in zip(chosen, mlp_acc, gaps):
            result.metrics.append(Metric("truth_mlp_accuracy", acc, "fraction", layer=layer))
            result.metrics.append(Metric("truth_mlp_minus_linear_accuracy", gap, "accuracy points",
                                         "MLP probes match linear ones in accuracy but are less selective "
                                         "(qualitative)", CONTROL_SOURCE, layer=layer))
        result.figures.append(Figure(
            "truth_mlp_vs_linear", "Held-out accuracy: MLP probe (64 hidden units) vs logistic probe", "block",
            "accuracy", [Series("MLP", chosen, mlp_acc), Series("logistic", chosen, [linear[i] for i in chosen])],
            reference=0.5))
        largest = max(gaps)
        result.notes.append(
            f"MLP probe: 64 ReLU units, AdamW (weight decay 1e-2), early stopping on a fifth of the training cities, "
            f"at blocks {chosen}; largest gain over the logistic probe {largest:+.2f}"
            + (": the truth signal these layers carry is essentially linear." if largest <= 0.03 else
               ": part of the signal is readable only non-linearly."))
