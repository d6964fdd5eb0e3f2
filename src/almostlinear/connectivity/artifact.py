"""The fitted permutation: a frozen artifact that moves one network's hidden units into another's order.

It is a lever (:mod:`almostlinear.core.lever`) without a strength (units ``"none"``: a permutation
is applied whole or not at all): ``apply`` permutes the model's weights for the body of a context
and copies the saved ones back on exit, bit for bit, also on exceptions; ``bake_`` permutes them for
good and returns the :class:`~almostlinear.core.lever.Baked` record whose ``undo_()`` restores them.
:func:`check_spec` (beside it, since it applies one) measures whether a spec preserves the function.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.artifact import Artifact, Provenance, Where
from ..core.errors import ShapeError, StructureError
from ..core.lever import (UNITS, Baked, ModelView, as_model, bake_weights, check_fingerprint, check_strength,
                          temporarily_changed)
from .spec import PermutationSpec, permute_state_dict, permute_tensor, random_perms


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_path, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_path) if module_path else model
    except AttributeError as error:
        raise StructureError(f"the model has no {module_path!r}: was the spec derived from another model?") from error
    if not isinstance(getattr(module, leaf, None), torch.Tensor):
        raise StructureError(f"the model has no tensor {name!r}: was the spec derived from another model?")
    return module, leaf


@dataclass(frozen=True)
class Permutation(Artifact):
    """One permutation per name of ``spec``, stored end to end in ``indices``.

    Apply it to the network it was fitted for (network B of a matching) to bring B's units into A's
    order; the permuted network computes the same function. It acts on the whole model
    (``provenance.where`` is ``Where()``).
    """

    kind = "connectivity.permutation"
    strength_units = ("none",)
    bakes = True

    indices: torch.Tensor
    names: list
    spec: dict

    def __post_init__(self) -> None:
        spec = self.permutation_spec
        if sorted(self.names) != sorted(spec.sizes):
            raise StructureError(f"permutations {sorted(self.names)} do not match the spec's {sorted(spec.sizes)}")
        total = sum(spec.sizes[n] for n in self.names)
        if self.indices.shape != (total,):
            raise ShapeError(f"indices hold {tuple(self.indices.shape)} entries; the spec needs {total}")
        for name, order in self.perms.items():
            if not torch.equal(order.sort().values, torch.arange(len(order))):
                raise ShapeError(f"{name!r} is not a permutation of 0..{len(order) - 1}")
        provenance = self.provenance
        if provenance.where is None or provenance.units not in UNITS:  # files from before either was recorded
            provenance = dataclasses.replace(provenance, where=provenance.where or Where(),
                                             units=self.strength_units[0])
            object.__setattr__(self, "provenance", provenance)

    @classmethod
    def from_perms(cls, spec: PermutationSpec, perms: dict[str, torch.Tensor], *,
                   provenance: Provenance | None = None) -> Permutation:
        names = list(spec.sizes)
        missing = [n for n in names if n not in perms]
        if missing:
            raise StructureError(f"no order given for permutation(s) {missing}")
        indices = torch.cat([torch.as_tensor(perms[n], dtype=torch.long).reshape(-1) for n in names])
        return cls(indices, names, spec.to_json(), provenance=provenance or Provenance())

    @property
    def permutation_spec(self) -> PermutationSpec:
        return PermutationSpec.from_json(self.spec)

    @property
    def perms(self) -> dict[str, torch.Tensor]:
        sizes = self.spec["sizes"]
        return dict(zip(self.names, torch.split(self.indices, [int(sizes[n]) for n in self.names])))

    def inverse(self) -> Permutation:
        """The permutation that undoes this one, as maths (to undo a bake, use its record's ``undo_()``)."""
        inv = {n: torch.argsort(p) for n, p in self.perms.items()}
        return Permutation.from_perms(self.permutation_spec, inv, provenance=self.provenance)

    def is_identity(self) -> bool:
        return all(torch.equal(p, torch.arange(len(p))) for p in self.perms.values())

    def permute_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A permuted copy of ``state`` (entries the spec does not name are passed through)."""
        return permute_state_dict(self.permutation_spec, state, self.perms)

    # --- the lever ------------------------------------------------------------------------------

    def _prepare(self, model: Any, strength: float, strict: bool):
        """Parameter names, buffer tensors and the change; every check runs before anything changes."""
        check_strength(strength, self.strength_units[0])
        view = as_model(model)
        check_fingerprint(self, view, strict=strict)
        spec, perms = self.permutation_spec, self.perms
        parameters, buffers, tensors = [], {}, []
        for name, aps in spec.axes.items():
            owner, leaf = _owner(view.module, name)
            tensor = getattr(owner, leaf)
            for ap in aps:
                if ap.offset + ap.length > tensor.shape[ap.axis]:
                    raise ShapeError(f"{name!r} of shape {tuple(tensor.shape)} is too short for permutation "
                                     f"{ap.perm!r}: was the spec derived from another model?")
            if leaf in owner._buffers:
                buffers[name] = tensor
            else:
                parameters.append(name)
            tensors.append((tensor, aps))

        def change() -> None:
            done: set[int] = set()
            for tensor, aps in tensors:
                if id(tensor) in done:  # tied weights (embedding and head) are one tensor: permute it once
                    continue
                done.add(id(tensor))
                tensor.copy_(permute_tensor(tensor.detach(), aps, perms))

        return view, parameters, buffers, change

    def apply(self, model: Any, strength: float = 1.0, *, strict: bool = False) -> AbstractContextManager[nn.Module]:
        """Permute ``model`` for the body; restore it bit for bit afterwards, also on error.

        ``strength`` must be 1 (a permutation has no partial form). Warns (raises when ``strict``)
        if ``model`` is not the network the permutation was fitted for.
        """
        view, parameters, buffers, change = self._prepare(model, strength, strict)
        return _applied(view, parameters, buffers, change)

    def bake_(self, model: Any, strength: float = 1.0, *, strict: bool = False) -> Baked:
        """Permute ``model``'s weights in place; the returned record's ``undo_()`` restores them exactly."""
        view, parameters, buffers, change = self._prepare(model, strength, strict)
        saved = _saved(buffers)
        try:
            return bake_weights(view, parameters, change, kind=self.kind,
                                on_undo=(lambda: _restore(buffers, saved)) if buffers else None)
        except BaseException:
            _restore(buffers, saved)
            raise


def _saved(buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Buffers (batch-norm statistics) are not parameters: the lever's weight snapshot does not hold them.
    return {name: tensor.detach().clone() for name, tensor in buffers.items()}


def _restore(buffers: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, tensor in buffers.items():
            tensor.copy_(saved[name])


@contextlib.contextmanager
def _applied(view: ModelView, parameters: list[str], buffers: dict[str, torch.Tensor],
             change: Callable[[], None]) -> Iterator[nn.Module]:
    saved = _saved(buffers)
    try:
        with temporarily_changed(view, parameters, change) as module:
            yield module
    finally:
        _restore(buffers, saved)


@torch.no_grad()
def check_spec(model: nn.Module, spec: PermutationSpec, inputs, *, seed: int = 0) -> float:
    """Largest absolute difference between the model's outputs before and after a random permutation.

    ``inputs`` is a tensor (passed positionally) or a dict of keyword arguments. The model is restored
    bit for bit afterwards. A spec that is right gives a difference at float rounding level.
    """
    module = as_model(model).module

    def run():
        out = module(**inputs) if isinstance(inputs, dict) else module(inputs)
        return getattr(out, "logits", out if isinstance(out, torch.Tensor) else out[0])

    before = run()
    with Permutation.from_perms(spec, random_perms(spec, seed)).apply(module):
        after = run()
    return float((before - after).abs().max())
