"""MEMIT (arXiv 2210.07229) and AlphaEdit (arXiv 2410.02355): many facts across several layers.

Both optimise, per fact, a target ``z`` for the residual stream after the last edited layer (the
same loss as ROME's value, :mod:`.values`), then walk the layers in order: read the keys and the
current residual at the subject with the edits so far in place, spread the remaining gap
``(z − h) / (layers left)`` over this layer, and solve for its update in closed form. MEMIT solves
the ``λ C``-regularised least squares; AlphaEdit projects the update onto the null space of the
preserved keys' second moment so that ``ΔW k0 = 0`` for them. The model is restored on return.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core.artifact import Provenance, Where
from ..core.digest import tensor_digest
from ..core.errors import EmptyDataError, ShapeError
from ..core.lever import parameter_name, parameter_value, temporarily_changed
from ..core.locate import linear_weight
from ..core.models import fingerprint as model_fingerprint
from ..core.sites import Site
from .access import dense_down_proj, unpack
from .artifact import SITE, KeyStatistics, LowRankEdit, written
from .hparams import EditHyperParams, hparams_for
from .request import EditRequest, EditRequestError
from .rank_one import _request_dict
from .solvers import alphaedit_update, memit_update, null_space
from .stats import key_statistics
from .subject import read_at_subject
from .templates import context_templates
from .tokens import target_ids
from .values import optimise_deltas


def _stats_for(model, tokenizer, layers, stats, hp, progress) -> dict[int, KeyStatistics]:
    if stats is None:
        return key_statistics(model, tokenizer, list(layers), n_tokens=hp.stats_tokens, progress=progress)
    if isinstance(stats, KeyStatistics):
        stats = {stats.layer: stats}
    missing = [l for l in layers if l not in stats]
    if missing:
        raise EditRequestError(f"no key statistics given for layers {missing}")
    return dict(stats)


def _preserved_gram(previous: Sequence[LowRankEdit], layer: int, dim: int) -> torch.Tensor | None:
    """``Σ k kᵀ`` of the keys earlier edits wrote at ``layer`` (None if none edited it)."""
    gram = None
    for edit in previous:
        if layer in edit.layers:
            keys = edit.keys[edit.layers.index(layer)].double()
            if keys.shape[-1] != dim:
                raise ShapeError(f"a previous {edit.method} edit has {keys.shape[-1]}-wide keys at layer {layer}, "
                                 f"this layer's are {dim}: it belongs to another model")
            gram = keys.T @ keys if gram is None else gram + keys.T @ keys
    return gram


def _batch_edit(model: Any, tokenizer, requests: Sequence[EditRequest], *, layers, stats, hparams,
                method: str, previous: Sequence[LowRankEdit], progress: bool) -> LowRankEdit:
    requests = list(requests)
    if not requests:
        raise EmptyDataError("no edit requests given")
    view, tokenizer = unpack(model, tokenizer)
    model, structure = view.module, view.structure
    for r in requests:
        if not isinstance(r, EditRequest):
            raise EditRequestError(f"expected EditRequest objects, got {type(r).__name__}")
        target_ids(tokenizer, r.target)
    hp = hparams or hparams_for(structure)
    chosen = layers if layers is not None else (hp.layers or hparams_for(structure).layers)
    layers = sorted({structure.block(int(l)).index for l in chosen})
    modules = [dense_down_proj(structure, l) for l in layers]  # refuses mixture-of-experts blocks first
    fp = model_fingerprint(model)
    stats = _stats_for(view, tokenizer, layers, stats, hp, progress)
    templates = context_templates(model, tokenizer, lengths=hp.prefix_lengths, n=hp.n_prefixes, seed=hp.seed,
                                  cache_key=view.fingerprint)
    z_site = Site("resid_post", layers[-1])
    results = optimise_deltas(model, tokenizer, requests, z_site, templates, hp, structure=structure, lr=hp.z_lr,
                              clamp_norm_factor=hp.z_clamp_norm_factor, progress=progress)
    deltas = torch.stack([res.delta for res in results])  # [n, d_model]
    z = read_at_subject(model, tokenizer, requests, templates, [z_site], structure=structure)[z_site].mean(1) + deltas

    base_hashes = [tensor_digest(parameter_value(view, m.weight)) for m in modules]
    a_list, b_list, key_list, per_layer = [], [], [], []
    # each layer's update is solved with the earlier ones in place; the weights come back bit for bit
    with temporarily_changed(view, [parameter_name(model, m.weight) for m in modules], lambda: None):
        for i, (layer, module) in enumerate(zip(layers, modules)):
            key_site = Site("mlp_key", layer)
            read = read_at_subject(model, tokenizer, requests, templates, [key_site, z_site], structure=structure)
            keys = read[key_site].mean(1)  # [n, d_in]
            gap = z - read[z_site].mean(1)
            residuals = gap / (len(layers) - i)
            c = stats[layer].c
            preserved = _preserved_gram(previous, layer, c.shape[0])
            info = {"layer": layer, "gap_norm": float(gap.norm(dim=-1).mean())}
            if method == "alphaedit":
                projector, dim = null_space(c, energy=hp.nullspace_energy)
                b, a = alphaedit_update(projector, keys, residuals, l2=hp.l2, preserved=preserved)
                info["null_space_dim"] = dim
            else:
                b, a = memit_update(c, keys, residuals, weight=hp.mom2_update_weight, preserved=preserved)
            weight = linear_weight(module)
            delta = b @ a
            info["update_norm_ratio"] = float(delta.norm() / weight.detach().double().norm())
            with torch.no_grad():  # as apply writes it, so later layers are solved against the same weights
                weight.copy_(written(weight, delta))
            a_list.append(a.float())
            b_list.append(b.float())
            key_list.append(keys.float())
            per_layer.append(info)
        final = read_at_subject(model, tokenizer, requests, templates, [z_site], structure=structure)[z_site].mean(1)
        reached = 1.0 - float((z - final).norm(dim=-1).mean() / deltas.norm(dim=-1).mean().clamp_min(1e-12))
    diagnostics = {
        "layers": per_layer, "target_reached": reached, "n_templates": len(templates),
        "mean_delta_norm": float(deltas.norm(dim=-1).mean()),
        "mean_target_prob_optimised": sum(r.target_prob for r in results) / len(results),
        "stats_tokens": [stats[l].n_tokens for l in layers],
        "stats_stability": [stats[l].stability for l in layers],
        "n_previous": len(previous),
    }
    provenance = Provenance(
        model_fingerprint=fp, where=Where(SITE, tuple(layers)), method=method,
        data_hash=",".join(stats[l].content_hash for l in layers), units="raw",
        extra={"hparams": hp.replace(layers=tuple(layers)).to_dict()},
    )
    edit = LowRankEdit(
        a=torch.stack(a_list), b=torch.stack(b_list), keys=torch.stack(key_list),
        base_hashes=base_hashes, stats_hashes=[stats[l].content_hash for l in layers],
        requests=[_request_dict(r) for r in requests], method=method, diagnostics=diagnostics,
        provenance=provenance,
    )
    # what writing the edit into this model's weights keeps of it at the keys (large in half precision)
    for info, error in zip(per_layer, edit.realised_error(view, strict=False)):
        info["realised_error"] = error
    return edit


def memit(model: Any, tokenizer, requests: Sequence[EditRequest], *, layers: Sequence[int] | None = None,
          stats: dict[int, KeyStatistics] | None = None, hparams: EditHyperParams | None = None,
          previous: Sequence[LowRankEdit] = (), progress: bool = False) -> LowRankEdit:
    """One low-rank edit writing all ``requests`` across ``layers`` (default: five ending at the ROME
    layer). ``previous`` edits' keys are added to the preserved moment (sequential batches)."""
    return _batch_edit(model, tokenizer, requests, layers=layers, stats=stats, hparams=hparams, method="memit",
                       previous=previous, progress=progress)


def alphaedit(model: Any, tokenizer, requests: Sequence[EditRequest], *, layers: Sequence[int] | None = None,
              stats: dict[int, KeyStatistics] | None = None, hparams: EditHyperParams | None = None,
              previous: Sequence[LowRankEdit] = (), progress: bool = False) -> LowRankEdit:
    """Like :func:`memit`, with each layer's update confined to the null space of ``C``'s smallest
    eigenvectors holding ``hparams.nullspace_energy`` of its trace (a relative threshold), and the
    keys of ``previous`` edits kept fixed as well (AlphaEdit's sequential editing)."""
    return _batch_edit(model, tokenizer, requests, layers=layers, stats=stats, hparams=hparams,
                       method="alphaedit", previous=previous, progress=progress)
