"""RegMean (arXiv 2212.09849): merge each linear layer by least squares on its inputs' Gram matrices.

For a linear layer y = W x that model i computes on inputs Xᵢ (rows are examples), the merged W*
minimises Σᵢ ‖Xᵢ Wᵀ − Xᵢ Wᵢᵀ‖², whose solution is W*ᵀ = (Σᵢ Gᵢ)⁻¹ Σᵢ Gᵢ Wᵢᵀ with Gᵢ = XᵢᵀXᵢ.
The paper shrinks the off-diagonal of each Gᵢ by α (α = 1 is plain least squares) for
stability. Parameters that are not linear-layer weights are averaged. RegMean only differs from
averaging when the models' input statistics differ: equal Gram matrices give the plain mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from ..core.errors import AlmostLinearError, EmptyDataError, NonFiniteError, ShapeError
from ..core.linalg import spd_solve
from . import methods
from .compat import check_compatible

Tensor = torch.Tensor


def regmean_weight(weights: Sequence[Tensor], grams: Sequence[Tensor], *, alpha: float = 0.9,
                   ridge: float = 1e-8) -> Tensor:
    """Merge one [out, in] weight from its per-model Gram matrices [in, in] (float64 solve)."""
    if not weights or len(weights) != len(grams):
        raise AlmostLinearError(f"{len(weights)} weights and {len(grams)} Gram matrices")
    if not 0.0 <= alpha <= 1.0:
        raise AlmostLinearError(f"alpha must lie in [0, 1], got {alpha}")
    d_in = weights[0].shape[1]
    total = torch.zeros(d_in, d_in, dtype=torch.float64)
    rhs = torch.zeros(d_in, weights[0].shape[0], dtype=torch.float64)
    for w, g in zip(weights, grams):
        if g.shape != (d_in, d_in):
            raise ShapeError(f"Gram matrix {tuple(g.shape)} does not fit a weight with {d_in} inputs")
        g = g.double()
        shrunk = alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g))
        total += shrunk
        rhs += shrunk @ w.double().T
    scale = float(torch.diagonal(total).mean()) or 1.0
    return spd_solve(total, rhs, ridge * scale).T.to(weights[0].dtype)


def regmean_merge(state_dicts: Sequence[Mapping[str, Tensor]], grams: Sequence[Mapping[str, Tensor]], *,
                  alpha: float = 0.9, ridge: float = 1e-8) -> dict[str, Tensor]:
    """Merge whole state dicts: weights named in the Gram dicts (``"<module>.weight"`` keys, as
    :func:`collect_grams` returns) by RegMean, everything else by the plain average."""
    if len(state_dicts) != len(grams):
        raise AlmostLinearError(f"{len(state_dicts)} state dicts but {len(grams)} sets of Gram matrices")
    keys = check_compatible(state_dicts)
    out = {k: _average([sd[k].detach() for sd in state_dicts], k) for k in keys}
    for name in grams[0]:
        if any(name not in g for g in grams):
            raise ShapeError(f"Gram matrix for {name!r} is missing for some model")
        if name not in out:
            raise ShapeError(f"Gram matrix given for {name!r}, which is not in the state dicts")
        out[name] = regmean_weight([sd[name] for sd in state_dicts], [g[name] for g in grams],
                                   alpha=alpha, ridge=ridge)
    return out


@torch.no_grad()
def collect_grams(model: torch.nn.Module, batches: Iterable[Mapping[str, Tensor]], *,
                  modules: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Σ xxᵀ of the inputs of every ``nn.Linear`` (or the named ones), over non-padding tokens.

    ``batches`` yields keyword arguments for ``model(**batch)``; an ``attention_mask`` in a batch
    drops padded positions. Returns float64 [in, in] per ``"<module>.weight"``.
    """
    named = dict(model.named_modules())
    chosen = list(modules) if modules is not None else [n for n, m in named.items() if isinstance(m, torch.nn.Linear)]
    if not chosen:
        raise EmptyDataError("the model has no linear layers to collect Gram matrices for")
    grams: dict[str, Tensor] = {}
    mask_holder: dict[str, Tensor | None] = {"mask": None}
    handles = []

    def hook(name):
        def fn(module, inputs):
            x = inputs[0].detach()
            x = x.reshape(-1, x.shape[-1])
            m = mask_holder["mask"]
            if m is not None:
                if m.numel() != x.shape[0]:  # e.g. a module that sees another sequence length
                    raise ShapeError(f"module {name!r} sees {x.shape[0]} positions but the attention mask "
                                     f"has {m.numel()}; padding could not be dropped")
                x = x[m.reshape(-1).bool()]
            x = x.double()
            key = f"{name}.weight"
            grams[key] = grams.get(key, 0) + x.T @ x
        return fn

    try:
        for n in chosen:
            if n not in named:
                raise AlmostLinearError(f"the model has no module {n!r}")
            handles.append(named[n].register_forward_pre_hook(hook(n)))
        seen = False
        for batch in batches:
            mask_holder["mask"] = batch.get("attention_mask")
            model(**batch)
            seen = True
        if not seen:
            raise EmptyDataError("no batches to collect Gram matrices from")
    finally:
        for h in handles:
            h.remove()
    return grams


def _average(tensors: list[Tensor], name: str) -> Tensor:
    """The plain average (``merge_state_dicts("linear", ...)`` for one tensor), for tensors RegMean leaves."""
    if not tensors[0].is_floating_point():
        if any(not torch.equal(t, tensors[0]) for t in tensors):
            raise AlmostLinearError(f"non-float tensor {name!r} differs between models and cannot be merged")
        return tensors[0].clone()
    merged = methods.linear(tensors, [1.0] * len(tensors), normalize=True)
    if not torch.isfinite(merged).all():
        raise NonFiniteError(f"merging tensor {name!r} with linear gave NaN or infinite values")
    return merged
