"""Task vectors (arXiv 2212.04089): τ = θ_finetuned − θ_base, a lever on the base model's weights.

A :class:`TaskVector` holds one difference tensor per floating-point parameter. It adds, subtracts,
negates and scales like a vector; ``apply_to`` returns a new state dict (pure tensor maths), and as
a lever ``apply`` changes a model inside a ``with`` block and restores it bit for bit, while
``bake_`` changes it for good and returns the :class:`~almostlinear.core.lever.Baked` record whose
``undo_()`` is exact. Integer buffers (position ids and the like) carry no task information and
are left out. Strength is in ``"raw"`` units: the model's weights become θ + strength·τ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..core.artifact import Artifact, Provenance, Where
from ..core.errors import EmptyDataError, LeverError, NonFiniteError, ShapeError
from ..core.lever import Baked, as_model, bake_weights, check_fingerprint, check_strength, temporarily_changed
from .methods import trim_magnitude

Tensor = torch.Tensor
UNITS = "raw"


@dataclass(frozen=True, eq=False)
class TaskVector(Artifact):
    """One difference tensor per parameter name, float32 (float64 if the weights were).

    ``provenance.model_fingerprint`` is the base model's fingerprint when the vector was taken from
    models (:meth:`from_models`), so applying it to another model warns (or raises, with ``strict``);
    ``provenance.where`` is ``Where()``, the whole model, since the deltas name their parameters.
    """

    deltas: Mapping[str, Tensor]

    kind: ClassVar[str] = "merging.task_vector"
    strength_units: ClassVar[tuple[str, ...]] = (UNITS,)
    bakes: ClassVar[bool] = True

    # identity, not element-wise tensor comparison, as before task vectors were artifacts
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __post_init__(self) -> None:
        object.__setattr__(self, "deltas", dict(self.deltas))
        bad = [k for k, v in self.deltas.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ShapeError(f"a task vector holds tensors; {bad[0]!r} is a {type(self.deltas[bad[0]]).__name__}")
        broken = [k for k, v in self.deltas.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:  # baking it would write NaN into the weights
            raise NonFiniteError(f"the task vector's delta for {broken[0]!r} contains NaN or infinite values"
                                 + (f" (and {len(broken) - 1} more tensors)" if len(broken) > 1 else ""))
        provenance = self.provenance
        if not provenance.units:  # also version 1 files, which stored units as free text or ""
            provenance = dataclasses.replace(provenance, units=UNITS)
        if provenance.where is None:  # the whole model: one delta per parameter it names
            provenance = dataclasses.replace(provenance, where=Where())
        object.__setattr__(self, "provenance", provenance)

    # ---- files: one tensor per parameter name, no other fields ----------------------------
    def _split(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return dict(self.deltas), {}

    @classmethod
    def _join(cls, tensors: dict[str, Tensor], fields: dict[str, Any], provenance: Provenance) -> TaskVector:
        if fields:
            raise TypeError(f"unexpected fields {sorted(fields)}")
        return cls(tensors, provenance=provenance)

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_state_dicts(cls, base: Mapping[str, Tensor], finetuned: Mapping[str, Tensor], *,
                         provenance: Provenance | None = None) -> TaskVector:
        """τ = finetuned − base over every floating-point tensor; names and shapes must agree."""
        missing = [k for k in base if k not in finetuned]
        extra = [k for k in finetuned if k not in base]
        if missing:
            raise ShapeError(f"the fine-tuned state dict lacks tensor {missing[0]!r} ({len(missing)} missing)")
        if extra:
            raise ShapeError(f"the fine-tuned state dict has tensor {extra[0]!r} that the base lacks")
        deltas = {}
        for k, b in base.items():
            f = finetuned[k]
            if tuple(f.shape) != tuple(b.shape):
                raise ShapeError(f"tensor {k!r} has shape {tuple(f.shape)} fine-tuned but {tuple(b.shape)} in the base")
            if not b.is_floating_point():
                continue
            dtype = torch.float64 if b.dtype == torch.float64 else torch.float32
            deltas[k] = f.detach().to(dtype) - b.detach().to(dtype)
        if not deltas:
            raise EmptyDataError("no floating-point tensors to take a difference of")
        return cls(deltas, provenance=provenance or Provenance(method="difference", units=UNITS))

    @classmethod
    def from_models(cls, base: Any, finetuned: Any) -> TaskVector:
        """τ between two models (``nn.Module`` or ``LoadedModel``), recording the base's fingerprint."""
        base_view = as_model(base)
        provenance = Provenance(model_fingerprint=base_view.fingerprint, method="difference", units=UNITS)
        return cls.from_state_dicts(base_view.module.state_dict(), as_model(finetuned).module.state_dict(),
                                    provenance=provenance)

    # ---- vector arithmetic -------------------------------------------------------------
    def _with(self, deltas: dict[str, Tensor]) -> TaskVector:
        return TaskVector(deltas, provenance=self.provenance)

    def _zip(self, other: TaskVector, op) -> TaskVector:
        if not isinstance(other, TaskVector):
            return NotImplemented
        if set(self.deltas) != set(other.deltas):
            only = sorted(set(self.deltas) ^ set(other.deltas))
            raise ShapeError(f"task vectors cover different tensors, e.g. {only[0]!r}")
        out = {}
        for k, v in self.deltas.items():
            if v.shape != other.deltas[k].shape:
                raise ShapeError(f"tensor {k!r} has shape {tuple(v.shape)} and {tuple(other.deltas[k].shape)}")
            out[k] = op(v, other.deltas[k])
        return self._with(out)

    def __add__(self, other: TaskVector) -> TaskVector:
        return self._zip(other, torch.add)

    def __radd__(self, other):
        if isinstance(other, (int, float)) and other == 0:  # lets sum() start from 0
            return self
        return NotImplemented

    def __sub__(self, other: TaskVector) -> TaskVector:
        return self._zip(other, torch.sub)

    def __neg__(self) -> TaskVector:
        return self._with({k: -v for k, v in self.deltas.items()})

    def __mul__(self, scale: float) -> TaskVector:
        if not isinstance(scale, (int, float)):
            return NotImplemented
        return self._with({k: v * float(scale) for k, v in self.deltas.items()})

    __rmul__ = __mul__

    def __truediv__(self, scale: float) -> TaskVector:
        return self * (1.0 / float(scale))

    # ---- measures ----------------------------------------------------------------------
    def norm(self) -> float:
        return float(sum(v.double().pow(2).sum() for v in self.deltas.values()) ** 0.5)

    def dot(self, other: TaskVector) -> float:
        return float(sum((v.double() * other.deltas[k].double()).sum() for k, v in self.deltas.items()))

    def cosine(self, other: TaskVector) -> float:
        denominator = self.norm() * other.norm()
        return self.dot(other) / denominator if denominator > 0 else 0.0

    def trimmed(self, density: float) -> TaskVector:
        """Each tensor cut to its top ``density`` fraction by magnitude (TIES's trim step)."""
        return self._with({k: trim_magnitude(v, density) for k, v in self.deltas.items()})

    @property
    def numel(self) -> int:
        return sum(v.numel() for v in self.deltas.values())

    # ---- state dicts ---------------------------------------------------------------------
    def apply_to(self, base: Mapping[str, Tensor], strength: float = 1.0) -> dict[str, Tensor]:
        """A new state dict: base + strength·τ (tensors τ does not cover are copied)."""
        strength = check_strength(strength, UNITS)
        missing = [k for k in self.deltas if k not in base]
        if missing:
            raise ShapeError(f"the base state dict lacks tensor {missing[0]!r}")
        out = {}
        for k, b in base.items():
            if k in self.deltas:
                d = self.deltas[k]
                if d.shape != b.shape:
                    raise ShapeError(f"tensor {k!r}: task vector {tuple(d.shape)}, base {tuple(b.shape)}")
                out[k] = (b.detach().to(d.dtype) + strength * d).to(b.dtype)
            else:
                out[k] = b.detach().clone()
        return out

    # ---- the lever ---------------------------------------------------------------------
    def apply(self, model: Any, strength: float = 1.0, *, strict: bool = False) -> AbstractContextManager:
        """Inside the block the model's weights are θ + strength·τ; on exit (also on errors) the
        replaced parameters are copied back, so the model is restored bit for bit. Yields the module."""
        view, names, change = self._prepare(model, strength, strict)
        return temporarily_changed(view, names, change)

    def bake_(self, model: Any, strength: float = 1.0, *, strict: bool = False) -> Baked:
        """Add strength·τ to the model's weights for good; ``undo_()`` on the record restores them exactly."""
        view, names, change = self._prepare(model, strength, strict)
        return bake_weights(view, names, change, kind=self.kind)

    def _prepare(self, model: Any, strength: float, strict: bool):
        """Every check before anything is written, and the change itself."""
        strength = check_strength(strength, UNITS)
        view = as_model(model)
        check_fingerprint(self, view, strict=strict)
        targets = self._parameters(view.module)

        def change() -> None:
            seen: set[int] = set()
            for k, p in targets.items():
                if p.data_ptr() in seen:  # tied weights: one storage, added once
                    continue
                seen.add(p.data_ptr())
                d = self.deltas[k].to(p.device)
                p.copy_((p.to(d.dtype) + strength * d).to(p.dtype))

        return view, list(targets), change

    def _parameters(self, module: torch.nn.Module) -> dict[str, Tensor]:
        params = dict(module.named_parameters(remove_duplicate=False))
        for k, d in self.deltas.items():
            if k not in params:
                if k in dict(module.named_buffers(remove_duplicate=False)):
                    raise LeverError(f"tensor {k!r} is a buffer, which apply and bake_ do not change; "
                                     "use apply_to(model.state_dict()) and load the result")
                raise ShapeError(f"the model has no tensor {k!r}")
            p = params[k]
            if p.shape != d.shape:
                raise ShapeError(f"tensor {k!r}: task vector {tuple(d.shape)}, model {tuple(p.shape)}")
            if p.is_meta:
                raise LeverError(f"parameter {k!r} is on the meta device (offloaded); load the model without "
                                 "offloading to apply a task vector")
        return {k: params[k] for k in self.deltas}
