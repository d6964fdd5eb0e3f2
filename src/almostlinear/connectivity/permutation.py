"""The fitted permutation: a frozen artifact that moves one network's hidden units into another's order."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..core.artifact import Artifact, Provenance
from ..core.errors import ShapeError, StructureError
from .spec import PermutationSpec, permute_state_dict, permute_tensor


def _entry(model: nn.Module, name: str) -> torch.Tensor:
    module_path, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_path) if module_path else model
    except AttributeError as error:
        raise StructureError(f"the model has no {module_path!r}: was the spec derived from another model?") from error
    tensor = getattr(module, leaf, None)
    if not isinstance(tensor, torch.Tensor):
        raise StructureError(f"the model has no tensor {name!r}: was the spec derived from another model?")
    return tensor


@dataclass(frozen=True)
class Permutation(Artifact):
    """One permutation per name of ``spec``, stored end to end in ``indices``.

    Apply it to the network it was fitted for (network B of a matching) to bring B's units into A's
    order; the permuted network computes the same function.
    """

    kind = "permutation"
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
        inv = {n: torch.argsort(p) for n, p in self.perms.items()}
        return Permutation.from_perms(self.permutation_spec, inv, provenance=self.provenance)

    def is_identity(self) -> bool:
        return all(torch.equal(p, torch.arange(len(p))) for p in self.perms.values())

    def permute_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A permuted copy of ``state`` (entries the spec does not name are passed through)."""
        return permute_state_dict(self.permutation_spec, state, self.perms)

    @torch.no_grad()
    def bake_(self, model: nn.Module) -> nn.Module:
        """Permute ``model``'s weights in place, permanently."""
        spec, perms = self.permutation_spec, self.perms
        done: set[int] = set()
        for name, aps in spec.axes.items():
            tensor = _entry(model, name)
            if id(tensor) in done:  # tied weights (embedding and head) are one tensor: permute it once
                continue
            done.add(id(tensor))
            tensor.copy_(permute_tensor(tensor.detach(), aps, perms))
        return model

    @contextlib.contextmanager
    def apply(self, model: nn.Module, *, strict: bool = False) -> Iterator[nn.Module]:
        """Permute ``model`` for the body; restore it bit for bit afterwards, also on error.

        Warns (raises when ``strict``) if ``model`` is not the network the permutation was fitted for.
        """
        if self.provenance.model_fingerprint is not None:
            from ..core.models import fingerprint

            self.check_model(fingerprint(model), strict=strict)
        spec = self.permutation_spec
        saved = {name: _entry(model, name).detach().clone() for name in spec.axes}
        try:
            self.bake_(model)
            yield model
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    _entry(model, name).copy_(original)
