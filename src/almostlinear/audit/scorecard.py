"""The verdict at the top of a report: the claims of the linear picture that this audit tests.

Each claim names the one number that tests it (a metric of one section), the literature's value
and source, and two thresholds. The verdict rule is the same for every row and is printed with
the scorecard (:data:`RULE`):

* **holds**: the number reaches the claim's ``holds`` threshold (set at, or near, the literature's
  value);
* **partly**: it reaches only the weaker ``partly`` threshold (clearly away from the null result:
  chance accuracy, a random map, no effect);
* **fails**: it reaches neither;
* **not tested**: the section was skipped or failed, or did not report the number.

The thresholds belong to this library, not to the papers: the papers give the reference values,
measured on other (usually larger) models, shown beside each row.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.report import Metric, SectionResult

RULE = ("holds: the number reaches the row's 'holds' threshold (at or near the literature's value); "
        "partly: it reaches only the weaker 'partly' threshold (clearly better than the null result: chance, "
        "no effect, a random map); fails: neither; not tested: the section was skipped or failed, or did not "
        "report the number. Thresholds are this library's; the literature's values come from other, usually "
        "larger, models.")

VERDICTS = ("holds", "partly", "fails", "not tested")


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    section: str
    metrics: tuple[str, ...]  # the first one reported wins; per-layer metrics take their best layer
    holds: float
    partly: float
    higher_is_better: bool = True
    literature: str = ""  # used when the metric carries no reference of its own
    source: str = ""
    relative_to: str | None = None  # a metric of the same section subtracted before the thresholds
    best_of: bool = False  # take the best of all listed metrics instead of the first found


CLAIMS: tuple[Claim, ...] = (
    Claim("layers_linear", "Transformer layers are almost linear maps", "interlayer_linearity",
          ("linearity_in_sample_mean",), holds=0.97, partly=0.85, literature="0.99", source="arXiv 2405.12250"),
    Claim("linear_lens", "The residual stream is read by a linear lens", "logit_lens",
          ("share_of_states_where_affine_beats_logit",), holds=0.9, partly=0.5,
          literature="a tuned lens is more predictive than the logit lens at every layer", source="arXiv 2303.08112"),
    Claim("truth_linear", "Truth is linearly readable", "truth_probes",
          ("truth_logistic_best_accuracy", "truth_mass_mean_best_accuracy", "truth_mass_mean_whitened_best_accuracy"),
          holds=0.71, partly=0.6, literature="0.71–0.83 (7B models)", source="arXiv 2304.13734", best_of=True),
    Claim("unsupervised_truth", "Truth directions can be found without labels", "truth_directions",
          ("truth_ccs_best_accuracy", "truth_contrast_pca_best_accuracy"), holds=0.7, partly=0.6,
          literature="CCS about 4 points above zero-shot on average", source="arXiv 2212.03827", best_of=True),
    # CAA's sycophancy curve on Llama-2-7B-chat (arXiv 2312.06681): R² 0.964 of a line through its 5 points.
    Claim("steering_linear", "Steering is linear in its dose", "steering", ("steering_linearity_r2",),
          holds=0.9, partly=0.7, literature="R² 0.964 (CAA, Llama-2-7B-chat)", source="arXiv 2312.06681"),
    Claim("rank_one_edit", "A rank-one edit rewrites a fact", "editing", ("edit_es",), holds=90.0, partly=60.0,
          literature="100 % efficacy (GPT-2 Medium)", source="arXiv 2202.05262"),
    Claim("erasure_chance", "Linear erasure leaves probes at chance", "erasure",
          ("erasure_max_probe_accuracy_after",), holds=0.05, partly=0.15, higher_is_better=False,
          literature="chance accuracy", source="arXiv 2306.03819", relative_to="erasure_chance_accuracy"),
    Claim("weight_alignment", "Aligned networks average without a barrier (re-basin)", "weight_space",
          ("digits_weight_matching_barrier",), holds=2.0, partly=10.0, higher_is_better=False,
          literature="near 0 after alignment for wide MLPs", source="arXiv 2209.04836"),
    Claim("task_vectors", "Task vectors add and negate", "weight_space",
          ("digits_task_addition_normalized_accuracy",), holds=0.76, partly=0.5, source="arXiv 2310.02575"),
    Claim("tangent_linear", "Fine-tuning stays in the tangent space", "tangent", ("tangent_explained_a1",),
          holds=0.9, partly=0.5, literature="not fully linear for fine-tuned CLIP models", source="arXiv 2305.12827"),
    Claim("model_maps", "Linear maps translate between models", "translate", ("to_model_affine_r2_held_out",),
          holds=0.7, partly=0.3, literature="a single linear map suffices", source="arXiv 2209.15162"),
    Claim("latent_arithmetic", "Latent arithmetic transfers attributes", "latent",
          ("attribute_transfer_success",), holds=0.7, partly=0.4,
          literature="interpolations stay on the data manifold", source="arXiv 1609.04468"),
    Claim("sparse_features", "Activations decompose into sparse linear features", "sae", ("sae_fvu",),
          holds=0.23, partly=0.5, higher_is_better=False, literature="0.001–0.23 (GPT-2 small)",
          source="SAELens registry"),
)


def _find(section: SectionResult, name: str, higher_is_better: bool) -> Metric | None:
    """The summary metric ``name``, else the best of its per-layer values."""
    found = [m for m in section.metrics if m.name == name and isinstance(m.value, (int, float))]
    if not found:
        return None
    summary = [m for m in found if m.layer is None]
    if summary:
        return summary[0]
    pick = max if higher_is_better else min
    return pick(found, key=lambda m: m.value)


def _reference_text(metric: Metric | None, claim: Claim) -> str:
    from .report import format_reference

    if metric is not None and isinstance(metric.reference, (int, float, list)):
        return format_reference(metric.reference)
    if claim.literature:
        return claim.literature
    return str(metric.reference) if metric is not None and metric.reference is not None else ""


def judge(value: float, claim: Claim) -> str:
    better = (lambda v, t: v >= t) if claim.higher_is_better else (lambda v, t: v <= t)
    if better(value, claim.holds):
        return "holds"
    if better(value, claim.partly):
        return "partly"
    return "fails"


def rule_text(claim: Claim) -> str:
    sign = "≥" if claim.higher_is_better else "≤"
    shift = f" above {claim.relative_to.replace('_', ' ')}" if claim.relative_to else ""
    return f"holds if {sign} {claim.holds:g}{shift}; partly if {sign} {claim.partly:g}{shift}"


def score(sections: list[SectionResult]) -> dict:
    """The scorecard of an audit: ``{"rule": str, "rows": [...]}``, one row per claim in :data:`CLAIMS`."""
    by_id = {s.id: s for s in sections}
    rows = []
    for claim in CLAIMS:
        section = by_id.get(claim.section)
        row = {"id": claim.id, "claim": claim.claim, "section": claim.section, "metric": claim.metrics[0],
               "value": None, "unit": "", "layer": None, "literature": claim.literature,
               "source": claim.source, "verdict": "not tested", "rule": rule_text(claim), "note": ""}
        rows.append(row)
        if section is None:
            row["note"] = "section not run"
            continue
        if section.status != "ok":
            row["note"] = f"section {section.status}"
            continue
        candidates = [m for name in claim.metrics if (m := _find(section, name, claim.higher_is_better))]
        if not candidates:
            row["note"] = "the section did not report this number"
            continue
        pick = max if claim.higher_is_better else min
        metric = pick(candidates, key=lambda m: m.value) if claim.best_of else candidates[0]
        value = float(metric.value)
        tested = value
        if claim.relative_to is not None:
            base = _find(section, claim.relative_to, True)
            if base is None:
                row["note"] = f"the section did not report {claim.relative_to}"
                continue
            tested = value - float(base.value)
        row.update(metric=metric.name, value=value, unit=metric.unit, layer=metric.layer,
                   literature=_reference_text(metric, claim), source=metric.source or claim.source,
                   verdict=judge(tested, claim))
        if metric.layer is not None:
            row["note"] = f"best layer: {metric.layer}"
        elif metric.note:
            row["note"] = metric.note
    return {"rule": RULE, "rows": rows}


def tested(scorecard: dict) -> list[dict]:
    return [row for row in scorecard["rows"] if row["verdict"] != "not tested"]
