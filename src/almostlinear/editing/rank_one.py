"""ROME: one fact, one rank-one update of one MLP down projection (arXiv 2202.05262).

1. Templates: the bare prompt and short prefixes the model writes (:mod:`.templates`).
2. Key ``k*``: the down projection's input at the subject's last token, averaged over templates.
3. Value: an offset ``δ`` on the layer's MLP output optimised so the model says the target
   (:mod:`.values`).
4. Update: ``ΔW = δ uᵀ`` with ``u = C⁻¹k* / (k*ᵀC⁻¹k*)``, the smallest change in the
   ``C``-weighted norm with ``(W + ΔW) k* = W k* + δ``. The same averaged ``k*`` is used in ``u`` and
   in the constraint, the fix of r-ROME (arXiv 2403.07175) for the "disabling edits" of the
   original code, where a bare-prompt key in the constraint could make ``uᵀk`` tiny.
"""

from __future__ import annotations

from typing import Any

from ..core.artifact import Provenance, Where
from ..core.digest import tensor_digest
from ..core.lever import parameter_value
from ..core.locate import is_conv1d
from ..core.models import fingerprint as model_fingerprint
from ..core.sites import Site
from .access import dense_down_proj, unpack
from .artifact import SITE, RankOneEdit
from .hparams import EditHyperParams, hparams_for
from .request import EditRequest, EditRequestError
from .solvers import rank_one_update
from .stats import KeyStatistics, key_statistics
from .subject import read_at_subject
from .templates import context_templates
from .tokens import target_ids
from .values import optimise_delta


def _request_dict(r: EditRequest) -> dict:
    return {"prompt": r.prompt, "subject": r.subject, "target": r.target, "true_target": r.true_target}


def _check_request(request) -> EditRequest:
    if not isinstance(request, EditRequest):
        raise EditRequestError(f"expected an EditRequest, got {type(request).__name__}")
    return request


def rome(model: Any, tokenizer, request: EditRequest, *, layer: int | None = None,
         stats: KeyStatistics | None = None, hparams: EditHyperParams | None = None,
         progress: bool = False) -> RankOneEdit:
    """A rank-one edit that makes ``model`` complete ``request.text`` with ``request.target``.

    ``layer`` defaults to ``hparams.layer`` or :func:`~.hparams.default_layer`; ``stats`` to
    :func:`~.stats.key_statistics` at that layer (cached). The model is not changed: use
    ``edit.apply(model)`` or ``edit.bake_(model)``. ``model`` is a module or a ``LoadedModel`` (whose
    tokenizer serves when ``tokenizer`` is None); a mixture-of-experts block is refused.
    """
    request = _check_request(request)
    view, tokenizer = unpack(model, tokenizer)
    model, structure = view.module, view.structure
    hp = hparams or hparams_for(structure)
    layer = layer if layer is not None else (hp.layer if hp.layer is not None else hparams_for(structure).layer)
    layer = structure.block(layer).index
    module = dense_down_proj(structure, layer)
    target_ids(tokenizer, request.target)  # a clear error before any work
    fp = model_fingerprint(model)
    if stats is None:
        stats = key_statistics(view, tokenizer, layer, n_tokens=hp.stats_tokens, progress=progress)
    if stats.dim != structure.d_mlp:
        raise EditRequestError(f"the statistics are {stats.dim} wide but layer {layer}'s keys are {structure.d_mlp}")
    if stats.layer != layer:
        raise EditRequestError(f"the statistics are for layer {stats.layer}, the edit is at layer {layer}")
    templates = context_templates(model, tokenizer, lengths=hp.prefix_lengths, n=hp.n_prefixes, seed=hp.seed,
                                  cache_key=view.fingerprint)
    key_site = Site("mlp_key", layer)
    keys = read_at_subject(model, tokenizer, [request], templates, [key_site], structure=structure)[key_site]
    key = keys[0].mean(0)  # [d_in], averaged over templates
    value = optimise_delta(model, tokenizer, request, Site("mlp_out", layer), templates, hp, structure=structure,
                           progress=progress)
    v, u = rank_one_update(stats.c, key, value.delta, relative_ridge=hp.ridge)
    # read through accelerate's store where the layer is offloaded (its parameters are meta tensors)
    stored = parameter_value(view, module.weight)
    weight = (stored.T if is_conv1d(module) else stored).detach().double().cpu()
    bias = getattr(module, "bias", None)
    current = weight @ key + (parameter_value(view, bias).detach().double().cpu() if bias is not None else 0.0)
    diagnostics = {
        "delta_norm": float(value.delta.norm()), "value_norm": value.init_norm, "steps": value.steps,
        "nll_before": value.nll_before, "nll_after": value.nll_after, "kl": value.kl,
        "target_prob_optimised": value.target_prob,
        "update_norm_ratio": float(v.norm() * u.norm() / weight.norm()),
        "key_spread": float((keys[0] - key).norm(dim=-1).mean() / key.norm()),
        "n_templates": len(templates), "stats_tokens": stats.n_tokens, "stats_stability": stats.stability,
        # does u = C⁻¹k* depend on which half of the text C came from? (1 = not at all)
        "u_split_half_cosine": float(stats.whitening_agreement(key[None], relative_ridge=hp.ridge)[0]),
    }
    provenance = Provenance(
        model_fingerprint=fp, where=Where(SITE, (layer,)), method="rome (r-ROME key)",
        data_hash=stats.content_hash, units="raw", extra={"hparams": hp.replace(layer=layer).to_dict()},
    )
    edit = RankOneEdit(
        a=u.float()[None, None], b=v.float()[None, :, None], keys=key.float()[None, None],
        base_hashes=[tensor_digest(stored)], stats_hashes=[stats.content_hash],
        requests=[_request_dict(request)], method="rome", diagnostics=diagnostics,
        value=(current + value.delta).float(), provenance=provenance,
    )
    # what writing the edit into this model's weights keeps of it at k* (large in half precision)
    diagnostics["realised_error"] = edit.realised_error(view, strict=False)[0]
    return edit
