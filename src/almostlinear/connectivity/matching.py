"""Permutation alignment (Git Re-Basin, arXiv 2209.04836): weight matching and activation matching.

Weight matching maximises ``sum_l <W_l^A, P_l W_l^B P_{l-1}^T>`` by coordinate descent: each step
fixes every permutation but one and solves a linear assignment (Hungarian, SciPy's
``linear_sum_assignment``) for it, visiting permutations in a random order until a full sweep
improves nothing. It needs no data. Activation matching solves one assignment per permutation on
the cross-correlation of the two networks' activations over some inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.artifact import Provenance, Where
from ..core.errors import EmptyDataError, NonFiniteError, ShapeError, StructureError, check_choice
from ..core.lever import as_model
from ..core.threads import one_thread
from .artifact import Permutation
from .costs import MatchingCosts
from .spec import PermutationSpec, identity_perms


def _module(model_or_state: Any) -> Any:
    """A module or a ``LoadedModel`` as its module; a state dict as it is."""
    return dict(model_or_state) if isinstance(model_or_state, Mapping) else as_model(model_or_state).module


def _state(model_or_state) -> dict[str, torch.Tensor]:
    model_or_state = _module(model_or_state)
    if isinstance(model_or_state, nn.Module):
        # every name, tied tensors under each of theirs, as in a state dict
        named = dict(model_or_state.named_parameters(remove_duplicate=False))
        named.update(dict(model_or_state.named_buffers(remove_duplicate=False)))
        return {k: v.detach() for k, v in named.items()}
    return dict(model_or_state)


def _check_pair(spec: PermutationSpec, a: dict, b: dict) -> None:
    for name in spec.axes:
        if name not in a or name not in b:
            raise StructureError(f"{name!r} named by the spec is missing from one of the two networks")
        if a[name].shape != b[name].shape:
            raise ShapeError(f"{name!r} has shape {tuple(a[name].shape)} in A and {tuple(b[name].shape)} in B")
        if not (_all_finite(a[name]) and _all_finite(b[name])):
            raise NonFiniteError(f"{name!r} holds NaN or infinite values")


def _all_finite(tensor: torch.Tensor) -> bool:
    """One pass without a mask the size of the tensor: NaN propagates into both ends, an infinity is one."""
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) and torch.isfinite(high))


def _assign(cost: torch.Tensor) -> torch.Tensor:
    from scipy.optimize import linear_sum_assignment  # imported here: SciPy is slow to import

    _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
    return torch.from_numpy(np.asarray(cols, dtype=np.int64))


def weight_matching(model_a, model_b, spec: PermutationSpec, *, max_iter: int = 100, seed: int = 0,
                    progress: bool = False) -> Permutation:
    """Permutation of B's units that best aligns B's weights with A's (coordinate descent, Hungarian steps).

    ``model_a`` / ``model_b`` are modules or state dicts holding every tensor the spec names.
    Returns a :class:`Permutation` to apply to B. A step whose cost matrix cannot have changed since
    its permutation was last solved is skipped, and cost terms are kept per group of permutations
    (see :mod:`.costs`), so late sweeps cost little; the permutations are those of recomputing
    every cost at every step.
    """
    a, b = _state(model_a), _state(model_b)
    _check_pair(spec, a, b)
    costs = MatchingCosts(spec, a, b, identity_perms(spec))
    names = list(spec.sizes)
    generator = torch.Generator().manual_seed(seed)
    sweeps = solves = 0
    bar = None
    if progress:
        from ..clitools import progress_bar

        bar = progress_bar(max_iter, "weight matching sweeps", unit="sweep")
    with one_thread():
        for sweeps in range(1, max_iter + 1):
            improved = False
            for k in torch.randperm(len(names), generator=generator).tolist():
                name = names[k]
                if costs.unchanged_since_solved(name):
                    continue  # same cost matrix as last time, so the same assignment: no gain
                cost = costs.cost(name)
                new = _assign(cost)
                solves += 1
                rows = torch.arange(len(new))
                gain = cost[rows, new].sum() - cost[rows, costs.perms[name]].sum()
                if gain > 1e-12 * max(1.0, float(cost.abs().max())):
                    improved = True
                costs.solved(name, new)
            if bar is not None:
                bar.update(1)
            if not improved:
                break
    if bar is not None:
        bar.close()
    return Permutation.from_perms(spec, costs.perms, provenance=_provenance(
        model_b, "weight_matching", sweeps=sweeps, seed=seed, assignments_solved=solves))


def _provenance(model_or_state, method: str, **extra) -> Provenance:
    """The network the permutation is for (B) by fingerprint, so applying it elsewhere warns."""
    fingerprint = None if isinstance(model_or_state, Mapping) else as_model(model_or_state).fingerprint
    return Provenance(model_fingerprint=fingerprint, where=Where(), units="none", method=method,
                      extra={**extra, "source": "arXiv 2209.04836"})


def activation_matching(model_a: Any, model_b: Any, spec: PermutationSpec,
                        batches, *, forward: Callable[[nn.Module, object], object] | None = None,
                        unobserved: str = "raise") -> Permutation:
    """Permutation of B's units maximising the correlation of matched activations over ``batches``.

    Permutations need a producer in the spec (feed-forward specs have one for every hidden layer,
    transformer specs for the MLP units); with ``unobserved="identity"`` the others stay in place,
    else they raise. ``batches`` is an iterable of model inputs (tensors, or dicts of keyword
    arguments). Activations are standardised per unit before correlating, as in arXiv 2209.04836.
    """
    check_choice(unobserved, ("raise", "identity"), "value of unobserved")
    model_a, model_b = as_model(model_a).module, as_model(model_b).module
    lacking = [n for n in spec.sizes if n not in spec.producers]
    if lacking and unobserved == "raise":
        raise StructureError(f"activation matching needs a producer for every permutation; none for "
                             f"{lacking[:6]}. Pass unobserved='identity' or use weight_matching.")
    forward = forward or (lambda m, x: m(**x) if isinstance(x, dict) else m(x))
    observed = [n for n in spec.sizes if n in spec.producers]
    stats = {n: _CrossMoments() for n in observed}
    seen = 0
    with torch.no_grad(), one_thread():
        for batch in batches:
            acts = {}
            for tag, model in (("a", model_a), ("b", model_b)):
                handles = []
                for name in observed:
                    path, end, dim = spec.producers[name]
                    handles.append(_capture(model, path, end, dim, acts, f"{tag}:{name}"))
                try:
                    forward(model, batch)
                finally:
                    for h in handles:
                        h.remove()
            for name in observed:
                stats[name].update(acts[f"a:{name}"], acts[f"b:{name}"])
            seen += 1
    if not seen:
        raise EmptyDataError("activation matching needs at least one batch of inputs")
    perms = identity_perms(spec)
    perms.update({name: _assign(stats[name].correlation()) for name in observed})
    return Permutation.from_perms(spec, perms, provenance=_provenance(model_b, "activation_matching"))


def _capture(model: nn.Module, path: str, end: str, dim: int, store: dict, key: str):
    module = model.get_submodule(path) if path else model

    def rows(t: torch.Tensor) -> torch.Tensor:
        t = t.movedim(dim, -1)  # convolutions keep channels at dim 1
        return t.reshape(-1, t.shape[-1]).double()

    if end == "output":
        return module.register_forward_hook(lambda m, i, o: store.__setitem__(key, rows(o)))
    return module.register_forward_pre_hook(lambda m, i: store.__setitem__(key, rows(i[0])))


class _CrossMoments:
    """Running sums for the per-unit correlation of two activation matrices, in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.sa = self.sb = self.saa = self.sbb = self.sab = None

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if self.sa is None:
            self.sa, self.sb = a.sum(0), b.sum(0)
            self.saa, self.sbb, self.sab = (a * a).sum(0), (b * b).sum(0), a.T @ b
        else:
            self.sa += a.sum(0)
            self.sb += b.sum(0)
            self.saa += (a * a).sum(0)
            self.sbb += (b * b).sum(0)
            self.sab += a.T @ b
        self.n += a.shape[0]

    def correlation(self) -> torch.Tensor:
        ma, mb = self.sa / self.n, self.sb / self.n
        cov = self.sab / self.n - torch.outer(ma, mb)
        sa = (self.saa / self.n - ma * ma).clamp_min(0).sqrt() + 1e-12
        sb = (self.sbb / self.n - mb * mb).clamp_min(0).sqrt() + 1e-12
        return cov / torch.outer(sa, sb)
