"""Cheap signals, gathered while the tensors stream past, that hint how well a merge will go.

Per task vector τᵢ = θᵢ − θ_base: its size relative to the base (‖τᵢ‖/‖θ_base‖; DARE, arXiv
2311.03099 §4.6, finds large deltas break random dropping), the cosine between task vectors
(near 0 for tasks that merge well, arXiv 2212.04089 Fig. 5) and the sign-conflict rate among
the top 20 % entries by magnitude (TIES's interference, arXiv 2306.01708), estimated on an
evenly strided sample of each tensor. Without a base the
models are compared with the first one directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .methods import trim_magnitude
from .task_vectors import sign_conflicts

TOP_DENSITY = 0.2
SAMPLE = 1 << 14


@dataclass
class MergeSignals:
    n: int
    reference_sq: float = 0.0
    gram: torch.Tensor = field(default=None)  # [n, n] float64 sums of τᵢ·τⱼ
    conflicts: int = 0
    overlaps: int = 0
    elements: int = 0
    _buffer: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.gram is None:
            self.gram = torch.zeros(self.n, self.n, dtype=torch.float64)

    def update(self, reference: torch.Tensor, tensors: Sequence[torch.Tensor], *, chunk: int = 1 << 20,
               sample: int = SAMPLE) -> None:
        """Add one tensor name: ``reference`` (the base, or the first model) and each model's tensor.

        Norms and inner products are exact (accumulated in float64 over float32 slices); the sign
        conflicts use an evenly strided sample of at most ``sample`` entries of the tensor.
        """
        ref = reference.reshape(-1)
        flat = [t.reshape(-1) for t in tensors]
        tensor = self.begin(ref.numel(), [t is reference for t in tensors], sample=sample)
        for s in range(0, ref.numel(), chunk):
            tensor.add(ref[s:s + chunk], [t[s:s + chunk] for t in flat])
        tensor.end()

    def begin(self, numel: int, is_reference: Sequence[bool], *, sample: int = SAMPLE) -> _TensorSignals:
        """Signals of one tensor fed in consecutive slices (``add``), then ``end``. ``is_reference``
        marks the models that are the reference itself (their task vector is 0)."""
        return _TensorSignals(self, numel, list(is_reference), max(1, numel // sample))

    def as_dict(self) -> dict:
        norms = self.gram.diagonal().sqrt()
        ref = self.reference_sq ** 0.5
        cos = self.gram / norms.clamp_min(1e-300)[:, None] / norms.clamp_min(1e-300)[None, :]
        return {
            "relative_norms": [float(x) / ref if ref > 0 else None for x in norms],
            "cosine": cos.tolist(),
            "sign_conflict_rate_top20": self.conflicts / self.overlaps if self.overlaps else None,
            "elements": self.elements,
        }


@dataclass
class _TensorSignals:
    owner: MergeSignals
    numel: int
    is_reference: list[bool]
    step: int
    offset: int = 0
    samples: list = field(default_factory=list)

    def add(self, ref: torch.Tensor, parts: Sequence[torch.Tensor]) -> None:
        owner = self.owner
        r = ref.float()
        owner.reference_sq += float(torch.dot(r, r))
        rows = [i for i, same in enumerate(self.is_reference) if not same]  # the reference's τ is 0: skipped
        if rows:
            if owner._buffer is None or owner._buffer.shape[0] < len(rows) or owner._buffer.shape[1] < r.numel():
                owner._buffer = torch.empty(len(parts), max(r.numel(), 1 << 10), dtype=torch.float32)
            d = owner._buffer[:len(rows), :r.numel()]
            for row, i in enumerate(rows):
                torch.sub(parts[i].float(), r, out=d[row])
            index = torch.tensor(rows)
            owner.gram[index[:, None], index[None, :]] += (d @ d.T).double()
        first = -self.offset % self.step  # the evenly strided sample, continued across slices
        # copies: the slices may live in buffers that the next slice overwrites
        self.samples.append((ref[first::self.step].to(torch.float32, copy=True),
                             [p[first::self.step].to(torch.float32, copy=True) for p in parts]))
        self.offset += ref.numel()

    def end(self) -> None:
        owner = self.owner
        if self.offset != self.numel:
            raise ValueError(f"signals were fed {self.offset} of {self.numel} entries")
        owner.elements += self.numel
        if len(self.is_reference) >= 2 and self.numel:
            r = torch.cat([x for x, _ in self.samples])
            deltas = [torch.cat([ps[i] for _, ps in self.samples]) - r for i in range(len(self.is_reference))]
            c, o = sign_conflicts([trim_magnitude(d, TOP_DENSITY) for d in deltas])
            owner.conflicts += c
            owner.overlaps += o
