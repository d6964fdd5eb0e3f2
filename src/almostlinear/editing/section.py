"""Audit section: a small battery of ROME edits on the audited model.

A handful of counterfactual single edits (:mod:`.counterfact`), each scored with the CounterFact
metrics of the ROME paper (ES/PS/NS and S, arXiv 2202.05262) and undone; the weights are hashed
before and after to verify an exact restore, and one edit is baked and undone as well. The linear
picture of the edit is then tested on the neighbours: a rank-one update ``ΔW = v uᵀ`` moves the
layer's output for any key ``k`` by ``(uᵀk)·v``, so ``r = uᵀk_n`` (with ``uᵀk* = 1`` for the edited
subject) predicts how much of the edit leaks to a neighbour. The section compares ``r`` with the
observed gain of the new target's log-probability on each neighbour prompt.

The key statistics come from the audit's shared pass over neutral text (no extra forward pass).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from ..core.artifact import Provenance
from ..core.collect import Batch
from ..core.errors import AlmostLinearError, EmptyDataError, LeverError
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.section import AuditContext, Need, Section
from ..core.sites import Site
from ..data.facts import Fact
from .access import dense_down_proj, refuse_moe
from .artifact import KeyStatistics
from .counterfact import CITY_IN_COUNTRY, CounterfactCase, Relation, counterfact_cases
from .eval import ROME_GPT2_MEDIUM, ROME_SOURCE, EditEvaluation, evaluate_edits, rank_correlation, weights_digest
from .hparams import hparams_for
from .moments import SecondMoment
from .request import EditRequest
from .stats import _from_moments

# GPT-2 Medium unedited NS 74.9 vs ROME 71.8 (arXiv 2202.05262, Table 5): the neighbourhood cost of one edit.
ROME_NS_DROP = 71.8 - 74.9


def _settings(quick: bool) -> dict[str, Any]:
    """Quick: 3 edits, 12 value steps over 3 templates (about 35 s at one torch thread on SmolLM2-135M);
    full: 10 edits with ROME's settings (25 steps, 11 templates)."""
    if quick:
        return {"edits": 3, "neighbours": 5, "candidates": 60, "hparams": {"n_prefixes": 1, "v_steps": 12}}
    return {"edits": 10, "neighbours": 10, "candidates": 200, "hparams": {}}


def _template(text: str, subject: str) -> str:
    start = text.rfind(subject)
    return text[:start] + "{}" + text[start + len(subject):]


def predicted_reach(model, tokenizer, case: CounterfactCase, edit, *, structure=None) -> dict[str, list[float]]:
    """``uᵀk`` at the subject's last token of a case's bare rewrite prompt, paraphrases and neighbours.

    ``u`` is a rank-one edit's key direction, scaled so ``uᵀk* = 1`` for the edited subject: the
    layer's output moves by exactly ``(uᵀk)·v`` for any key ``k``, so ``uᵀk`` is the share of the edit
    a prompt receives at its subject token. Keys sit upstream of the edited weight, so they read the
    same with the edit applied or not.
    """
    from ..core.locate import locate
    from .subject import read_at_subject

    structure = structure or locate(model)
    site = Site("mlp_key", edit.layers[0])
    requests = [case.request]
    requests += [EditRequest(_template(p, case.subject), case.subject, case.target_new)
                 for p in case.paraphrase_prompts]
    requests += [EditRequest(_template(p, s), s, case.target_new)
                 for p, s in zip(case.neighbourhood_prompts, case.neighbourhood_subjects)]
    with torch.no_grad():
        keys = read_at_subject(model, tokenizer, requests, ["{}"], [site], structure=structure)[site][:, 0]
    reach = (keys.double().cpu() @ edit.a[0, 0].double().cpu()).tolist()
    k = 1 + len(case.paraphrase_prompts)
    return {"reach_rewrite": reach[0], "reach_paraphrase": reach[1:k], "reach_neighbour": reach[k:]}


class EditingSection(Section):
    """ROME single edits: efficacy, generalisation, specificity, exact undo, predicted versus observed bleed.

    ``relation``, ``facts`` and ``require_known`` replace the packaged city facts (for tests on
    models that know no geography); ``edits`` overrides the number of edits the budget implies and
    ``hparams`` the edit settings it implies (e.g. ``{"v_steps": 4}`` for a fast check).
    """

    id = "editing"
    title = "Rank-one fact edits (ROME)"

    def __init__(self, *, relation: str | Relation = CITY_IN_COUNTRY, facts: Sequence[Fact] | None = None,
                 require_known: bool = True, edits: int | None = None, hparams: dict[str, Any] | None = None) -> None:
        self.relation, self.facts, self.require_known, self.edits = relation, facts, require_known, edits
        self.hparams = dict(hparams or {})
        if {"layer", "layers"} & set(self.hparams):
            # the key statistics are gathered at the default layer during the audit's shared pass
            raise AlmostLinearError("the editing section edits at the default layer; 'layer' cannot be overridden "
                                    "(run rome(..., layer=...) yourself to edit another one)")

    def applicable(self, ctx: AuditContext) -> str | None:
        if not ctx.causal:
            return "fact edits need a causal language model"
        try:
            refuse_moe(ctx.structure, int(hparams_for(ctx.structure).layer))
        except LeverError as error:
            return str(error)
        return None

    def needs(self, ctx: AuditContext) -> list[Need]:
        hp = hparams_for(ctx.structure)
        self.layer = int(hp.layer)
        self.site = Site("mlp_key", self.layer)
        self.halves = (SecondMoment(ctx.structure.d_mlp), SecondMoment(ctx.structure.d_mlp))
        return [Need("neutral", (self.site,), positions="all")]

    def consume(self, source: str, batch: Batch) -> None:
        keys = batch.activations[self.site]
        odd = (batch.text_index % 2).bool().to(keys.device)
        self.halves[0].update(keys[~odd])
        self.halves[1].update(keys[odd])

    def _statistics(self, ctx: AuditContext) -> KeyStatistics:
        provenance = Provenance(model_fingerprint=ctx.loaded.fingerprint, method="uncentred second moment, float64",
                                data_hash="audit neutral texts")
        return _from_moments(*self.halves, self.layer, "audit:neutral", provenance)

    def finish(self, ctx: AuditContext) -> SectionResult:
        from .rank_one import rome

        result = SectionResult(self.id, self.title)
        settings = _settings(ctx.quick)
        if self.edits is not None:
            settings["edits"] = self.edits
        settings["hparams"].update(self.hparams)
        model, tokenizer = ctx.loaded.model, ctx.loaded.tokenizer
        stats = self._statistics(ctx)
        hp = hparams_for(ctx.structure, layer=self.layer, **settings["hparams"])
        began = time.perf_counter()
        try:
            cases = counterfact_cases(model, tokenizer, settings["edits"], relation=self.relation, facts=self.facts,
                                      candidates=settings["candidates"], n_neighbours=settings["neighbours"],
                                      require_known=self.require_known, max_per_answer=1, seed=ctx.seed)
        except EmptyDataError as error:
            return SectionResult(self.id, self.title, status="skipped",
                                 notes=[f"no fact this model knows could be edited: {error}"])
        case_seconds = time.perf_counter() - began
        kept: list[Any] = []

        def editor(requests: list[EditRequest]):
            return rome(model, tokenizer, requests[0], stats=stats, hparams=hp)

        def bleed(chunk: Sequence[CounterfactCase], edit) -> dict:
            kept.append(edit)
            return {c.case_id: predicted_reach(model, tokenizer, c, edit, structure=ctx.structure) for c in chunk}

        evaluation = evaluate_edits(model, tokenizer, cases, editor, on_edit=bleed, seed=ctx.seed)
        baked_ok = self._bake_and_undo(model, kept[0], ctx.structure) if kept else None
        self._scores(result, evaluation)
        self._undo(result, evaluation, baked_ok)
        self._bleed(result, evaluation)
        diag = [e.diagnostics for e in kept]
        result.metrics += [
            Metric("edit_layer", self.layer, "block", note=f"of {ctx.structure.n_layers}; ROME edits at 15-35 % of "
                   "the depth in published configurations"),
            Metric("update_norm_ratio", _mean([d.get("update_norm_ratio", float("nan")) for d in diag]), "ratio",
                   note="‖ΔW‖_F / ‖W‖_F of the down projection, mean over edits"),
            Metric("key_statistics_tokens", stats.n_tokens, "tokens",
                   note=f"split-half stability ‖C_A − C_B‖/‖C‖ = {stats.stability:.3f}"),
            Metric("seconds_per_edit", _mean([r.seconds for r in evaluation.cases]), "s",
                   note="value optimisation, update and scoring"),
        ]
        result.notes += [
            f"{len(cases)} single ROME edits at block {self.layer} on facts the model knows ('{cases[0].prompt}' "
            f"→ a country it ranks first among {settings['candidates']} candidate cities' countries); each "
            f"counterfactual target starts with another token than the true one. Per edit: 1 rewrite prompt, "
            f"{len(cases[0].paraphrase_prompts)} paraphrases, up to {settings['neighbours']} neighbours (cities "
            f"sharing the true country). Building the cases took {case_seconds:.0f} s.",
            f"Value optimisation: {hp.v_steps} Adam steps over {1 + len(hp.prefix_lengths) * hp.n_prefixes} "
            f"templates; C from {stats.n_tokens} tokens of the audit's neutral text (ROME used ~44M Wikipedia "
            "tokens; 2-10 × d_mlp keys suffice per arXiv 2506.04226).",
            "Metrics as in ROME's CounterFact code: length-normalised target probabilities, ×100. Reference: ROME "
            "on GPT-2 Medium (345M), the nearest published size (arXiv 2202.05262, Table 5). "
            f"With {len(cases)} cases one case moves a score by {100 / len(cases):.0f} points.",
        ]
        return result

    @staticmethod
    def _bake_and_undo(model, edit, structure) -> bool:
        # Two full digests prove the exact restore; whether bake_ wrote anything only needs the edited weight.
        before = weights_digest(model)
        weight = dense_down_proj(structure, edit.layer).weight
        original = weight.detach().clone()
        baked = edit.bake_(model, structure=structure)
        changed = not torch.equal(weight, original)
        baked.undo_()
        return changed and weights_digest(model) == before

    @staticmethod
    def _scores(result: SectionResult, ev: EditEvaluation) -> None:
        names = {"es": ("ES", "efficacy score"), "ps": ("PS", "paraphrase score"), "ns": ("NS", "neighbourhood score"),
                 "s": ("S", "harmonic mean of ES, PS, NS"), "em": ("EM", "efficacy magnitude"),
                 "pm": ("PM", "paraphrase magnitude"), "nm": ("NM", "neighbourhood magnitude")}
        for key, (label, what) in names.items():
            result.metrics.append(Metric(f"edit_{key}", getattr(ev.post, key), "percent", ROME_GPT2_MEDIUM[label],
                                         ROME_SOURCE, note=f"{what}, after the edit; reference: ROME on GPT-2 Medium"))
            result.metrics.append(Metric(f"unedited_{key}", getattr(ev.pre, key), "percent",
                                         note=f"{what} of the unedited model on the same cases"))
        result.metrics.append(Metric("edit_ns_change", ev.post.ns - ev.pre.ns, "points", round(ROME_NS_DROP, 1),
                                     ROME_SOURCE, note="NS after minus before (GPT-2 Medium: 74.9 → 71.8)"))
        result.metrics.append(Metric("edits", ev.post.n_cases, "edits"))

    @staticmethod
    def _undo(result: SectionResult, ev: EditEvaluation, baked_ok: bool | None) -> None:
        result.metrics.append(Metric("undo_exact", float(bool(ev.restored)), "fraction",
                                     note="1 = every weight bit for bit as before, after all edits were applied "
                                          "and exited"))
        if baked_ok is not None:
            result.metrics.append(Metric("bake_undo_exact", float(baked_ok), "fraction",
                                         note="1 = bake_ changed the weights and undo_ restored them bit for bit"))

    @staticmethod
    def _bleed(result: SectionResult, ev: EditEvaluation) -> None:
        reach, gain = [], []
        para_reach = []
        own = [r.extra["reach_rewrite"] for r in ev.cases if "reach_rewrite" in r.extra]
        for r in ev.cases:
            reach += r.extra.get("reach_neighbour", [])
            para_reach += r.extra.get("reach_paraphrase", [])
            gain += [pre - post for pre, post in zip(r.pre.neighbour_new, r.post.neighbour_new)]
        if not reach:
            return
        rho = rank_correlation(reach, gain)
        result.metrics += [
            Metric("bleed_rank_correlation", rho, "Spearman ρ",
                   "positive if the edit's reach is linear in uᵀk",
                   note=f"uᵀk_n (predicted share of the edit a neighbour receives) vs the observed gain of "
                        f"log P(new target) per token on its prompt, over {len(reach)} neighbours"),
            Metric("neighbour_reach_mean", _mean(reach), "uᵀk", note="1 = the neighbour receives the whole edit"),
            Metric("paraphrase_reach_mean", _mean(para_reach), "uᵀk",
                   note="same subject, other wording: near 1 when the key depends on the subject only"),
            Metric("rewrite_reach_mean", _mean(own), "uᵀk",
                   note="the bare rewrite prompt: 1 would mean its key equals the template-averaged key the "
                        "edit was solved for; below 1 the prompt receives only part of the edit"),
        ]
        pairs = sorted(zip(reach, gain))
        result.figures.append(Figure(
            "edit_bleed", "Neighbour bleed: predicted reach uᵀk_n vs observed gain of log P(new target)",
            "uᵀk_n (predicted share of the edit)", "Δ log P(new) per token (nats)",
            [Series("neighbours", [p[0] for p in pairs], [p[1] for p in pairs])], reference=0.0))
        result.notes.append(
            f"Bleed: across {len(reach)} neighbours, Spearman ρ = {rho:+.2f} between the linear prediction uᵀk_n and "
            f"the observed gain of the new target; mean reach {_mean(reach):.2f} on neighbours versus "
            f"{_mean(para_reach):.2f} on paraphrases of the edited subject and {_mean(own):.2f} on the bare "
            "rewrite prompt.")


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")
