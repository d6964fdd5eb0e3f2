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
        n = ref.numel()
        if self._buffer is None or self._buffer.shape[1] < min(chunk, n):  # reused across slices and tensors
            self._buffer = torch.empty(len(flat), chunk, dtype=torch.float32)
        buffer = self._buffer
        for s in range(0, n, chunk):
            r = ref[s:s + chunk].float()
            self.reference_sq += float(torch.dot(r, r))
            d = buffer[:, :r.numel()]
            for i, t in enumerate(flat):
                if tensors[i] is reference:  # without a base the first model is the reference: its τ is 0
                    d[i].zero_()
                else:
                    torch.sub(t[s:s + chunk].float(), r, out=d[i])
            self.gram += (d @ d.T).double()
        self.elements += n
        if len(flat) >= 2 and n:
            step = max(1, n // sample)
            r = ref[::step].float()
            deltas = [t[::step].float() - r for t in flat]
            c, o = sign_conflicts([trim_magnitude(d, TOP_DENSITY) for d in deltas])
            self.conflicts += c
            self.overlaps += o

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
