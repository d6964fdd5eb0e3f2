"""Task vectors (arXiv 2212.04089): τ = θ_finetuned − θ_base, with the arithmetic on them.

A :class:`TaskVector` holds one difference tensor per floating-point parameter. It adds, subtracts,
negates and scales like a vector; ``apply_to`` returns a new state dict, ``apply`` changes a model
inside a ``with`` block and restores it bit for bit, ``bake_`` changes it for good. Integer buffers
(position ids and the like) carry no task information and are left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ..core.artifact import Provenance, read_header, register_file_kind, write_file
from ..core.errors import ArtifactError, EmptyDataError, ShapeError, finite_scale
from .methods import trim_magnitude

Tensor = torch.Tensor
KIND = "task_vector"


@dataclass(frozen=True, eq=False)
class TaskVector:
    """One difference tensor per parameter name, float32 (float64 if the weights were)."""

    deltas: Mapping[str, Tensor]
    provenance: Provenance = field(default_factory=Provenance)

    kind = KIND

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
        return cls(deltas, provenance or Provenance(method="difference"))

    @classmethod
    def from_models(cls, base: torch.nn.Module, finetuned: torch.nn.Module) -> TaskVector:
        return cls.from_state_dicts(base.state_dict(), finetuned.state_dict())

    # ---- vector arithmetic -------------------------------------------------------------
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
        return TaskVector(out, self.provenance)

    def __add__(self, other: TaskVector) -> TaskVector:
        return self._zip(other, torch.add)

    def __radd__(self, other):
        if isinstance(other, (int, float)) and other == 0:  # lets sum() start from 0
            return self
        return NotImplemented

    def __sub__(self, other: TaskVector) -> TaskVector:
        return self._zip(other, torch.sub)

    def __neg__(self) -> TaskVector:
        return TaskVector({k: -v for k, v in self.deltas.items()}, self.provenance)

    def __mul__(self, scale: float) -> TaskVector:
        if not isinstance(scale, (int, float)):
            return NotImplemented
        return TaskVector({k: v * float(scale) for k, v in self.deltas.items()}, self.provenance)

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
        return TaskVector({k: trim_magnitude(v, density) for k, v in self.deltas.items()}, self.provenance)

    @property
    def numel(self) -> int:
        return sum(v.numel() for v in self.deltas.values())

    # ---- use ---------------------------------------------------------------------------
    def apply_to(self, base: Mapping[str, Tensor], scale: float = 1.0) -> dict[str, Tensor]:
        """A new state dict: base + scale·τ (tensors τ does not cover are copied)."""
        scale = finite_scale(scale)
        missing = [k for k in self.deltas if k not in base]
        if missing:
            raise ShapeError(f"the base state dict lacks tensor {missing[0]!r}")
        out = {}
        for k, b in base.items():
            if k in self.deltas:
                d = self.deltas[k]
                if d.shape != b.shape:
                    raise ShapeError(f"tensor {k!r}: task vector {tuple(d.shape)}, base {tuple(b.shape)}")
                out[k] = (b.detach().to(d.dtype) + float(scale) * d).to(b.dtype)
            else:
                out[k] = b.detach().clone()
        return out

    def _parameters(self, model: torch.nn.Module) -> dict[str, Tensor]:
        state = dict(model.state_dict(keep_vars=True))
        missing = [k for k in self.deltas if k not in state]
        if missing:
            raise ShapeError(f"the model has no tensor {missing[0]!r}")
        for k, d in self.deltas.items():
            if state[k].shape != d.shape:
                raise ShapeError(f"tensor {k!r}: task vector {tuple(d.shape)}, model {tuple(state[k].shape)}")
        return {k: state[k] for k in self.deltas}

    @contextlib.contextmanager
    def apply(self, model: torch.nn.Module, scale: float = 1.0) -> Iterator[torch.nn.Module]:
        """Inside the block the model's weights are θ + scale·τ; on exit (also on errors) the saved
        originals are copied back, so the model is restored bit for bit."""
        params = self._parameters(model)
        saved = {k: p.detach().clone() for k, p in params.items()}
        try:
            self._add_(params, scale)
            yield model
        finally:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(saved[k])

    def bake_(self, model: torch.nn.Module, scale: float = 1.0) -> torch.nn.Module:
        """Add scale·τ to the model's weights for good."""
        self._add_(self._parameters(model), scale)
        return model

    def _add_(self, params: Mapping[str, Tensor], scale: float) -> None:
        scale = finite_scale(scale)
        with torch.no_grad():
            seen: set[int] = set()
            for k, p in params.items():
                if p.data_ptr() in seen:  # tied weights: one storage, added once
                    continue
                seen.add(p.data_ptr())
                d = self.deltas[k].to(p.device)
                p.copy_((p.to(d.dtype) + float(scale) * d).to(p.dtype))

    # ---- files -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """One ``.safetensors`` file; tensor names are the parameter names, the header records the kind."""
        header = {"kind": KIND, "format_version": 1, "fields": {},
                  "provenance": dataclasses.asdict(self.provenance)}
        return write_file(path, self.deltas, header, what="task vector")

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskVector:
        header = read_header(path)
        if header.get("kind") != KIND:
            raise ArtifactError(f"{path} holds a {header.get('kind')!r}, not a {KIND!r}")
        with safe_open(str(path), framework="pt") as handle:
            deltas = {name: handle.get_tensor(name) for name in handle.keys()}
        return cls(deltas, Provenance(**header.get("provenance", {})))


register_file_kind(KIND, TaskVector)


def analogy(a: TaskVector, b: TaskVector, c: TaskVector) -> TaskVector:
    """"A is to B as C is to D": τ_D ≈ τ_C + (τ_B − τ_A) (arXiv 2212.04089, §5)."""
    return c + (b - a)


def _check_list(task_vectors: Sequence[TaskVector]) -> list[str]:
    if len(task_vectors) < 1:
        raise EmptyDataError("no task vectors")
    keys = list(task_vectors[0].deltas)
    for i, tv in enumerate(task_vectors[1:], 1):
        if set(tv.deltas) != set(keys):
            raise ShapeError(f"task vector {i} covers other tensors than task vector 0")
    return keys


def cosine_matrix(task_vectors: Sequence[TaskVector]) -> Tensor:
    """[n, n] float64 cosine similarities between flattened task vectors (arXiv 2212.04089, Fig. 5)."""
    keys = _check_list(task_vectors)
    n = len(task_vectors)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for k in keys:
        flat = torch.stack([tv.deltas[k].reshape(-1).double() for tv in task_vectors])
        gram += flat @ flat.T
    norms = gram.diagonal().sqrt().clamp_min(1e-300)
    return gram / norms[:, None] / norms[None, :]


def sign_conflicts(deltas: Sequence[Tensor]) -> tuple[int, int]:
    """(coordinates where two or more deltas are non-zero with differing signs, coordinates where two or more are non-zero)."""
    signs = torch.stack([torch.sign(d.reshape(-1)) for d in deltas])
    nonzero = (signs != 0).sum(0)
    positive = (signs > 0).sum(0)
    negative = (signs < 0).sum(0)
    overlap = nonzero >= 2
    conflict = overlap & (positive > 0) & (negative > 0)
    return int(conflict.sum()), int(overlap.sum())


def sign_conflict_rate(task_vectors: Sequence[TaskVector], *, density: float = 1.0) -> float:
    """Among coordinates where at least two task vectors are non-zero after trimming each tensor to its
    top ``density`` by magnitude, the fraction where their signs disagree (TIES's interference,
    arXiv 2306.01708 §3). 0 when there is no overlap."""
    keys = _check_list(task_vectors)
    if len(task_vectors) < 2:
        return 0.0
    conflicts = overlaps = 0
    for k in keys:
        c, o = sign_conflicts([trim_magnitude(tv.deltas[k], density) for tv in task_vectors])
        conflicts, overlaps = conflicts + c, overlaps + o
    return conflicts / overlaps if overlaps else 0.0
