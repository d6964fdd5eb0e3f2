"""Prediction from linearity: an edit moves any other key by exactly ``ΔW k``.

For a rank-one edit ``ΔW = v uᵀ`` (with ``uᵀk* = 1``) the down projection's output for another
subject's key ``k_n`` moves by ``(uᵀk_n) v``: the coefficient ``uᵀk_n`` is the predicted bleed,
as a fraction of the edit written for the subject itself. This module reads ``k_n`` from the
unedited model, states the prediction, and puts beside it what the edited model does: the
observed change of the down projection's output there, and of the target's log-probability.
At the edited layer the two shifts agree to rounding when nothing upstream changed; for
multi-layer edits later layers' keys move too, and the gap measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.collect import model_device
from ..core.hooks import record
from ..core.sites import Site
from .access import refuse_moe, unpack
from .artifact import LowRankEdit
from .request import EditRequest, EditRequestError
from .subject import Prompt, encode
from .tokens import locate_subject, pad_id, pad_right, target_ids


@dataclass(frozen=True)
class ShiftPrediction:
    """One prompt at one edited layer: the predicted and the observed shift of ``mlp_out``."""

    text: str
    subject: str
    layer: int
    coefficients: list[float]  # A k_n: for a rank-one edit the single number uᵀk_n
    predicted_norm: float
    observed_norm: float
    cosine: float
    relative_error: float  # ‖observed − predicted‖ / ‖predicted‖
    target_logprob_before: float
    target_logprob_after: float

    @property
    def coefficient(self) -> float:
        """``uᵀk_n`` of a rank-one edit (the first coefficient otherwise)."""
        return self.coefficients[0]


def _as_prompt(tokenizer, item) -> tuple[str, str, Prompt]:
    if isinstance(item, EditRequest):
        text = item.text
        return text, item.subject, encode(tokenizer, "{}", item.prompt, item.subject)
    if isinstance(item, (tuple, list)) and len(item) == 2:
        text, subject = item
        if "{}" in text:
            return text.format(subject), subject, encode(tokenizer, "{}", text, subject)
        ids, index = locate_subject(tokenizer, text, subject)
        return text, subject, Prompt(ids, index)
    raise EditRequestError(f"expected an EditRequest or a (prompt, subject) pair, got {item!r}")


def predicted_shift(edit: LowRankEdit, model: Any, tokenizer, prompts: Sequence, *,
                    target: str | None = None, strict: bool = True) -> list[ShiftPrediction]:
    """Predicted ``ΔW k_n`` beside the observed change, for each prompt and edited layer.

    ``prompts`` are :class:`EditRequest` objects or ``(prompt, subject)`` pairs (a prompt with
    ``{}`` or a text containing the subject). ``target`` (default: the edit's first target) is
    the continuation whose log-probability is reported before and after the edit. ``model`` is a
    module or a ``LoadedModel`` (whose tokenizer serves when ``tokenizer`` is None).
    """
    view, tokenizer = unpack(model, tokenizer)
    model, structure = view.module, view.structure
    for layer in edit.layers:
        refuse_moe(structure, layer)
    items = [_as_prompt(tokenizer, p) for p in prompts]
    if not items:
        raise EditRequestError("no prompts given")
    target = target if target is not None else (edit.requests[0]["target"] if edit.requests else None)
    tail = target_ids(tokenizer, target) if target else []
    rows = [p.ids + tail for _, _, p in items]
    ids, mask = pad_right(rows, pad_id(tokenizer))
    device = model_device(model)
    ids, mask = ids.to(device), mask.to(device)
    index = torch.tensor([p.subject_index for _, _, p in items], device=device)
    batch = torch.arange(len(items), device=device)
    sites = [Site(n, l) for l in edit.layers for n in ("mlp_key", "mlp_out")]

    def run():
        with torch.no_grad(), record(model, sites, keep_full=True, structure=structure) as rec:
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        reads = {s: rec.full(s)[0][batch, index].double().cpu() for s in sites}
        logp = torch.log_softmax(logits.double(), -1)
        scores = []
        for i, (_, _, p) in enumerate(items):
            start = len(p.ids) - 1
            scores.append(sum(float(logp[i, start + j, tok]) for j, tok in enumerate(tail)))
        return reads, scores

    before, lp_before = run()
    with edit.apply(model, strict=strict, structure=structure):
        after, lp_after = run()
    out = []
    for li, layer in enumerate(edit.layers):
        keys = before[Site("mlp_key", layer)]
        coeff = keys @ edit.a[li].double().T  # [n, r]
        predicted = coeff @ edit.b[li].double().T
        observed = after[Site("mlp_out", layer)] - before[Site("mlp_out", layer)]
        for i, (text, subject, _) in enumerate(items):
            pn, on = float(predicted[i].norm()), float(observed[i].norm())
            cos = float(torch.nn.functional.cosine_similarity(predicted[i], observed[i], dim=0)) if pn and on else 0.0
            out.append(ShiftPrediction(
                text=text, subject=subject, layer=layer, coefficients=[float(c) for c in coeff[i]],
                predicted_norm=pn, observed_norm=on, cosine=cos,
                relative_error=float((observed[i] - predicted[i]).norm()) / pn if pn else float("inf"),
                target_logprob_before=lp_before[i], target_logprob_after=lp_after[i],
            ))
    return out
